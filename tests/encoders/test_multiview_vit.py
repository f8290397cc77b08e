"""MedST's MoVE ViT: token layout, masking of absent laterals, routing and initialisation."""

import pytest
import timm
import torch

from holomodal.encoders.multiview_vit import MultiViewViT
from holomodal.errors import ConfigError, DataError

TINY = dict(model_name="vit_tiny_patch16_224", img_size=32, depth=2, embed_dim=48, num_heads=3)
PATCHES = (32 // 16) ** 2
ATOL = 1e-6


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return MultiViewViT(**{**TINY, **overrides}).eval()


def _images(batch, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=generator)


@pytest.fixture(scope="module")
def model():
    return _model()


def test_shapes_and_valid_tokens(model):
    assert (model.output_dim, model.num_patches) == (48, PATCHES)
    cls, patches, valid = model(_images(2, 1))
    assert cls.shape == (2, 48) and patches.shape == (2, PATCHES, 48)
    assert valid.dtype == torch.bool and valid.all()

    present = torch.tensor([True, False])
    cls, patches, valid = model(_images(2, 1), _images(2, 2), present)
    assert cls.shape == (2, 48) and patches.shape == (2, 2 * PATCHES, 48)
    assert valid[:, :PATCHES].all()
    assert valid[0, PATCHES:].all() and not valid[1, PATCHES:].any()


def test_absent_lateral_leaves_frontal_outputs_unchanged_and_equal_to_single_view(model):
    frontal, absent = _images(2, 1), torch.zeros(2, dtype=torch.bool)
    single_cls, single_patches, _ = model(frontal)
    for lateral in (_images(2, 2), _images(2, 3) * 50, torch.full((2, 3, 32, 32), float("nan"))):
        cls, patches, _ = model(frontal, lateral, absent)
        torch.testing.assert_close(cls, single_cls, atol=ATOL, rtol=0)
        torch.testing.assert_close(patches[:, :PATCHES], single_patches, atol=ATOL, rtol=0)


def test_absent_lateral_tokens_are_masked_in_attention_not_only_zeroed():
    # the lateral pixels of absent rows are zeroed before the patch embedding, so vary what the
    # lateral tokens become after the first block instead: the frontal path must not see it
    frontal, lateral, absent = _images(2, 1), _images(2, 2), torch.zeros(2, dtype=torch.bool)
    model = _model()
    cls, patches, _ = model(frontal, lateral, absent)
    with torch.no_grad():
        for expert in model.lateral_experts:
            expert.mlp.fc2.bias.add_(3.0)
    cls_changed, patches_changed, _ = model(frontal, lateral, absent)
    assert not torch.allclose(patches[:, PATCHES:], patches_changed[:, PATCHES:])
    torch.testing.assert_close(cls_changed, cls, atol=ATOL, rtol=0)
    torch.testing.assert_close(patches_changed[:, :PATCHES], patches[:, :PATCHES], atol=ATOL, rtol=0)


def test_absent_lateral_tokens_do_not_attend_to_the_frontal_view(model):
    lateral, absent = _images(2, 2), torch.zeros(2, dtype=torch.bool)
    _, patches, _ = model(_images(2, 1), lateral, absent)
    _, patches_other_frontal, _ = model(_images(2, 5), lateral, absent)
    assert not torch.allclose(patches[:, :PATCHES], patches_other_frontal[:, :PATCHES])
    torch.testing.assert_close(patches_other_frontal[:, PATCHES:], patches[:, PATCHES:], atol=ATOL, rtol=0)


def test_present_lateral_changes_the_cls(model):
    frontal, present = _images(2, 1), torch.ones(2, dtype=torch.bool)
    cls, _, _ = model(frontal, _images(2, 2), present)
    cls_other, _, _ = model(frontal, _images(2, 3), present)
    single_cls, _, _ = model(frontal)
    assert not torch.allclose(cls, cls_other)
    assert not torch.allclose(cls, single_cls)


def test_no_gradient_reaches_an_absent_lateral_through_the_cls():
    model = _model()
    frontal = _images(2, 1)
    lateral = _images(2, 2).requires_grad_(True)
    cls, _, _ = model(frontal, lateral, torch.tensor([True, False]))
    cls.sum().backward()
    assert lateral.grad[0].abs().sum() > 0
    assert torch.equal(lateral.grad[1], torch.zeros_like(lateral.grad[1]))

    # the lateral experts act only on lateral tokens, so through the CLS of an absent row
    # (which never attends to them) they get no gradient at all
    model.zero_grad()
    cls, _, _ = model(frontal, _images(2, 2), torch.zeros(2, dtype=torch.bool))
    cls.sum().backward()
    for expert in model.lateral_experts:
        for parameter in expert.parameters():
            assert parameter.grad is None or torch.equal(parameter.grad, torch.zeros_like(parameter))


def test_rows_of_a_mixed_batch_do_not_interact(model):
    frontal, lateral = _images(4, 1), _images(4, 2)
    present = torch.tensor([True, False, False, True])
    cls, patches, valid = model(frontal, lateral, present)
    for row in range(4):
        row_cls, row_patches, row_valid = model(frontal[row : row + 1], lateral[row : row + 1], present[row : row + 1])
        torch.testing.assert_close(cls[row : row + 1], row_cls, atol=ATOL, rtol=0)
        torch.testing.assert_close(patches[row : row + 1], row_patches, atol=ATOL, rtol=0)
        assert torch.equal(valid[row : row + 1], row_valid)


def test_a_single_view_batch_of_three_is_a_batch_of_three(model):
    # the original told views apart by len(x) == 3
    frontal = _images(3, 7)
    cls, patches, valid = model(frontal)
    assert cls.shape == (3, 48) and patches.shape == (3, PATCHES, 48) and valid.shape == (3, PATCHES)
    for row in range(3):
        row_cls, _, _ = model(frontal[row : row + 1])
        torch.testing.assert_close(cls[row : row + 1], row_cls, atol=ATOL, rtol=0)


def test_frontal_path_is_timm_and_lateral_experts_are_fresh():
    model = _model(seed=3, depth=4, embed_dim=192)
    torch.manual_seed(3)
    reference = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, depth=4, embed_dim=192, num_heads=3
    )
    reference_state = reference.state_dict()
    assert set(model.vit.state_dict()) == set(reference_state)
    for key, value in reference_state.items():
        assert torch.equal(model.vit.state_dict()[key], value), key
    assert all(key.startswith(("vit.", "lateral_experts.")) for key in model.state_dict())

    assert len(model.lateral_experts) == 4
    for block, expert in zip(model.vit.blocks, model.lateral_experts):
        assert expert.mlp.fc1.weight.shape == block.mlp.fc1.weight.shape
        assert expert.mlp.fc2.weight.shape == block.mlp.fc2.weight.shape
        assert expert.mlp.fc1.weight.data_ptr() != block.mlp.fc1.weight.data_ptr()
        for layer, frontal_layer in ((expert.mlp.fc1, block.mlp.fc1), (expert.mlp.fc2, block.mlp.fc2)):
            assert not torch.equal(layer.weight, frontal_layer.weight)
            assert abs(layer.weight.std().item() - 0.02) < 0.004
            assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
        assert torch.equal(expert.norm.weight, torch.ones_like(expert.norm.weight))
        assert torch.equal(expert.norm.bias, torch.zeros_like(expert.norm.bias))
        assert expert.norm.eps == block.norm2.eps
    # the experts' parameters are their own: training them leaves the frontal FFN alone
    expert_ids = {id(p) for p in model.lateral_experts.parameters()}
    assert not expert_ids & {id(p) for p in model.vit.parameters()}


def test_lateral_layer_scale_is_its_own_and_starts_at_the_models_init_value():
    model = _model(init_values=1e-3)
    for block, expert in zip(model.vit.blocks, model.lateral_experts):
        assert torch.equal(expert.ls.gamma, torch.full((48,), 1e-3))
        assert expert.ls.gamma is not block.ls2.gamma


def test_single_view_is_timms_own_forward(model):
    frontal = _images(3, 4)
    cls, patches, _ = model(frontal)
    with torch.no_grad():
        reference = model.vit.forward_features(frontal)
    torch.testing.assert_close(cls, reference[:, 0], atol=ATOL, rtol=0)
    torch.testing.assert_close(patches, reference[:, 1:], atol=ATOL, rtol=0)


def test_present_lateral_is_one_shared_attention_over_both_views():
    # with the frontal FFNs copied into the lateral experts, MoVE is timm's ViT run on the
    # joint sequence [CLS, frontal patches + pos, lateral patches + the same pos]
    model = _model()
    for block, expert in zip(model.vit.blocks, model.lateral_experts):
        expert.norm.load_state_dict(block.norm2.state_dict())
        expert.mlp.load_state_dict(block.mlp.state_dict())
    frontal, lateral = _images(2, 1), _images(2, 2)
    cls, patches, _ = model(frontal, lateral, torch.ones(2, dtype=torch.bool))
    vit = model.vit
    with torch.no_grad():
        frontal_tokens = vit._pos_embed(vit.patch_embed(frontal))
        joint = torch.cat([frontal_tokens, vit.patch_embed(lateral) + vit.pos_embed[:, 1:]], dim=1)
        reference = vit.norm(vit.blocks(joint))
    torch.testing.assert_close(cls, reference[:, 0], atol=ATOL, rtol=0)
    torch.testing.assert_close(patches, reference[:, 1:], atol=ATOL, rtol=0)
    # no view embedding: the same picture in both views gives the same tokens in both halves
    _, patches, _ = model(frontal, frontal.clone(), torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(patches[:, PATCHES:], patches[:, :PATCHES], atol=ATOL, rtol=0)


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients():
    frontal, lateral, present = _images(2, 1), _images(2, 2), torch.tensor([True, False])
    results = []
    for checkpointing in (False, True):
        model = _model().train()
        model.set_grad_checkpointing(checkpointing)
        cls, patches, _ = model(frontal, lateral, present)
        (cls.sum() + patches.sum()).backward()
        results.append((cls.detach(), model.lateral_experts[0].mlp.fc1.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(reg_tokens=4), "register tokens"),
        (dict(no_embed_class=True), "no_embed_class"),
        (dict(class_token=False, global_pool="avg"), "class token"),
        (dict(global_pool="avg"), "global_pool"),
        (dict(dynamic_img_size=True), "dynamic_img_size"),
    ],
)
def test_unsupported_vits_are_refused_by_name(kwargs, message):
    with pytest.raises(ConfigError, match=message) as error:
        MultiViewViT(**{**TINY, **kwargs})
    assert "vit_tiny_patch16_224" in str(error.value)


def test_non_vit_models_are_refused():
    with pytest.raises(ConfigError, match="resnet10t.*not a timm VisionTransformer"):
        MultiViewViT("resnet10t")


def test_bad_inputs_are_refused(model):
    frontal = _images(2, 1)
    with pytest.raises(DataError, match="bool"):
        model(frontal, _images(2, 2), torch.tensor([1, 0]))
    with pytest.raises(DataError, match="must match"):
        model(frontal, _images(3, 2), torch.ones(3, dtype=torch.bool))
    with pytest.raises(DataError, match="no lateral images"):
        model(frontal, None, torch.tensor([True, False]))
