"""Every registered encoder honours the contract: (B, output_dim), gradients reach every
parameter (no unused parameters under DDP), absent rows do not depend on their input."""

import pytest
import torch

from holomodal.encoders import create_encoder, list_encoders

B = 4
SPECS = {
    "tabular": {"cardinalities": [3, 5], "n_continuous": 3},
    "image": {"channels": 1, "size": 32, "mean": [0.5], "std": [0.25]},
    "text": {"vocab_size": 50, "max_length": 12, "pad_id": 0},
    "audio": {"n_mels": 20, "frames": 30},
    "timeseries": {"channels": 4, "steps": 6},
}
# (modality, tiny kwargs) per encoder
TINY = {
    "tabular_transformer": ("tabular", {"dim": 16, "depth": 1, "heads": 2}),
    "tabular_mlp": ("tabular", {"hidden": 8}),
    "timm": ("image", {"model_name": "resnet18"}),
    "lenet": ("image", {"channels": 2, "blocks": 2}),
    "text_transformer": ("text", {"hidden_size": 16, "layers": 1, "heads": 2, "intermediate_size": 32}),
    "clip_text": ("text", {"width": 32, "heads": 2, "layers": 1}),
    "audio_cnn": ("audio", {"width": 4, "depth": 2, "output_dim": 8}),
    "gru": ("timeseries", {"hidden": 8}),
}


def _inputs(modality, g):
    if modality == "tabular":
        return {"categorical": torch.randint(0, 3, (B, 2), generator=g), "continuous": torch.randn(B, 3, generator=g)}
    if modality == "image":
        return {"pixels": torch.randint(0, 256, (B, 1, 32, 32), dtype=torch.uint8, generator=g)}
    if modality == "text":
        ids = torch.randint(4, 50, (B, 12), generator=g)
        ids[:, 8:] = 0
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}
    if modality == "audio":
        return {"spectrogram": torch.randn(B, 1, 20, 30, generator=g)}
    return {k: torch.rand(B, 6, 4, generator=g) for k in ("values", "observed", "delta")}


def test_every_registered_encoder_is_covered():
    assert set(list_encoders()) == set(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_backward_and_absent_rows(name):
    modality, kwargs = TINY[name]
    torch.manual_seed(0)
    enc = create_encoder(name, SPECS[modality], **kwargs)
    g = torch.Generator().manual_seed(1)
    inputs = _inputs(modality, g)
    present = torch.tensor([True, False, True, True])
    cell_missing = torch.zeros(B, 5, dtype=torch.bool) if modality == "tabular" else None
    out = enc(inputs, present, cell_missing)
    assert out.shape == (B, enc.output_dim) and torch.isfinite(out).all()
    out.square().mean().backward()
    unused = [n for n, p in enc.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters without gradient: {unused[:5]}"
    if modality == "tabular":
        # the transformer and the MLP both read `present`/masks: an absent row ignores its values
        enc.eval()
        other = {k: v.clone() for k, v in inputs.items()}
        other["continuous"][1] += 5.0
        other["categorical"][1] = (other["categorical"][1] + 1) % 3
        full_mask = cell_missing.clone()
        full_mask[1] = True
        a = enc(inputs, present, full_mask)
        b = enc(other, present, full_mask)
        torch.testing.assert_close(a[1], b[1])


def _transformer():
    torch.manual_seed(0)
    return create_encoder("tabular_transformer", SPECS["tabular"], dim=16, depth=2, heads=2).eval()


def test_tabular_transformer_masked_cell_value_does_not_change_output():
    enc = _transformer()
    g = torch.Generator().manual_seed(2)
    inputs = _inputs("tabular", g)
    present = torch.ones(B, dtype=torch.bool)
    missing = torch.zeros(B, 5, dtype=torch.bool)
    missing[:, 1] = True  # a categorical column
    missing[:, 3] = True  # a continuous column
    changed = {k: v.clone() for k, v in inputs.items()}
    changed["categorical"][:, 1] = (changed["categorical"][:, 1] + 2) % 5
    changed["continuous"][:, 1] += 100.0
    tokens_a, cls_a = enc.forward_tokens(inputs, present, missing)
    tokens_b, cls_b = enc.forward_tokens(changed, present, missing)
    torch.testing.assert_close(cls_a, cls_b, atol=1e-6, rtol=0)
    torch.testing.assert_close(tokens_a, tokens_b, atol=1e-6, rtol=0)
    # and an observed cell does matter
    changed["continuous"][:, 0] += 1.0
    assert not torch.allclose(enc(inputs, present, missing), enc(changed, present, missing))


def test_tabular_transformer_masked_tokens_are_not_attended():
    enc = _transformer()
    g = torch.Generator().manual_seed(3)
    inputs = _inputs("tabular", g)
    present = torch.ones(B, dtype=torch.bool)
    missing = torch.zeros(B, 5, dtype=torch.bool)
    missing[:, 4] = True
    # changing the [MASK] embedding changes only the masked token itself, never the others
    tokens_a, _ = enc.forward_tokens(inputs, present, missing)
    with torch.no_grad():
        enc.mask_token.add_(1.0)
    tokens_b, _ = enc.forward_tokens(inputs, present, missing)
    torch.testing.assert_close(tokens_a[:, :5], tokens_b[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(tokens_a[:, 5], tokens_b[:, 5])


def test_token_mask_and_cell_missing_share_the_mask_token():
    enc = _transformer()
    inputs = _inputs("tabular", torch.Generator().manual_seed(4))
    present = torch.ones(B, dtype=torch.bool)
    mask = torch.zeros(B, 5, dtype=torch.bool)
    mask[:, 2] = True
    a, _ = enc.forward_tokens(inputs, present, cell_missing=mask)
    b, _ = enc.forward_tokens(inputs, present, cell_missing=None, token_mask=mask)
    torch.testing.assert_close(a, b)
