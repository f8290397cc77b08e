"""The image-text backbone: an open_clip model by name, with the hooks prompt methods need.

A backbone is described by a small record, the only thing a run stores about it::

    {"model_name": "ViT-B-16", "overrides": {}, "weights": "openai", "config": {...}}

``model_name`` is any open_clip model config (``open_clip.list_models()``) or
``holomodal-tiny-clip`` (a 64-pixel, 6-layer CLIP shipped in ``model_configs/`` for tests and
CPU runs); ``overrides`` replace top-level config entries (``vision_cfg``, ``text_cfg``,
``embed_dim``, ...); resolved, the record carries the whole ``config``, so that a saved model
rebuilds from its own file. ``weights`` says where the weights come from:

* ``None``: random initialisation (nothing is read);
* an open_clip pretrained tag (``openai``, ``laion2b_s34b_b88k``, ...): open_clip's own
  loader fetches it into its cache on first use, the only case that may download;
* a weights file (``.safetensors``, ``.pt``, ``.bin``): read without unpickling code;
* ``local-dir:FOLDER``: an open_clip folder (``open_clip_config.json`` + weights); its config
  becomes the record's ``overrides`` when the record is resolved;
* a ``holomodal pretrain ... method=clip`` run folder (or its ``.ckpt``).

The architecture is always built with random weights first (:meth:`CLIPBackbone.__init__`);
weights are loaded once, strictly, by :meth:`CLIPBackbone.load_weights` when training starts,
so a saved model reloads from its own file without the weights' source.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from holomodal.errors import ConfigError, DataError

CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_CLIP = "holomodal-tiny-clip"
LOCAL_DIR = "local-dir:"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# CLIP's pixel statistics (open_clip.constants.OPENAI_DATASET_MEAN/STD), for images the
# preprocessing hands over as uint8
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_registered = False


def _register_configs() -> None:
    """Make the shipped configs known to open_clip, once."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def model_config(model_name: str, overrides: dict[str, Any] | None = None,
                 config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full open_clip config of ``model_name`` (or ``config`` itself) with ``overrides`` applied."""
    import open_clip

    _register_configs()
    cfg = config or open_clip.get_model_config(model_name)
    if cfg is None:
        raise ConfigError(f"unknown open_clip model '{model_name}' (open_clip.list_models() lists them; "
                          f"'{TINY_CLIP}' is holomodal's tiny one)")
    cfg = copy.deepcopy(cfg)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def is_clip_run(path: str | Path) -> bool:
    p = Path(path)
    return (p / "checkpoints" / "last.ckpt").is_file() or (p.suffix == ".ckpt" and p.is_file())


def resolve_backbone(spec: str | dict[str, Any] | None) -> dict[str, Any]:
    """A backbone record from what a user writes: a record (mapping), a model name, or a
    ``holomodal pretrain method=clip`` run folder. Checked here, before anything is built."""
    if spec is None:
        spec = {"model_name": TINY_CLIP}
    if isinstance(spec, (str, Path)):
        text = str(spec)
        # a path (a separator in it, or something there) is a run folder; open_clip names have neither
        if not text.startswith(LOCAL_DIR) and ("/" in text or "\\" in text or Path(text).exists()):
            from holomodal.methods.pretraining.clip import read_clip_run

            return {**read_clip_run(text)["backbone"], "weights": str(Path(text).resolve())}
        spec = {"model_name": text}
    if not isinstance(spec, dict):
        raise ConfigError(f"model.backbone must be a model name, a run folder or a mapping, not {type(spec).__name__}")
    unknown = sorted(set(spec) - {"model_name", "overrides", "weights", "pretrained", "config"})
    if unknown:
        raise ConfigError(f"model.backbone has unknown key(s) {unknown} (model_name, overrides, weights)")
    if spec.get("config"):  # a resolved record (a run's, a saved model's): checked when it was made
        return dict(spec)
    name = str(spec.get("model_name") or TINY_CLIP)
    weights = spec.get("weights", spec.get("pretrained"))
    overrides = dict(spec.get("overrides") or {})
    if name.startswith(LOCAL_DIR):  # an open_clip folder: its config, and its weights file
        folder = Path(name[len(LOCAL_DIR):]).expanduser()
        config_file = folder / "open_clip_config.json"
        if not config_file.is_file():
            raise DataError(f"model.backbone '{name}': no open_clip_config.json in '{folder}'")
        found = [folder / f for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin") if (folder / f).is_file()]
        if not found:
            raise DataError(f"model.backbone '{name}': no open_clip_model.safetensors or open_clip_pytorch_model.bin in '{folder}'")
        cfg = json.loads(config_file.read_text(encoding="utf-8")).get("model_cfg")
        if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg:
            raise DataError(f"model.backbone '{name}': {config_file} holds no model_cfg with vision_cfg and text_cfg")
        # the folder's whole config travels in the record, so a saved model rebuilds without it
        return {"model_name": name, "config": cfg, "overrides": overrides, "weights": str(found[0].resolve())}
    config = model_config(name, overrides)  # an unknown name fails here
    if weights is not None:
        weights = str(weights)
        if weights.startswith(LOCAL_DIR) or Path(weights).suffix in WEIGHT_SUFFIXES or Path(weights).exists():
            path = Path(weights[len(LOCAL_DIR):] if weights.startswith(LOCAL_DIR) else weights).expanduser()
            if path.is_dir() and is_clip_run(path):
                weights = str(path.resolve())
            elif not path.is_file():
                raise DataError(f"model.backbone weights '{weights}': no such file")
            else:
                weights = str(path.resolve())
        else:
            import open_clip

            tags = open_clip.list_pretrained_tags_by_model(name)
            if weights not in tags:
                raise ConfigError(f"model.backbone: '{weights}' is neither a weights file nor a pretrained tag of "
                                  f"'{name}' (tags: {', '.join(tags) or 'none'})")
    # the whole config travels in the record: a saved model rebuilds from it alone
    return {"model_name": name, "config": config, "overrides": overrides, "weights": weights}


def _state_from_file(path: Path) -> dict[str, Tensor]:
    from holomodal.safe_load import load_checkpoint, load_safetensors

    if path.suffix == ".safetensors":
        return load_safetensors(path, "CLIP weights file")
    state = load_checkpoint(path, "CLIP weights file")
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items() if isinstance(v, Tensor)}


class CLIPBackbone(nn.Module):
    """An open_clip CLIP (random weights until :meth:`load_weights`) and the pieces of its
    towers that prompt methods run block by block.

    ``encode_image`` / ``encode_text`` are open_clip's own; the rest expose the towers:
    image tokens after ``ln_pre`` (CLS first), the residual blocks, the output heads, and the
    text tower's token embeddings and causal mask.
    """

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__()
        import open_clip

        self.record = dict(record)
        _register_configs()
        cfg = model_config(record["model_name"], record.get("overrides"), record.get("config"))
        custom_text = bool(cfg.pop("custom_text", False)) or "hf_model_name" in cfg.get("text_cfg", {})
        model_class = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
        self.model = model_class(**cfg)
        self.config = cfg
        visual, text = self.model.visual, self.text_tower
        self.image_size = int(cfg["vision_cfg"].get("image_size", 224))
        self.context_length = int(cfg["text_cfg"].get("context_length", 77))
        self.vocab_size = int(cfg["text_cfg"].get("vocab_size", 49408))
        self.embed_dim = int(cfg["embed_dim"])
        self.image_width = int(getattr(visual, "transformer", None).width) if hasattr(visual, "transformer") else None
        self.text_width = int(text.transformer.width) if hasattr(text, "transformer") else None

    # ---- weights -----------------------------------------------------------------------------
    def load_weights(self) -> None:
        """Load the record's weights (strict: every tensor must fit). Random: nothing to do."""
        source = self.record.get("weights")
        if not source:
            return
        path = Path(source)
        if path.exists():
            if is_clip_run(path):
                from holomodal.methods.pretraining.clip import read_clip_run

                state = read_clip_run(path, weights=True)["backbone_state"]
                where = f"the CLIP pre-training run '{path}'"
            else:
                state, where = _state_from_file(path), f"'{path}'"
        else:
            import open_clip

            # open_clip's own loader for a pretrained tag (fetched into its cache on first use)
            full = open_clip.create_model(self.record["model_name"], pretrained=source,
                                          **(self.record.get("overrides") or {}))
            state, where = full.state_dict(), f"open_clip's '{source}' weights"
        result = self.model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise DataError(f"the weights of {where} do not fit model '{self.record['model_name']}': "
                            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")

    # ---- open_clip's own encoders --------------------------------------------------------------
    def encode_image(self, pixels: Tensor) -> Tensor:
        return self.model.encode_image(pixels)

    def encode_text(self, ids: Tensor) -> Tensor:
        return self.model.encode_text(ids)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.model.logit_scale

    # ---- the towers, block by block ------------------------------------------------------------
    @property
    def text_tower(self) -> nn.Module:
        # plain CLIP keeps its text tower's modules at top level, CustomTextCLIP in .text
        return getattr(self.model, "text", self.model)

    @property
    def promptable(self) -> bool:
        """Whether prompts can enter the towers: a ViT image tower and a transformer text tower."""
        from open_clip.transformer import VisionTransformer

        visual = self.model.visual
        return (isinstance(visual, VisionTransformer) and visual.attn_pool is None
                and hasattr(self.text_tower, "token_embedding") and getattr(self.text_tower, "cls_emb", None) is None)

    def require_promptable(self, method: str) -> None:
        if not self.promptable:
            raise ConfigError(f"method '{method}' inserts prompts into a ViT image tower and a CLIP text transformer; "
                              f"backbone '{self.record['model_name']}' has another architecture (use a ViT-* model)")

    @property
    def image_blocks(self) -> nn.ModuleList:
        return self.model.visual.transformer.resblocks

    @property
    def text_blocks(self) -> nn.ModuleList:
        return self.text_tower.transformer.resblocks

    def image_tokens(self, pixels: Tensor) -> Tensor:
        """(B, 1 + patches, width): CLS and patch tokens with positions, after ``ln_pre``."""
        return self.model.visual._embeds(pixels)

    def image_output(self, tokens: Tensor, prompts: int) -> Tensor:
        """The image embedding from the last block's tokens, the first ``prompts`` of which
        are prompts (pooled away as the tower pools: its CLS token, or the patch mean)."""
        visual = self.model.visual
        pooled, _ = visual._pool(tokens[:, prompts:])
        return pooled @ visual.proj if visual.proj is not None else pooled

    def text_tokens(self, ids: Tensor) -> Tensor:
        """(B, L, width): token embeddings plus positions (as open_clip's ``encode_text``)."""
        text = self.text_tower
        x = text.token_embedding(ids)
        return x + text.positional_embedding[: ids.shape[1]].to(x.dtype)

    def text_output(self, tokens: Tensor, ids: Tensor, prompts: int) -> Tensor:
        """The text embedding: ``ln_final`` and end-of-text pooling over the text positions
        (the first ``prompts`` positions dropped), then the projection."""
        from open_clip.transformer import text_global_pool

        text = self.text_tower
        x = text.ln_final(tokens[:, prompts:])
        pool = getattr(text, "text_pool_type", None) or getattr(text, "pool_type", "argmax")
        eos = getattr(text, "text_eos_id", None) or getattr(text, "eos_id", None)
        x = text_global_pool(x, ids, pool, eos_token_id=eos)
        proj = text.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    @staticmethod
    def causal_mask(length: int, device: torch.device | None = None) -> Tensor:
        """(length, length) additive mask: a position sees itself and the positions before it."""
        return torch.full((length, length), float("-inf"), device=device).triu_(1)

    @staticmethod
    def run_block(block: nn.Module, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """One open_clip residual block on batch-first ``tokens``."""
        return block(tokens, attn_mask=mask)


# ---- from a batch to the towers' inputs ----------------------------------------------------------
def clip_columns(schema: Any, record: dict[str, Any], image: str, text: str) -> Any:
    """``schema`` with its ``image`` and ``text`` columns set up as the backbone reads them:
    images at the tower's size with CLIP's pixel statistics, text through the CLIP BPE
    tokenizer (shipped with open_clip) at the tower's context length. Tokenising here, in the
    preprocessing, keeps it out of every forward pass."""
    import dataclasses

    from holomodal.schema import Column

    cfg = model_config(record["model_name"], record.get("overrides"), record.get("config"))
    size = cfg["vision_cfg"].get("image_size", 224)
    wanted = {
        image: {"channels": 3, "size": int(size if isinstance(size, int) else size[0]), "normalize": "clip"},
        text: {"tokenizer": "clip", "max_length": int(cfg["text_cfg"].get("context_length", 77))},
    }
    columns = [Column(c.name, c.modality, {**c.options, **wanted.get(c.name, {})}) for c in schema.columns]
    return dataclasses.replace(schema, columns=columns)


def image_text_columns(modality_types: dict[str, str], image: str | None, text: str | None,
                       method: str) -> tuple[str, str]:
    """The image and text column a CLIP method reads: the ones named, else the only ones."""
    def pick(kind: str, named: str | None) -> str:
        found = [m for m, t in modality_types.items() if t == kind]
        if named is not None:
            if named not in found:
                raise ConfigError(f"method '{method}': '{named}' is not a {kind} column of the data ({kind} columns: {found})")
            return named
        if len(found) != 1:
            raise ConfigError(f"method '{method}' reads one {kind} column; the data has {found or 'none'}: "
                              f"name one with model.{kind}=COLUMN")
        return found[0]

    return pick("image", image), pick("text", text)


class CLIPInputs(nn.Module):
    """Pixels and token ids as CLIP wants them, and the stand-ins of absent modalities.

    DCP and MMP feed an absent image as a constant all-ones image (after normalisation) and an
    absent text as the empty string (start and end token only); the batch contract hands both
    over zeroed, with ``present`` False."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        from open_clip.tokenizer import SimpleTokenizer

        tok = SimpleTokenizer()
        self.sot, self.eot = int(tok.sot_token_id), int(tok.eot_token_id)
        # not persistent: rebuilt from the preprocessor's statistics
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def pixels(self, pixels: Tensor, present: Tensor) -> Tensor:
        x = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()
        x = (x - self.mean) / self.std
        return torch.where(present.view(-1, 1, 1, 1), x, torch.ones_like(x))

    def ids(self, ids: Tensor, present: Tensor) -> Tensor:
        empty = torch.zeros_like(ids)
        empty[:, 0], empty[:, 1] = self.sot, self.eot
        return torch.where(present.view(-1, 1), ids, empty)
