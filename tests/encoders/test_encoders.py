"""Encoder contract, checked on every registered encoder, and TIP's tabular masking."""

from __future__ import annotations

import inspect

import pytest
import torch

from holomodal._registry import Registry
from holomodal.encoders import ENCODERS, create_encoder, list_encoders
from holomodal.errors import ConfigError

B = 4
MIXED = torch.tensor([True, False, True, False])

SPECS = {
    "tabular": {"cardinalities": [3, 5, 2], "n_continuous": 4},
    "image": {"channels": 3, "size": 32, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]},
    "text": {"vocab_size": 40, "max_length": 10, "pad_id": 0},
    "audio": {"n_mels": 16, "frames": 20},
    "timeseries": {"channels": 3, "steps": 5},
}

# every registered encoder needs at least one tiny case here (test_every_encoder_has_a_case)
CASES = {
    "timm": [("image", {"model_name": "test_resnet"})],
    "lenet": [("image", {"channels": 2, "blocks": 2}), ("audio", {"channels": 2, "blocks": 2})],
    "tabular_transformer": [("tabular", {"dim": 32, "depth": 1, "heads": 2})],
    "tabular_mlp": [("tabular", {"hidden": 16})],
    "text_transformer": [("text", {"hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64})],
    "clip_text": [
        ("text", {"width": 32, "heads": 2, "layers": 1, "embed_dim": 16}),
        # a context longer than the token ids: forward pads up to the tower's causal mask
        ("text", {"width": 32, "heads": 2, "layers": 1, "context_length": 16}),
    ],
    "audio_cnn": [("audio", {"width": 4, "output_dim": 16})],
    "gru": [("timeseries", {"hidden": 8}), ("timeseries", {"hidden": 8, "flatten_steps": True, "step_dim": 3})],
}
PARAMS = [
    pytest.param(name, modality, kwargs, id=f"{name}-{modality}-{i}")
    for name, cases in CASES.items()
    for i, (modality, kwargs) in enumerate(cases)
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tensors here are tiny: a second intra-op thread only adds synchronisation, and on a
    # busy 2-core machine its spin-waits made some forward/backward passes 10x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_inputs(modality: str, present: torch.Tensor, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """A batch as the preprocessors produce it: absent rows and missing cells zeroed."""
    g = torch.Generator().manual_seed(seed)
    n = present.shape[0]
    spec = SPECS[modality]
    cell_missing = None
    if modality == "tabular":
        cards = spec["cardinalities"]
        cat = torch.stack([torch.randint(1, k, (n,), generator=g) for k in cards], dim=1)
        con = torch.randn(n, spec["n_continuous"], generator=g)
        cell_missing = torch.rand(n, len(cards) + spec["n_continuous"], generator=g) < 0.3
        cell_missing[0, 0] = cell_missing[0, -1] = True  # at least one missing cell of each kind
        cell_missing = cell_missing | ~present[:, None]
        inputs = {
            "categorical": cat.masked_fill(cell_missing[:, : len(cards)], 0),
            "continuous": con.masked_fill(cell_missing[:, len(cards) :], 0.0),
        }
        return inputs, cell_missing
    if modality == "image":
        s = spec["size"]
        inputs = {"pixels": torch.randint(0, 256, (n, spec["channels"], s, s), generator=g, dtype=torch.uint8)}
    elif modality == "text":
        length = spec["max_length"]
        ids = torch.randint(1, spec["vocab_size"], (n, length), generator=g)
        mask = (torch.arange(length)[None] < torch.randint(2, length + 1, (n, 1), generator=g)).long()
        inputs = {"input_ids": ids * mask, "attention_mask": mask}
    elif modality == "audio":
        inputs = {"spectrogram": torch.randn(n, 1, spec["n_mels"], spec["frames"], generator=g)}
    else:
        shape = (n, spec["steps"], spec["channels"])
        observed = (torch.rand(shape, generator=g) < 0.6).float()
        inputs = {
            "values": torch.randn(shape, generator=g) * observed,
            "observed": observed,
            "delta": torch.rand(shape, generator=g) * 3,
        }
    absent = ~present
    inputs = {k: v.masked_fill(absent.view(-1, *([1] * (v.dim() - 1))), 0) for k, v in inputs.items()}
    return inputs, cell_missing


def garbage_in_absent_rows(inputs: dict[str, torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same inputs with junk where rows are absent (what a buggy caller might pass)."""
    g = torch.Generator().manual_seed(123)
    out = {}
    for k, v in inputs.items():
        if v.dtype == torch.uint8:
            junk = torch.randint(0, 256, v.shape, generator=g, dtype=torch.uint8)
        elif v.is_floating_point():
            junk = torch.randn(v.shape, generator=g)
            junk.view(-1)[::3] = float("nan")
        else:  # codes and token ids: in range, so only masking (not a crash) can hide them
            junk = torch.ones_like(v)
        out[k] = torch.where(present.view(-1, *([1] * (v.dim() - 1))), v, junk)
    return out


def build(name: str, modality: str, kwargs: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_encoder(name, SPECS[modality], **kwargs)


def run(enc, inputs, present, cell_missing, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)  # dropout draws the same masks in runs that are compared
    return enc(inputs, present, cell_missing)


# ---- registry -----------------------------------------------------------------------------


def test_every_encoder_has_a_case():
    assert set(list_encoders()) == set(CASES)


def test_registry_lists_by_pattern_and_rejects_unknown_names():
    assert list_encoders("tabular_*") == ["tabular_mlp", "tabular_transformer"]
    with pytest.raises(ConfigError, match="unknown encoder 'resnet'.*known: audio_cnn, clip_text"):
        create_encoder("resnet", SPECS["image"])
    reg = Registry("widget")
    reg.register("a")(dict)
    with pytest.raises(ConfigError, match="registered twice"):
        reg.register("a")(dict)
    assert reg.create("a", x=1) == {"x": 1} and "a" in reg and len(reg) == 1


def test_wrong_modality_spec_is_a_config_error():
    with pytest.raises(ConfigError, match="needs input_spec keys"):
        create_encoder("gru", SPECS["tabular"])


# ---- the contract, on every registered encoder -----------------------------------------


@pytest.mark.parametrize("name, modality, kwargs", PARAMS)
def test_forward_shape_and_finite(name, modality, kwargs):
    enc = build(name, modality, kwargs)
    inputs, cell_missing = random_inputs(modality, MIXED)
    out = run(enc, inputs, MIXED, cell_missing)
    assert out.shape == (B, enc.output_dim)
    assert torch.isfinite(out).all()
    enc.eval()
    with torch.no_grad():  # a batch of one keeps its batch axis (I2M2's squeeze() did not)
        one = {k: v[:1] for k, v in inputs.items()}
        assert enc(one, MIXED[:1], None if cell_missing is None else cell_missing[:1]).shape == (1, enc.output_dim)


@pytest.mark.parametrize("present", [MIXED, torch.zeros(B, dtype=torch.bool)], ids=["some-absent", "all-absent"])
@pytest.mark.parametrize("name, modality, kwargs", PARAMS)
def test_every_parameter_gets_a_gradient(name, modality, kwargs, present):
    enc = build(name, modality, kwargs)
    inputs, cell_missing = random_inputs(modality, present)
    run(enc, inputs, present, cell_missing).square().mean().backward()
    unused = [n for n, p in enc.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters without gradient (DDP would fail): {unused}"
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


@pytest.mark.parametrize("name, modality, kwargs", PARAMS)
def test_absent_rows_ignore_their_inputs(name, modality, kwargs):
    enc = build(name, modality, kwargs)
    inputs, cell_missing = random_inputs(modality, MIXED)
    junk = garbage_in_absent_rows(inputs, MIXED)
    for training in (True, False):  # batch-norm statistics must not see the junk either
        enc.train(training)
        with torch.no_grad():
            clean = run(enc, inputs, MIXED, cell_missing)
            dirty = run(enc, junk, MIXED, cell_missing)
        torch.testing.assert_close(dirty, clean, rtol=0, atol=0)


# ---- image tokens -------------------------------------------------------------------------


def test_timm_tokens_are_the_last_feature_map():
    spec = dict(SPECS["image"], size=64)
    torch.manual_seed(0)
    enc = create_encoder("timm", spec, model_name="test_resnet").eval()
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    present = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        tokens, pooled = enc.forward_tokens({"pixels": pixels}, present)
        out = enc({"pixels": pixels}, present)
    assert tokens.shape[0] == 2 and tokens.shape[1] > 1 and tokens.shape[2] == enc.output_dim
    torch.testing.assert_close(pooled, out)
    torch.testing.assert_close(pooled, tokens.mean(1), rtol=1e-5, atol=1e-5)  # global average pool
    torch.manual_seed(0)
    nhwc = create_encoder("timm", spec, model_name="test_resnet", channels_last=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(nhwc({"pixels": pixels}, present), out, rtol=1e-4, atol=1e-4)


# ---- TIP's tabular transformer ----------------------------------------------------------

N_CAT, N_CON = 3, 4


@pytest.fixture
def tip():
    torch.manual_seed(0)
    return create_encoder("tabular_transformer", SPECS["tabular"], dim=32, depth=2, heads=2).eval()


def tip_batch(seed: int = 0):
    present = torch.ones(B, dtype=torch.bool)
    inputs, _ = random_inputs("tabular", present, seed)
    missing = torch.zeros(B, N_CAT + N_CON, dtype=torch.bool)
    missing[:, 1] = True  # a categorical column missing everywhere
    missing[:, N_CAT + 2] = True  # a continuous column missing everywhere
    missing[0, 0] = missing[2, N_CAT] = True  # and a few single cells
    return inputs, present, missing


def test_tip_defaults_follow_the_paper():
    defaults = {k: p.default for k, p in inspect.signature(ENCODERS.get("tabular_transformer")).parameters.items()}
    assert (defaults["dim"], defaults["depth"], defaults["heads"], defaults["mlp_ratio"]) == (512, 4, 8, 4.0)


def test_tip_layout_and_init(tip):
    assert tip.cat_embedding.num_embeddings == sum(SPECS["tabular"]["cardinalities"])
    assert tip.offsets.tolist() == [0, 3, 8]
    assert tip.column_embedding.num_embeddings == N_CAT + N_CON + 1
    assert all(b.qkv.bias is None for b in tip.blocks)
    assert 0.01 < tip.blocks[0].mlp[0].weight.std().item() < 0.03
    assert torch.equal(tip.blocks[0].proj.bias, torch.zeros(32))
    with pytest.raises(ConfigError, match="divisible"):
        create_encoder("tabular_transformer", SPECS["tabular"], dim=30, heads=4)


def test_tip_values_under_missing_cells_do_not_matter(tip):
    inputs, present, missing = tip_batch()
    changed = {
        "categorical": torch.where(missing[:, :N_CAT], torch.full_like(inputs["categorical"], 2), inputs["categorical"]),
        "continuous": torch.where(missing[:, N_CAT:], torch.full_like(inputs["continuous"], 7.5), inputs["continuous"]),
    }
    with torch.no_grad():
        t0, cls0 = tip.forward_tokens(inputs, present, missing)
        t1, cls1 = tip.forward_tokens(changed, present, missing)
    torch.testing.assert_close(cls1, cls0, rtol=0, atol=1e-6)
    torch.testing.assert_close(t1, t0, rtol=0, atol=1e-6)
    # the same change on observed cells does move the output
    with torch.no_grad():
        other = tip(changed, present, torch.zeros_like(missing))
        assert not torch.allclose(other, tip(inputs, present, torch.zeros_like(missing)), atol=1e-4)


def test_tip_missing_tokens_are_not_attended(tip):
    inputs, present, missing = tip_batch()
    col = N_CAT + 2  # missing in every row
    with torch.no_grad():
        tokens0, cls0 = tip.forward_tokens(inputs, present, missing)
        # a missing token differs from [MASK] only by its column embedding: move that, and
        # the missing index of the shared categorical table too, and nothing else may notice
        # random, not constant, shifts: the embedding LayerNorm would erase a constant one
        g = torch.Generator().manual_seed(1)
        tip.column_embedding.weight[1 + col] += torch.randn(32, generator=g)
        tip.cat_embedding.weight[tip.offsets[1] + 2] += torch.randn(32, generator=g)
        tokens1, cls1 = tip.forward_tokens(inputs, present, missing)
    torch.testing.assert_close(cls1, cls0, rtol=0, atol=1e-6)
    others = [i for i in range(N_CAT + N_CON + 1) if i != 1 + col]
    torch.testing.assert_close(tokens1[:, others], tokens0[:, others], rtol=0, atol=1e-6)
    assert not torch.allclose(tokens1[:, 1 + col], tokens0[:, 1 + col])  # it still attends itself


def test_tip_mask_token_only_reaches_masked_positions(tip):
    inputs, present, missing = tip_batch()
    with torch.no_grad():
        tokens0, cls0 = tip.forward_tokens(inputs, present, missing)
        tip.mask_token += torch.randn(32, generator=torch.Generator().manual_seed(1))
        tokens1, cls1 = tip.forward_tokens(inputs, present, missing)
    torch.testing.assert_close(cls1, cls0, rtol=0, atol=1e-6)  # CLS never reads masked columns
    observed = torch.cat([torch.ones(B, 1, dtype=torch.bool), ~missing], dim=1)
    torch.testing.assert_close(tokens1[observed], tokens0[observed], rtol=0, atol=1e-6)
    assert not torch.allclose(tokens1[~observed], tokens0[~observed])


def test_tip_equals_attention_over_observed_tokens_only(tip):
    inputs, present, missing = tip_batch()
    with torch.no_grad():
        tokens, _ = tip.forward_tokens(inputs, present, missing)
        x = tip.embed(inputs, missing)
        for row in range(B):
            keep = torch.cat([torch.tensor([True]), ~missing[row]])
            y = x[row : row + 1, keep]
            for block in tip.blocks:
                y = block(y, None)
            torch.testing.assert_close(tokens[row : row + 1, keep], y, rtol=1e-5, atol=1e-5)


def reference_block(block, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The pre-LN block written out, with attention restricted to ``allowed`` (B, T, T)."""
    b, n, d = x.shape
    h = block.heads
    q, k, v = block.qkv(block.norm1(x)).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
    logits = (q @ k.transpose(-1, -2)) / (d // h) ** 0.5
    attn = logits.masked_fill(~allowed[:, None], float("-inf")).softmax(-1) @ v
    x = x + block.proj(attn.transpose(1, 2).reshape(b, n, d))
    return x + block.mlp(block.norm2(x))


def test_tip_matches_a_reference_attention(tip):
    # every query sees CLS, the observed columns and itself; masked tokens see no other masked token
    inputs, present, missing = tip_batch()
    keys = torch.cat([torch.zeros(B, 1, dtype=torch.bool), missing], dim=1)
    allowed = ~keys[:, None, :] | torch.eye(N_CAT + N_CON + 1, dtype=torch.bool)
    with torch.no_grad():
        tokens, cls = tip.forward_tokens(inputs, present, missing)
        y = tip.embed(inputs, missing)
        for block in tip.blocks:
            y = reference_block(block, y, allowed)
    torch.testing.assert_close(tokens, y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cls, y[:, 0])


def test_tip_token_mask_is_ored_with_cell_missing_and_absent_rows_are_all_missing(tip):
    inputs, present, missing = tip_batch()
    token_mask = torch.zeros_like(missing)
    token_mask[:, 0] = token_mask[1, N_CAT] = True
    with torch.no_grad():
        a = tip.forward_tokens(inputs, present, missing, token_mask=token_mask)[0]
        b = tip.forward_tokens(inputs, present, missing | token_mask)[0]
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        absent = present.clone()
        absent[1] = False
        c = tip(inputs, absent, missing)
        d = tip(inputs, present, missing | ~absent[:, None])
    torch.testing.assert_close(c, d, rtol=0, atol=0)


def test_tip_runs_without_categorical_or_continuous_columns():
    for spec in ({"cardinalities": [], "n_continuous": 3}, {"cardinalities": [4, 2], "n_continuous": 0}):
        enc = create_encoder("tabular_transformer", spec, dim=16, depth=1, heads=2)
        inputs = {"categorical": torch.zeros(2, len(spec["cardinalities"]), dtype=torch.long),
                  "continuous": torch.randn(2, spec["n_continuous"])}
        present = torch.tensor([True, False])
        enc(inputs, present).sum().backward()
        assert all(p.grad is not None for p in enc.parameters())
