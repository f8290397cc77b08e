import numpy as np
import pandas as pd
import torch

from holomodal.preprocessing import Preprocessor
from holomodal.preprocessing.timeseries import TimeSeriesProcessor
from holomodal.schema import Column, Modality


def test_fitted_on_train_only_and_state_round_trips(covid):
    train, test = covid.split("train"), covid.split("test")
    pre = Preprocessor(covid.schema).fit(train)
    cont = covid.schema.continuous[0].name
    values = pd.to_numeric(train[cont], errors="coerce")
    assert np.isclose(pre.processors["tabular"].mean_[cont], values.mean())
    again = Preprocessor.from_state(pre.state_dict())
    a, _ = pre.transform(test)
    b, _ = again.transform(test)
    for m in a.inputs:
        for k in a.inputs[m]:
            assert torch.equal(a.inputs[m][k], b.inputs[m][k]), (m, k)
    assert torch.equal(a.cell_missing, b.cell_missing)


def test_natural_missingness_fills_the_masks(covid):
    frame = covid.frame
    pre = Preprocessor(covid.schema).fit(covid.split("train"))
    batch, summary = pre.transform(frame, with_target=False)
    assert int(batch.present["image"].sum()) == 653
    names = [c.name for c in covid.schema.tabular]
    for j, name in enumerate(names):
        assert int(batch.cell_missing[:, j].sum()) == int(frame[name].isna().sum()), name
    assert summary["absent_modalities"]["image"] == 751 - 653
    notes = frame["clinical_notes"].map(lambda v: isinstance(v, str) and v.strip() != "")
    assert batch.present["clinical_notes"].tolist() == notes.tolist()
    assert batch.inputs["clinical_notes"]["input_ids"][~batch.present["clinical_notes"]].sum() == 0


def test_timeseries_binned_hourly_with_mask_and_delta():
    col = Column("series", Modality.TIMESERIES, {"channels": ["hr", "temp"], "hours": 4})
    df = pd.DataFrame({
        "series": [np.array([[0.1, 0, 60.0], [0.5, 0, 80.0], [2.2, 1, 37.0]]), np.zeros((0, 3))],
        "y": [0, 1],
    })
    proc = TimeSeriesProcessor(col)
    proc.mean_, proc.std_ = [0.0, 0.0], [1.0, 1.0]
    tensors, present = proc.transform(df, {})
    assert present.tolist() == [True, False]
    assert tensors["values"][0, 0, 0] == 70.0  # two readings in hour 0 are averaged
    assert tensors["observed"][0, :, 0].tolist() == [1, 0, 0, 0]
    assert tensors["observed"][0, :, 1].tolist() == [0, 0, 1, 0]
    assert (tensors["delta"][0, :, 0] * 4).tolist() == [0, 1, 2, 3]


def test_audio_log_mel_shape_and_standardisation(av_digits):
    sample = av_digits.split("train").iloc[:40]
    pre = Preprocessor(av_digits.schema).fit(sample)
    batch, _ = pre.transform(sample)
    spec = batch.inputs["audio"]["spectrogram"]
    proc = pre.processors["audio"]
    assert spec.shape == (40, 1, proc.n_mels, proc.frames)
    assert abs(float(spec.mean())) < 0.1 and abs(float(spec.std()) - 1) < 0.1
    assert batch.inputs["image"]["pixels"].dtype == torch.uint8


def test_wordpiece_vocabulary_is_identical_across_processes(covid):
    """The tokenizers trainer numbers its vocabulary in a per-process order; ours is canonical."""
    import subprocess
    import sys

    code = (
        "from holomodal.data import load_dataset; from holomodal.preprocessing.text import TextProcessor; "
        "b = load_dataset('covid_cxr'); p = TextProcessor(b.schema['clinical_notes']).fit(b.split('train')); "
        "print(p.tokenizer_json_)"
    )
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(3)}
    assert len(outputs) == 1
