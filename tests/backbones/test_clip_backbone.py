"""The CLIP backbone layer: towers run block by block as open_clip runs them, weights from a
local file or folder (strict), and clear errors for what cannot be built or loaded."""

import json

import pytest
import torch
from safetensors.torch import save_file

from holomodal.backbones.clip import TINY_CLIP, CLIPBackbone, CLIPInputs, resolve_backbone
from holomodal.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return CLIPBackbone(resolve_backbone(None)).eval()


def tokens(n=2, length=77):
    ids = torch.zeros(n, length, dtype=torch.long)
    ids[:, 0], ids[:, 1:4], ids[:, 4] = 49406, torch.tensor([320, 1929, 539]), 49407
    return ids


def test_towers_block_by_block_match_open_clip(tiny):
    pixels = torch.rand(2, 3, 64, 64)
    x = tiny.image_tokens(pixels)
    assert x.shape == (2, 1 + 8 * 8, 64)  # CLS + patches after ln_pre
    for block in tiny.image_blocks:
        x = tiny.run_block(block, x)
    torch.testing.assert_close(tiny.image_output(x, 0), tiny.encode_image(pixels))
    ids = tokens()
    y = tiny.text_tokens(ids)
    for block in tiny.text_blocks:
        y = tiny.run_block(block, y, tiny.causal_mask(77))
    torch.testing.assert_close(tiny.text_output(y, ids, 0), tiny.encode_text(ids))


def test_causal_mask_sees_itself_and_the_past():
    mask = CLIPBackbone.causal_mask(4)
    assert torch.equal(torch.isinf(mask), torch.triu(torch.ones(4, 4, dtype=torch.bool), 1))


def test_stand_ins_of_absent_modalities():
    inputs = CLIPInputs([0.5] * 3, [0.25] * 3)
    pixels = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = inputs.pixels(pixels, torch.tensor([True, False]))
    torch.testing.assert_close(out[0], torch.full((3, 4, 4), 2.0))  # (1 - 0.5) / 0.25
    torch.testing.assert_close(out[1], torch.ones(3, 4, 4))  # DCP's all-ones image, after normalisation
    ids = inputs.ids(tokens(), torch.tensor([True, False]))
    assert torch.equal(ids[0], tokens()[0])
    assert ids[1, :2].tolist() == [49406, 49407] and int(ids[1, 2:].abs().sum()) == 0  # the empty string


def test_weights_from_a_local_file_and_folder(tmp_path, tiny):
    state = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    save_file(state, str(tmp_path / "tiny.safetensors"))
    torch.save(state, tmp_path / "tiny.pt")
    folder = tmp_path / "folder"
    folder.mkdir()
    save_file(state, str(folder / "open_clip_model.safetensors"))
    from holomodal.backbones.clip import model_config

    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_config(TINY_CLIP)}))
    for spec in ({"model_name": TINY_CLIP, "weights": str(tmp_path / "tiny.safetensors")},
                 {"model_name": TINY_CLIP, "weights": str(tmp_path / "tiny.pt")},
                 {"model_name": f"local-dir:{folder}"}):
        torch.manual_seed(123)  # another random init, replaced by the file's weights
        other = CLIPBackbone(resolve_backbone(spec))
        assert not torch.equal(other.model.state_dict()["visual.conv1.weight"], state["visual.conv1.weight"])
        other.load_weights()
        loaded = other.model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items()), spec


def test_weights_that_do_not_fit_are_refused(tmp_path, tiny):
    state = {k: v for k, v in tiny.model.state_dict().items() if not k.startswith("visual.")}
    save_file(state, str(tmp_path / "half.safetensors"))
    backbone = CLIPBackbone(resolve_backbone({"model_name": TINY_CLIP, "weights": str(tmp_path / "half.safetensors")}))
    with pytest.raises(DataError, match="do not fit.*missing"):
        backbone.load_weights()


def test_bad_backbone_specs_name_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match="unknown open_clip model 'ViT-Q-99'"):
        resolve_backbone("ViT-Q-99")
    with pytest.raises(ConfigError, match="neither a weights file nor a pretrained tag.*openai"):
        resolve_backbone({"model_name": "ViT-B-16", "weights": "opnai"})
    with pytest.raises(DataError, match="no such file"):
        resolve_backbone({"model_name": TINY_CLIP, "weights": str(tmp_path / "gone.safetensors")})
    with pytest.raises(DataError, match="no open_clip_config.json"):
        resolve_backbone(f"local-dir:{tmp_path}")
    with pytest.raises(ConfigError, match="unknown key"):
        resolve_backbone({"model_name": TINY_CLIP, "weight": "x"})


def test_a_pretrained_tag_is_recorded_without_fetching():
    record = resolve_backbone({"model_name": "ViT-B-16", "pretrained": "openai"})
    assert {k: record[k] for k in ("model_name", "overrides", "weights")} == {"model_name": "ViT-B-16", "overrides": {}, "weights": "openai"}
    assert record["config"]["vision_cfg"]["width"] == 768
    with torch.device("meta"):  # ViT-B/16 shapes, no memory, no download
        backbone = CLIPBackbone(record)
    assert (backbone.image_width, backbone.text_width, backbone.embed_dim, backbone.image_size) == (768, 512, 512, 224)
