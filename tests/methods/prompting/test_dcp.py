"""DCP on a tiny CLIP: the token layout of spec 1.4.6 in every block, the text causal mask over
the prompts, the per-case prompt selection, and the parameter count at ViT-B/16 shapes."""

import pytest
import torch
from prompting_fixtures import capture_block_inputs, case_batch, tiny_context

from holomodal.methods import create_method
from holomodal.methods.base import ModelContext
from holomodal.methods.prompting.base import MISSING_IMAGE, MISSING_TEXT, missing_case


@pytest.fixture(scope="module")
def dcp():
    torch.manual_seed(0)
    return create_method("dcp", tiny_context()).eval()


def inputs_of(model, batch):
    image_present, text_present = batch.present["picture"], batch.present["name"]
    case = missing_case(image_present, text_present)
    pixels = model.inputs.pixels(batch.inputs["picture"]["pixels"], image_present)
    ids = model.inputs.ids(batch.inputs["name"]["input_ids"], text_present)
    return pixels, ids, case


def test_missing_cases_from_the_masks():
    batch = case_batch()
    assert missing_case(batch.present["picture"], batch.present["name"]).tolist() == [0, 1, 2, 0, 1, 2, 2]


@torch.no_grad()
def test_image_tokens_sit_where_the_layout_says(dcp):
    batch = case_batch()
    pixels, ids, case = inputs_of(dcp, batch)
    b, n = dcp.backbone, dcp.n
    prompts = dcp.prompts(case)
    tower = b.image_tokens(pixels)
    dynamic, _ = dcp.image_attention(dcp.image_queries[case], tower, tower, need_weights=False)
    seen, handles = capture_block_inputs(b.image_blocks)
    image, _ = dcp.encode(pixels, ids, case)
    for h in handles:
        h.remove()
    x0 = seen[0][0]
    assert x0.shape == (len(batch), 36 + 1 + 64, 64)
    torch.testing.assert_close(x0[:, :n], prompts["image_correlated"][0])
    torch.testing.assert_close(x0[:, n:2 * n], prompts["image_common"])
    torch.testing.assert_close(x0[:, 2 * n:3 * n], dynamic)
    torch.testing.assert_close(x0[:, 36:], tower)  # CLS at index 36, then the patches
    outputs = [b.run_block(blk, x) for blk, (x, _) in zip(b.image_blocks, seen)]
    for j in range(1, len(seen)):
        x = seen[j][0]
        if j < dcp.depth:  # the correlated slots are overwritten, the other 24 prompt slots carried
            torch.testing.assert_close(x[:, :n], prompts["image_correlated"][j])
            torch.testing.assert_close(x[:, n:], outputs[j - 1][:, n:])
        else:
            torch.testing.assert_close(x, outputs[j - 1])
    last = outputs[-1]
    expected = b.model.visual.ln_post(last[:, 36]) @ b.model.visual.proj
    torch.testing.assert_close(image, expected)


@torch.no_grad()
def test_text_prompts_and_the_causal_mask(dcp):
    batch = case_batch()
    pixels, ids, case = inputs_of(dcp, batch)
    b, n = dcp.backbone, dcp.n
    prompts = dcp.prompts(case)
    seen, handles = capture_block_inputs(b.text_blocks)
    _, text = dcp.encode(pixels, ids, case)
    for h in handles:
        h.remove()
    x0, mask = seen[0]
    assert x0.shape[1] == 36 + 77 and mask.shape == (113, 113)
    torch.testing.assert_close(x0[:, :n], prompts["text_correlated"][0])
    torch.testing.assert_close(x0[:, n:2 * n], prompts["text_common"])
    torch.testing.assert_close(x0[:, 36:], b.text_tokens(ids))  # the prompts have no positional embedding
    blocked = torch.isinf(mask)
    assert not blocked[36:, :36].any()  # every text token sees every prompt
    assert torch.equal(blocked[:36, :36], torch.triu(torch.ones(36, 36, dtype=torch.bool), 1))  # prompts: earlier ones only
    assert blocked[:36, 36:].all()  # and no text
    assert all(torch.equal(m, mask) for _, m in seen)
    for j in range(1, dcp.depth):
        torch.testing.assert_close(seen[j][0][:, :n], prompts["text_correlated"][j])
    # EOT pooling over the text positions, behind the 36 prompts
    last = b.run_block(b.text_blocks[-1], seen[-1][0], mask)
    eot = ids.argmax(dim=1)
    expected = b.text_tower.ln_final(last[:, 36:])[torch.arange(len(ids)), eot] @ b.text_tower.text_projection
    torch.testing.assert_close(text, expected)


@torch.no_grad()
def test_each_case_takes_its_own_prompts(dcp):
    case = torch.tensor([0, MISSING_TEXT, MISSING_IMAGE])
    p = dcp.prompts(case)
    # layer 0 from the initial prompts: the "missing" one only on the side whose modality is absent
    for row, (img, txt) in enumerate([(0, 0), (0, 1), (1, 0)]):
        joint = torch.cat([dcp.image_init[img], dcp.text_init[txt]], dim=-1)
        torch.testing.assert_close(p["image_correlated"][0, row], dcp.image_generators[0](joint))
        torch.testing.assert_close(p["text_correlated"][0, row], dcp.text_generators[0](joint))
        torch.testing.assert_close(p["text_common"][row], dcp.text_common(dcp.common[row]))
    # deeper layers from the pair before, never from the towers
    joint = torch.cat([p["image_correlated"][0, 2], p["text_correlated"][0, 2]], dim=-1)
    torch.testing.assert_close(p["image_correlated"][1, 2], dcp.image_generators[1](joint))
    assert not torch.allclose(p["image_correlated"][0, 0], p["image_correlated"][0, 2])


def test_trainable_parameters_at_vit_b16_shapes():
    specs = {"image": {"channels": 3, "size": 224, "mean": [0.5] * 3, "std": [0.5] * 3},
             "text": {"tokenizer": "clip", "max_length": 77}}
    context = ModelContext(specs, {"image": "image", "text": "text"}, 23, "multilabel")
    with torch.device("meta"):  # shapes only: no weights, no memory, no download
        model = create_method("dcp", context, backbone="ViT-B-16")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert abs(trainable - 5.84e6) / 5.84e6 < 0.10, trainable  # spec 1.7: about 5.84 M (5,839,127 here)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(n.startswith("backbone.") for n in frozen) and "backbone.model.visual.proj" not in frozen
    assert not {"image_queries", "text_queries"} & {n for n, _ in model.named_parameters()}
    assert {"image_queries", "text_queries"} <= set(model.state_dict())  # saved, so a reload keeps them
