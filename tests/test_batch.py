import torch

from holomodal.batch import Batch


def _batch():
    return Batch(
        inputs={
            "tabular": {"categorical": torch.tensor([[1, 2], [3, 1], [2, 2]]), "continuous": torch.tensor([[0.5], [1.5], [-1.0]])},
            "image": {"pixels": torch.full((3, 1, 2, 2), 7, dtype=torch.uint8)},
        },
        present={"tabular": torch.tensor([True, True, False]), "image": torch.tensor([True, False, True])},
        cell_missing=torch.tensor([[False, True, False], [False, False, True], [False, False, False]]),
        target=torch.tensor([0, 1, 0]),
    )


def test_zero_missing_hides_masked_values_and_absent_modalities():
    b = _batch().zero_missing()
    assert b.inputs["tabular"]["categorical"].tolist() == [[1, 0], [3, 1], [0, 0]]
    assert b.inputs["tabular"]["continuous"].tolist() == [[0.5], [0.0], [0.0]]
    assert b.cell_missing[2].all()  # an absent table has every cell missing
    assert b.inputs["image"]["pixels"][1].sum() == 0 and b.inputs["image"]["pixels"][0].sum() == 28


def test_select_gathers_every_tensor():
    b = _batch().select([2, 0])
    assert len(b) == 2
    assert b.target.tolist() == [0, 0]
    assert b.present["image"].tolist() == [True, True]
    assert b.row.tolist() == [2, 0]


def test_with_masks_only_adds_missingness():
    b = _batch().with_masks(torch.tensor([[True, False, False]] * 3), {"image": torch.tensor([False, True, True])})
    assert b.cell_missing[:, 0].all() and b.cell_missing[0, 1]
    assert b.present["image"].tolist() == [False, False, True]
