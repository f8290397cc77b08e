"""``pretrained: auto``: weights from timm's local cache when there, random init (one warning) when not."""

import warnings

import pytest
import torch
from safetensors.torch import save_file

from holomodal.encoders.timm_image import PretrainedWeightsWarning, TimmImageEncoder, _warned
from holomodal.errors import ConfigError

SPEC = {"channels": 3, "size": 32}


def _fake_hub_cache(root, state):
    """The layout huggingface_hub's cache uses: a snapshot folder named by a revision in refs/main."""
    repo = root / "models--timm--resnet10t.c3_in1k"
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    save_file(state, str(snap / "model.safetensors"))


def test_auto_loads_weights_from_the_local_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    torch.manual_seed(1)
    reference = TimmImageEncoder(SPEC, model_name="resnet10t", pretrained=False)
    state = {k: v for k, v in reference.backbone.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, reference.output_dim), torch.zeros(1000)
    _fake_hub_cache(tmp_path, state)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PretrainedWeightsWarning)
        loaded = TimmImageEncoder(SPEC, model_name="resnet10t", pretrained="auto")
    for name, value in reference.backbone.state_dict().items():
        torch.testing.assert_close(loaded.backbone.state_dict()[name], value)


def test_auto_without_cache_starts_random_and_warns_once(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub
    import torch.hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr("socket.socket.connect", lambda *a, **k: pytest.fail("pretrained: auto tried the network"))
    _warned.discard("resnet10t")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TimmImageEncoder(SPEC, model_name="resnet10t")
        TimmImageEncoder(SPEC, model_name="resnet10t")
    messages = [str(w.message) for w in caught if issubclass(w.category, PretrainedWeightsWarning)]
    assert len(messages) == 1 and "resnet10t" in messages[0] and "random" in messages[0]


def test_pretrained_must_be_a_flag_or_auto():
    with pytest.raises(ConfigError, match="pretrained"):
        TimmImageEncoder(SPEC, model_name="resnet10t", pretrained="yes")
