"""MMP on a tiny CLIP: the growing prompt sequence, MMP's initialisation, the per-case prompt
sets, and the parameter count at ViT-B/16 shapes."""

import pytest
import torch
from prompting_fixtures import capture_block_inputs, case_batch, tiny_context
from test_dcp import inputs_of

from holomodal.errors import ConfigError
from holomodal.methods import create_method
from holomodal.methods.base import ModelContext


@pytest.fixture(scope="module")
def mmp():
    torch.manual_seed(0)
    model = create_method("mmp", tiny_context(), sides=["image", "text"]).eval()
    with torch.no_grad():  # distinct prompts per case and layer, so a wrong pick shows
        model.image_prompts.normal_()
        model.text_prompts.normal_()
    return model


def test_initialisation_is_mmps():
    model = create_method("mmp", tiny_context())
    p = model.image_prompts
    assert p.shape == (3, 6, 16, 64) and model.text_prompts is None
    # one token of ones per case: complete 0, missing text 2, missing image 1
    for case, token in ((0, 0), (1, 2), (2, 1)):
        assert torch.equal(p[case, :, token], torch.ones(6, 64))
        assert p[case].abs().sum() == 6 * 64


@torch.no_grad()
def test_prompts_grow_the_sequence_block_by_block(mmp):
    batch = case_batch()
    pixels, ids, case = inputs_of(mmp, batch)
    b = mmp.backbone
    for blocks, prompts, base, causal in ((b.image_blocks, mmp.image_prompts, 65, False),
                                          (b.text_blocks, mmp.text_prompts, 77, True)):
        seen, handles = capture_block_inputs(blocks)
        mmp.encode(pixels, ids, case)
        for h in handles:
            h.remove()
        for i, (x, mask) in enumerate(seen):
            grown = 16 * min(i + 1, mmp.depth)
            assert x.shape[1] == base + grown
            if i < mmp.depth:  # this layer's 16 prompts of each sample's case in front
                torch.testing.assert_close(x[:, :16], prompts[case, i])
            if i > 0 and i < mmp.depth:  # earlier prompts' outputs stay behind them
                assert not torch.allclose(x[:, 16:32], prompts[case, i - 1])
            if causal:
                assert mask.shape == (x.shape[1], x.shape[1]) and not torch.isinf(mask[grown:, :grown]).any()
            else:
                assert mask is None


def test_parameter_count_at_vit_b16_shapes():
    specs = {"image": {"channels": 3, "size": 224, "mean": [0.5] * 3, "std": [0.5] * 3},
             "text": {"tokenizer": "clip", "max_length": 77}}
    context = ModelContext(specs, {"image": "image", "text": "text"}, 23, "multilabel")
    with torch.device("meta"):
        default = create_method("mmp", context, backbone="ViT-B-16")
        both = create_method("mmp", context, backbone="ViT-B-16", sides=["image", "text"])
    prompts = default.image_prompts.numel()
    assert prompts == 3 * 6 * 16 * 768 and abs(prompts - 0.22e6) / 0.22e6 < 0.10  # spec 1.9: about 0.22 M
    trainable = {n for n, p in default.named_parameters() if p.requires_grad}
    assert trainable == {"image_prompts", "head.weight", "head.bias"}
    assert both.text_prompts.numel() == 3 * 6 * 16 * 512


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="sides"):
        create_method("mmp", tiny_context(), sides=["audio"])
    with pytest.raises(ConfigError, match="depth 9 must be from 1 to the towers' 6 blocks"):
        create_method("mmp", tiny_context(), depth=9)
