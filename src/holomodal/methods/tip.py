"""TIP (ECCV 2024): tabular-image pre-training, then fine-tuning on incomplete tables.

Three modules (spec ``tip_stil.md`` section 1.3) form :class:`TIPBackbone`: an image
encoder from timm whose last feature map gives the image tokens, TIP's tabular
transformer (missing cells -> learned ``[MASK]`` token + key masking), and the
interaction module (``cross_attention`` fusion: table tokens cross-attend to image
tokens). The fused CLS token is the multimodal feature.

:class:`TIPPretraining` trains the backbone without labels on the mean of the losses in
``losses`` (``itc``, ``itm``, ``mtr``; see :mod:`holomodal.losses`): ITC and ITM see a
per-sample augmented image and a SCARF-corrupted table, MTR the same image tokens and
the original table with half of its cells masked. ``losses: [itc]`` is MMCL-style
contrastive-only pre-training, ``[itc, itm]`` TIP without reconstruction.

:class:`TIP` (method ``tip``) is the classifier: one linear layer on the fused CLS,
either with the pre-trained backbone frozen (``finetune: linear``, linear probing) or
trained end to end (``finetune: full``). Missing cells, natural or synthetic, reach the
tabular encoder through ``Batch.cell_missing`` and take the same ``[MASK]`` path as
reconstruction did in pre-training.

Data with several image columns (views) use all of them unless ``image_modality`` names
some: one image encoder shared by the views, a learned view embedding on each view's
tokens, and the table tokens cross-attending to the tokens of every view present in the
row (:class:`holomodal.fusion.cross_attention.CrossAttentionFusion`). An absent view is
masked out, like an absent image. Pre-training takes several views too: ITC on their mean
pooled feature, ITM with hard-negative images that bring all their views, MTR fused with
all views.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from holomodal.augment import ImageAugmentation, build_image_augmentation, marginal_corruption
from holomodal.batch import Batch
from holomodal.errors import ConfigError, DataError
from holomodal.fusion.cross_attention import CrossAttentionFusion
from holomodal.losses import ImageTabularContrastiveLoss, ImageTabularMatching, MaskedTabularReconstructionLoss
from holomodal.losses.itm import sample_hard_negatives
from holomodal.methods import register_method
from holomodal.methods.base import (
    ClassificationMethod, FiniteLossGuard, ModelContext, build_optimizer, clips_gradients, with_scheduler,
)
from holomodal.schema import Modality

TABULAR = "tabular"
TIP_LOSSES = ("itc", "itm", "mtr")
CHECKPOINT_KEY = "holomodal_tip"  # the record a pre-training checkpoint carries besides its weights
FORMAT_VERSION = 1

DEFAULT_IMAGE_ENCODER = {"name": "timm", "model_name": "resnet50", "pretrained": False, "normalize": False}
DEFAULT_TABULAR_ENCODER = {"name": "tabular_transformer", "dim": 512, "depth": 4, "heads": 8}
DEFAULT_INTERACTION = {"dim": 512, "depth": 4, "heads": 8, "mlp_ratio": 4.0}


# ---- the backbone --------------------------------------------------------------------------
def find_image_modalities(modality_types: dict[str, str], requested: str | Sequence[str] | None = None) -> list[str]:
    """The image columns TIP encodes: those ``requested`` names (one name or a list), else
    every image modality of the data, so that none is dropped unasked."""
    images = [m for m, kind in modality_types.items() if kind == "image"]
    if requested:
        names = [requested] if isinstance(requested, str) else [str(n) for n in requested]
        unknown = [n for n in names if n not in images]
        if unknown:
            raise ConfigError(f"tip: image_modality {unknown} are not image modalities of the data (images: {images})")
        if len(set(names)) != len(names):
            raise ConfigError(f"tip: image_modality names a column more than once: {names}")
        return names
    if not images:
        raise ConfigError("tip needs an image modality; the data has none")
    return images


def views_of(image_modality: str | Sequence[str]) -> list[str]:
    """The image columns of a backbone config's ``image_modality`` (one name, or a list)."""
    return [image_modality] if isinstance(image_modality, str) else list(image_modality)


def shared_image_config(encoders: dict[str, Any], views: list[str], input_specs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The configuration of the one image encoder every image column goes through."""
    named = {v: encoders[v] for v in views if encoders.get(v)}
    distinct = [c for i, c in enumerate(named.values()) if c not in list(named.values())[:i]]
    if len(distinct) > 1:
        raise ConfigError(
            f"tip encodes every image column with one shared image encoder, but model.encoders configures "
            f"{sorted(named)} differently: give one configuration under model.encoders.image"
        )
    if len(views) > 1:
        channels = {v: input_specs[v].get("channels") for v in views}
        if len(set(channels.values())) > 1:
            raise ConfigError(
                f"tip encodes every image column with one shared image encoder, so they need the same number of "
                f"channels; the schema gives {channels}: set the columns' 'channels' option to one value"
            )
    return dict(distinct[0] if distinct else encoders.get("image") or {})


def resolve_backbone_config(
    input_specs: dict[str, dict[str, Any]], modality_types: dict[str, str], image_modality: str | Sequence[str] | None = None,
    encoders: dict[str, Any] | None = None, interaction: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to rebuild a :class:`TIPBackbone`, as plain data (stored in
    pre-training checkpoints and in fine-tuned models). ``image_modality`` is one column's
    name, as it always was, or the list of several."""
    if TABULAR not in input_specs:
        raise ConfigError("tip needs tabular columns; the data has none")
    views = find_image_modalities(modality_types, image_modality)
    encoders = dict(encoders or {})
    image_cfg = shared_image_config(encoders, views, input_specs)
    tabular_cfg = dict(encoders.get(TABULAR) or {})
    # defaults complete a partial config only for the encoder they belong to
    if image_cfg.get("name", DEFAULT_IMAGE_ENCODER["name"]) == DEFAULT_IMAGE_ENCODER["name"]:
        image_cfg = {**DEFAULT_IMAGE_ENCODER, **image_cfg}
    if tabular_cfg.get("name", DEFAULT_TABULAR_ENCODER["name"]) != DEFAULT_TABULAR_ENCODER["name"]:
        raise ConfigError("tip's tabular encoder must be 'tabular_transformer' (it needs the [MASK] token and tokens)")
    tabular_cfg = {**DEFAULT_TABULAR_ENCODER, **tabular_cfg}
    specs = {v: copy.deepcopy(input_specs[v]) for v in views}
    return {
        "image_modality": views[0] if len(views) == 1 else views,
        "input_specs": {**specs, TABULAR: copy.deepcopy(input_specs[TABULAR])},
        "encoders": {"image": image_cfg, "tabular": tabular_cfg},
        "interaction": {**DEFAULT_INTERACTION, **(interaction or {})},
    }


@dataclass
class ImageViews:
    """A batch's encoded image columns: tokens (B, T, D) and presence (B,) per column, and
    the pooled image feature (B, D): the one column's own, or with several the mean over the
    columns present in the row (zeros where none is)."""

    tokens: dict[str, Tensor]
    present: dict[str, Tensor]
    pooled: Tensor

    def take(self, rows: Tensor) -> "ImageViews":
        return ImageViews({v: t[rows] for v, t in self.tokens.items()}, {v: p[rows] for v, p in self.present.items()},
                          self.pooled[rows])

    @staticmethod
    def cat(parts: Sequence["ImageViews"]) -> "ImageViews":
        views = list(parts[0].tokens)
        return ImageViews({v: torch.cat([p.tokens[v] for p in parts]) for v in views},
                          {v: torch.cat([p.present[v] for p in parts]) for v in views},
                          torch.cat([p.pooled for p in parts]))


def pooled_over_views(pooled: list[Tensor], present: list[Tensor]) -> Tensor:
    if len(pooled) == 1:
        return pooled[0]
    weight = torch.stack(present, dim=1).to(pooled[0].dtype)
    total = (torch.stack(pooled, dim=1) * weight[..., None]).sum(dim=1)
    return total / weight.sum(dim=1, keepdim=True).clamp(min=1.0)


class TIPBackbone(nn.Module):
    """Image encoder, tabular encoder and interaction module, built from
    :func:`resolve_backbone_config`'s output.

    Several image columns (views of one subject: car photos from several angles, frontal
    and lateral X-rays) share the image encoder, so each view trains the same features and
    the model's size does not grow with their number; the interaction module tells their
    tokens apart by a learned view embedding and attends over all of them, the tokens of a
    row's absent views masked out. Each view keeps its own pixel statistics: with a timm
    encoder they normalise the pixels before the shared trunk."""

    def __init__(self, image_modality: str | Sequence[str], input_specs: dict[str, dict[str, Any]], encoders: dict[str, Any],
                 interaction: dict[str, Any]) -> None:
        super().__init__()
        from holomodal.encoders import create_encoder
        from holomodal.encoders.base import PixelNormalizer

        self.views = views_of(image_modality)
        image_cfg, tabular_cfg = dict(encoders["image"]), dict(encoders["tabular"])
        name = image_cfg.pop("name")
        # no parameters and no persistent buffers: the state-dict keys stay the encoder's
        self.view_pixels: nn.ModuleList | None = None
        if len(self.views) > 1 and name == "timm":
            normalize = image_cfg.pop("normalize", True)
            self.view_pixels = nn.ModuleList()
            for v in self.views:
                spec = input_specs[v]
                mean, std = (spec.get("mean"), spec.get("std")) if normalize else (None, None)
                self.view_pixels.append(PixelNormalizer(int(spec["channels"]), mean, std))
            image_cfg["normalize"] = False
        self.image_encoder = create_encoder(name, input_specs[self.views[0]], **image_cfg)
        if not hasattr(self.image_encoder, "forward_tokens"):
            raise ConfigError(f"tip: image encoder '{encoders['image']['name']}' has no forward_tokens (use timm)")
        self.tabular_encoder = create_encoder(tabular_cfg.pop("name"), input_specs[TABULAR], **tabular_cfg)
        dims = {TABULAR: self.tabular_encoder.output_dim, **{v: self.image_encoder.output_dim for v in self.views}}
        self.interaction = CrossAttentionFusion(dims, query=TABULAR, **interaction)

    @property
    def image_dim(self) -> int:
        return int(self.image_encoder.output_dim)

    @property
    def tabular_dim(self) -> int:
        return int(self.tabular_encoder.output_dim)

    @property
    def fused_dim(self) -> int:
        return int(self.interaction.output_dim)

    def encode_images(self, batch: Batch, pixels: dict[str, Tensor] | None = None) -> ImageViews:
        """Every image column through the shared encoder; ``pixels`` replaces some columns'
        pixels (augmented views)."""
        tokens, pooled = {}, []
        for i, v in enumerate(self.views):
            inputs = batch.inputs[v] if pixels is None or v not in pixels else {**batch.inputs[v], "pixels": pixels[v]}
            if self.view_pixels is not None:
                inputs = {**inputs, "pixels": self.view_pixels[i](inputs["pixels"])}
            tokens[v], p = self.image_encoder.forward_tokens(inputs, batch.present[v])
            pooled.append(p)
        present = {v: batch.present[v] for v in self.views}
        return ImageViews(tokens, present, pooled_over_views(pooled, list(present.values())))

    def image_tokens(self, batch: Batch, pixels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Tokens and pooled features of a backbone with one image column."""
        if len(self.views) != 1:
            raise ValueError(f"image_tokens serves one image column; this backbone has {self.views}: use encode_images")
        v = self.views[0]
        images = self.encode_images(batch, None if pixels is None else {v: pixels})
        return images.tokens[v], images.pooled

    def tabular_tokens(
        self, batch: Batch, inputs: dict[str, Tensor] | None = None, token_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self.tabular_encoder.forward_tokens(
            batch.inputs[TABULAR] if inputs is None else inputs, batch.present[TABULAR], batch.cell_missing, token_mask
        )

    def fuse(self, table_tokens: Tensor, images: ImageViews | Tensor, image_present: Tensor | None = None) -> Tensor:
        """Fused tokens (B, N+1, dim); CLS first. ``images`` is :meth:`encode_images`'s
        output, or with one image column its tokens and ``image_present``."""
        if isinstance(images, Tensor):
            v = self.views[0]
            return self.interaction.forward_tokens({TABULAR: table_tokens, v: images}, {v: image_present})
        return self.interaction.forward_tokens({TABULAR: table_tokens, **images.tokens}, images.present)


# ---- pre-training checkpoints --------------------------------------------------------------
def checkpoint_file(path: str | Path) -> Path:
    """A pre-training run folder (its last checkpoint, as TIP uses the last epoch) or a file."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "last.ckpt"
    if not p.is_file():
        raise DataError(f"no TIP pre-training checkpoint at '{p}' (give a pre-training run folder or its .ckpt file)")
    return p


def read_pretrained(path: str | Path, *, weights: bool = False) -> dict[str, Any]:
    """The record of a pre-training checkpoint (``backbone``, ``preprocessor``, ``losses``)
    and, with ``weights``, its ``state_dict``."""
    from holomodal.safe_load import DamagedFileError, checkpoint_record, checkpoint_weights

    p = checkpoint_file(path)
    # weights-only whatever the environment says: a model.checkpoint may come from anywhere
    ckpt, record = checkpoint_record(p, CHECKPOINT_KEY, "TIP pre-training")
    if not isinstance(record, dict) or "backbone" not in record:
        raise DamagedFileError(p, "its TIP record lacks the backbone's architecture")
    if weights:
        record["state_dict"] = checkpoint_weights(p, ckpt)
    return record


def backbone_state(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}


# ---- pre-training --------------------------------------------------------------------------
class TIPPretraining(FiniteLossGuard, nn.Module):
    """Self-supervised pre-training of a :class:`TIPBackbone` on image-table pairs.

    Args:
        input_specs, modality_types: from the fitted preprocessor.
        model: the ``tip`` model options; read here: ``image_modality``, ``encoders``,
            ``interaction``, ``losses`` (subset of itc, itm, mtr), ``itc``
            (projection_dim, temperature, lam), ``mtr`` (mask_rate), ``corruption_rate``
            (SCARF, 0.3), ``augment`` (image augmentation preset / options, rate 0.95).
        optim: ``name`` (adam/adamw), ``lr``, ``weight_decay``, ``scheduler``
            (``warmup_cosine`` or none), ``warmup_epochs``.
        preprocessor: the fitted preprocessor's state, stored in the checkpoint so that
            fine-tuning encodes data as pre-training did.
    """

    def __init__(
        self, input_specs: dict[str, dict[str, Any]], modality_types: dict[str, str], model: dict[str, Any] | None = None,
        optim: dict[str, Any] | None = None, preprocessor: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        cfg = dict(model or {})
        self.losses = list(cfg.get("losses") or TIP_LOSSES)
        unknown = sorted(set(self.losses) - set(TIP_LOSSES))
        if unknown or not self.losses:
            raise ConfigError(f"tip losses must be a non-empty subset of {list(TIP_LOSSES)}, got {self.losses}")
        if "itm" in self.losses and "itc" not in self.losses:
            raise ConfigError("tip: 'itm' draws its hard negatives from the contrastive similarity, so it needs 'itc' too")
        self.backbone_config = resolve_backbone_config(
            input_specs, modality_types, cfg.get("image_modality"), cfg.get("encoders"), cfg.get("interaction")
        )
        self.backbone = TIPBackbone(**copy.deepcopy(self.backbone_config))
        b = self.backbone
        self.itc = ImageTabularContrastiveLoss(b.image_dim, b.tabular_dim, **(cfg.get("itc") or {})) if "itc" in self.losses else None
        self.itm = ImageTabularMatching(b.fused_dim) if "itm" in self.losses else None
        tab_spec = input_specs[TABULAR]
        self.mtr = (
            MaskedTabularReconstructionLoss(b.fused_dim, tab_spec["cardinalities"], tab_spec["n_continuous"], **(cfg.get("mtr") or {}))
            if "mtr" in self.losses else None
        )
        augment = cfg.get("augment", {"preset": "natural", "rate": 0.95})
        self.augment: ImageAugmentation | None = build_image_augmentation(augment)
        self.corruption_rate = float(cfg.get("corruption_rate", 0.3))
        self.optim_cfg = {"name": "adam", "lr": 3e-4, "weight_decay": 1.5e-6, **(optim or {})}
        self.record = {
            "format_version": FORMAT_VERSION, "backbone": self.backbone_config, "losses": self.losses,
            "model": cfg, "optim": self.optim_cfg, "preprocessor": preprocessor,
        }

    @property
    def phase_name(self) -> str:
        """The training phase, for the run's progress lines (holomodal.training.RunConsole)."""
        return f"pre-training without labels, losses {', '.join(self.losses)}"

    # ---- the step ------------------------------------------------------------------------
    def ssl_losses(self, batch: Batch, *, augment: bool) -> dict[str, Tensor]:
        """Each active loss, their mean (``loss``) and the matching accuracy (``itm_acc``).

        With several image columns a row's image is the set of its views: ITC contrasts the
        pooled views with the table, and a hard-negative image for ITM brings all its views."""
        b = self.backbone
        n = len(batch)
        pixels = None
        if augment and self.augment is not None:
            pixels = {v: self.augment(batch.inputs[v]["pixels"]) for v in b.views}
        images = b.encode_images(batch, pixels)
        table = batch.inputs[TABULAR]
        out: dict[str, Tensor] = {}
        queries: list[Tensor] = []
        memories: list[ImageViews] = []
        if self.itc is not None:
            view = table
            if augment and self.corruption_rate > 0:
                view, _ = marginal_corruption(table, batch.cell_missing, self.corruption_rate)
            table_tokens, table_cls = b.tabular_tokens(batch, view)
            out["itc"], similarity = self.itc(images.pooled, table_cls)
            if self.itm is not None:
                tables_for_images, images_for_tables = sample_hard_negatives(similarity)
                # matched pairs, then (image a, its negative table), then (its negative image, table b)
                queries += [table_tokens, table_tokens[tables_for_images], table_tokens]
                memories += [images, images, images.take(images_for_tables)]
        if self.mtr is not None:
            token_mask = self.mtr.sample_mask(n, device=images.pooled.device)
            masked_tokens, _ = b.tabular_tokens(batch, table, token_mask)
            queries.append(masked_tokens)
            memories.append(images)
        if queries:
            # one pass of the interaction module over every pair the losses need
            fused = b.fuse(torch.cat(queries), ImageViews.cat(memories))
            if self.itm is not None:
                out["itm"], out["itm_acc"] = self.itm(fused[:n, 0], fused[n : 3 * n, 0])
            if self.mtr is not None:
                observed = None if batch.cell_missing is None else ~batch.cell_missing
                out["mtr"] = self.mtr(fused[-n:], table["categorical"], table["continuous"], token_mask, observed)
        out["loss"] = torch.stack([out[k] for k in self.losses]).mean()
        return out

    def _log(self, values: dict[str, Tensor], prefix: str, n: int) -> None:
        for name, value in values.items():
            self.log(f"{prefix}/{name}", value, on_step=False, on_epoch=True, prog_bar=name == "loss", batch_size=n)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        values = self.ssl_losses(batch, augment=True)
        self._log(values, "train", len(batch))
        return self.watch_loss(values["loss"])

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if len(batch) < 2 and self.itm is not None:
            return  # a last batch of one has no negative pair
        self._log(self.ssl_losses(batch, augment=False), "val", len(batch))

    def configure_optimizers(self) -> Any:
        cfg = dict(self.optim_cfg)
        scheduler = cfg.pop("scheduler", "warmup_cosine")
        warmup = int(cfg.pop("warmup_epochs", 10))
        optimizer = build_optimizer(self.parameters(), **cfg, fused=not clips_gradients(self))
        return with_scheduler(optimizer, self.trainer, scheduler, warmup_epochs=warmup)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = json.dumps(self.record)


def check_checkpoint_views(views: list[str], data_images: list[str], requested: str | Sequence[str] | None) -> None:
    """Fine-tuning from a checkpoint uses the image columns it was pre-trained with; the
    data's other image columns would be dropped, so that needs ``model.image_modality``
    to say so."""
    if requested:
        if views_of(requested) != views:
            raise ConfigError(
                f"model.image_modality {views_of(requested)} differs from the image columns {views} the pre-training "
                "checkpoint encodes; fine-tuning uses the checkpoint's"
            )
        return
    unused = [m for m in data_images if m not in views]
    if unused:
        raise ConfigError(
            f"the pre-training checkpoint encodes the image column(s) {views}, and the data also has {unused}, "
            f"which tip would not use: pre-train with every image column, drop {unused} from the schema, or set "
            f"model.image_modality: {views[0] if len(views) == 1 else views} to fine-tune on the checkpoint's only"
        )


# ---- fine-tuning ---------------------------------------------------------------------------
HEAD_INPUTS = ("fused", "image", "concat")


@register_method("tip")
class TIP(ClassificationMethod):
    """The TIP classifier: a linear layer on the (pre-trained) backbone's features.

    Args:
        checkpoint: a pre-training run folder or its ``.ckpt``; its weights are loaded
            when training starts, its recorded backbone config rebuilds the architecture.
        finetune: ``linear`` (backbone parameters frozen) or ``full``; default ``linear``
            from a checkpoint, ``full`` from scratch.
        probe_bn: in linear probing, ``train`` (TIP: the frozen backbone stays in train mode,
            so batch-norm running statistics adapt to the fine-tuning data, and dropout
            acts) or ``eval`` (the backbone in eval mode: statistics fixed at pre-training's).
        head_input: ``fused`` (TIP: the interaction module's CLS), ``image`` (the pooled
            image features: MMCL's protocol) or ``concat`` (pooled image and tabular CLS:
            the features ITC trains).
        finetune_augment: image augmentation during fine-tuning (preset / options); its
            ``rate`` (TIP: 0.8) is one coin per sample shared with the tabular corruption.
        corruption_rate: SCARF corruption of the table in augmented rows (TIP: 0.3).
        image_modality, encoders, interaction: the architecture when training from
            scratch. ``image_modality`` names the image columns to use (one name or a
            list); by default every image column of the data is used, each through the
            shared image encoder with its own view embedding in the interaction module.
            With a checkpoint the architecture is the checkpoint's, and the data's other
            image columns are refused unless ``image_modality`` names the checkpoint's.
        backbone: the resolved architecture; filled in by the estimator from the
            checkpoint, so a saved model reloads without it.
        losses, itc, mtr, augment: pre-training options, unused by fine-tuning (one model
            section serves ``holomodal pretrain`` and ``holomodal train``).
    """

    def __init__(
        self,
        context: ModelContext,
        checkpoint: str | None = None,
        finetune: str | None = None,
        probe_bn: str = "train",
        head_input: str = "fused",
        finetune_augment: str | dict[str, Any] | None = None,
        corruption_rate: float = 0.3,
        image_modality: str | Sequence[str] | None = None,
        encoders: dict[str, Any] | None = None,
        interaction: dict[str, Any] | None = None,
        backbone: dict[str, Any] | None = None,
        losses: Sequence[str] | None = None,
        itc: dict[str, Any] | None = None,
        mtr: dict[str, Any] | None = None,
        augment: Any = None,
        optim: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(context, optim)
        finetune = finetune or ("linear" if checkpoint else "full")
        if finetune not in ("linear", "full"):
            raise ConfigError(f"tip finetune must be 'linear' or 'full', not '{finetune}'")
        if finetune == "linear" and not checkpoint:
            raise ConfigError("tip finetune: linear probes a pre-trained backbone: set model.checkpoint to a pre-training run")
        if probe_bn not in ("train", "eval"):
            raise ConfigError(f"tip probe_bn must be 'train' or 'eval', not '{probe_bn}'")
        if head_input not in HEAD_INPUTS:
            raise ConfigError(f"tip head_input must be one of {list(HEAD_INPUTS)}, not '{head_input}'")
        self.checkpoint = checkpoint
        self.finetune = finetune
        # only a linear probe freezes the backbone, so only it can hold the statistics fixed
        self.frozen_statistics = finetune == "linear" and probe_bn == "eval"
        self.head_input = head_input
        if backbone is None:
            backbone = (
                read_pretrained(checkpoint)["backbone"] if checkpoint else
                resolve_backbone_config(context.input_specs, context.modality_types, image_modality, encoders, interaction)
            )
        self.backbone_config = backbone
        self.backbone = TIPBackbone(**copy.deepcopy(backbone))
        b = self.backbone
        width = {"fused": b.fused_dim, "image": b.image_dim, "concat": b.image_dim + b.tabular_dim}[head_input]
        self.head = nn.Linear(width, context.num_classes)
        # a small initial head: a probe trained for few steps on frozen features must not keep
        # the arbitrary direction PyTorch's default (uniform, std ~ 1/sqrt(3 * width)) gives it
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        augment_cfg = {"preset": "natural_finetune", "rate": 0.8} if finetune_augment is None else finetune_augment
        augment_cfg = {"preset": augment_cfg} if isinstance(augment_cfg, str) else dict(augment_cfg)
        self.augment_rate = float(augment_cfg.pop("rate", 0.8))
        self.augment = build_image_augmentation(augment_cfg if augment_cfg.get("preset") != "none" else None)
        self.corruption_rate = float(corruption_rate)
        self._pretrained_loaded = False
        if finetune == "linear":
            self.backbone.requires_grad_(False)
        if self.frozen_statistics:
            # Lightning restores each submodule's own mode around validation rather than
            # calling train(), so the frozen backbone must start in eval mode
            self.backbone.eval()

    @classmethod
    def resolve_options(cls, context: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        """The architecture a run from scratch builds, written out as ``backbone`` (with a
        checkpoint :meth:`adopt_pretraining` has filled it in). The per-modality encoder
        defaults of other methods are not TIP's: its tabular encoder is the transformer and
        its image columns share one encoder."""
        if options.get("backbone") or options.get("checkpoint"):
            return dict(options)
        backbone = resolve_backbone_config(context.input_specs, context.modality_types, options.get("image_modality"),
                                           options.get("encoders"), options.get("interaction"))
        return {**options, "backbone": backbone}

    # ---- pre-trained weights ---------------------------------------------------------------
    @staticmethod
    def adopt_pretraining(preprocessor: Any, model: dict[str, Any]) -> dict[str, Any]:
        """Estimator hook, before the model is built: make the fitted ``preprocessor``
        encode data as the pre-training run did (same category codes, same z-scores) and
        return the model options with the checkpoint's architecture filled in."""
        if not model.get("checkpoint"):
            return model
        record = read_pretrained(model["checkpoint"])
        saved = (record.get("preprocessor") or {}).get("processors") or {}
        views = views_of(record["backbone"]["image_modality"])
        check_checkpoint_views(views, [c.name for c in preprocessor.schema.of(Modality.IMAGE)], model.get("image_modality"))
        for key in (TABULAR, *views):
            if key not in preprocessor.processors or key not in saved:
                raise ConfigError(f"the pre-training checkpoint and the data disagree: modality '{key}' is missing in one of them")
        before = preprocessor.processors[TABULAR].names
        after = list((saved[TABULAR].get("mean") or {}).keys())
        expected = list(saved[TABULAR].get("vocab", {}).keys()) + after
        if before != expected:
            raise ConfigError(f"tabular columns differ from pre-training: data {before}, checkpoint {expected}")
        for key in (TABULAR, *views):
            preprocessor.processors[key].load_state(copy.deepcopy(saved[key]))
        return {**model, "backbone": record["backbone"]}

    def load_pretrained(self) -> None:
        """Load the checkpoint's backbone weights (strict: the architectures must agree)."""
        if not self.checkpoint:
            return
        record = read_pretrained(self.checkpoint, weights=True)
        self.backbone.load_state_dict(backbone_state(record["state_dict"]), strict=True)
        self._pretrained_loaded = True

    def setup(self, stage: str) -> None:
        # before Lightning restores a resumed run, so a resume keeps its fine-tuned weights
        if stage == "fit" and not self._pretrained_loaded:
            self.load_pretrained()

    def train(self, mode: bool = True) -> "TIP":
        super().train(mode)
        if self.frozen_statistics:
            self.backbone.eval()
        return self

    @property
    def phase_name(self) -> str:
        """The training phase, for the run's progress lines (holomodal.training.RunConsole)."""
        if self.finetune == "linear":
            statistics = "batch-norm statistics fixed" if self.frozen_statistics else "batch-norm statistics adapting"
            return f"fine-tuning: linear probe on the frozen pre-trained backbone ({statistics})"
        return "fine-tuning: full, backbone trained" + (" from pre-training" if self.checkpoint else " from scratch")

    # ---- forward -----------------------------------------------------------------------------
    def features(self, batch: Batch) -> Tensor:
        b = self.backbone
        images = b.encode_images(batch)
        if self.head_input == "image":
            return images.pooled
        table_tokens, table_cls = b.tabular_tokens(batch)
        if self.head_input == "concat":
            return torch.cat([images.pooled, table_cls], dim=1)
        return b.fuse(table_tokens, images)[:, 0]

    def forward(self, batch: Batch) -> Tensor:
        if self.finetune == "linear":
            with torch.no_grad():
                feats = self.features(batch)
        else:
            feats = self.features(batch)
        return self.head(feats)

    def augmented(self, batch: Batch) -> Batch:
        """TIP's fine-tuning views: with probability ``rate`` per sample, an augmented image
        (each image column its own draw) and a corrupted table (one coin for all); otherwise
        the sample as it is."""
        views = self.backbone.views
        device = batch.inputs[views[0]]["pixels"].device
        rows = torch.rand(len(batch), device=device) < self.augment_rate
        inputs = dict(batch.inputs)
        if self.augment is not None:
            for m in views:
                pixels = batch.inputs[m]["pixels"]
                plain = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()
                changed = torch.where(rows.view(-1, 1, 1, 1), self.augment(pixels), plain)
                # absent images stay zero, as the batch contract wants
                changed = changed * batch.present[m].view(-1, 1, 1, 1).to(changed.dtype)
                inputs[m] = {**inputs[m], "pixels": changed}
        if self.corruption_rate > 0:
            inputs[TABULAR], _ = marginal_corruption(inputs[TABULAR], batch.cell_missing, self.corruption_rate, rows=rows)
        return replace(batch, inputs=inputs)

    def training_loss(self, batch: Batch) -> Tensor:
        if self.augment_rate > 0 and (self.augment is not None or self.corruption_rate > 0):
            batch = self.augmented(batch)
        return self.loss_from_logits(self(batch), batch.target)
