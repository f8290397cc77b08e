"""MedST: multi-view, temporal image-report pre-training (spec ``dcp_i2m2_medst.md`` 3).

Per study, the frontal and the lateral image go through one ViT with view experts
(:class:`~holomodal.encoders.multiview_vit.MultiViewViT`), the report through a text encoder;
global and local 128-d embeddings (Linear-BN-ReLU-Linear-BN heads, L2-normalised) are aligned
by three losses, each in :mod:`holomodal.losses.medst`:

    L = w_global * L_global + w_local * L_local + w_temporal * L_temporal

``L_global`` is the symmetric InfoNCE of images and reports (tau 0.07), ``L_local`` the
modality-weighted token alignment (tau 0.1; absent lateral patches and padded words take no
part), ``L_temporal`` the cross-modal cycle consistency (FMC + RMR, tau 0.1) over each
patient's studies in time order: sequences of ``sequence_length`` (4) studies, a shorter
sequence (a patient's last or only few studies) with its empty places masked out, a single
study only in the two alignment losses. The batch holds ``batch_size`` sequences.

Choices where holomodal differs from the released code, on purpose (addenda 2.4, spec 3.8):
lateral tokens are masked out of the local loss, not only as attention keys; the view mask
is an explicit flag (no inversion, no guessing by sequence length); a study enters a
sequence once (its first frontal image); a text encoder's word pieces stay separate tokens
(MedST sums Bio_ClinicalBERT's ``##`` pieces into words); the warm-up is per epoch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from holomodal.batch import Batch
from holomodal.methods.base import FiniteLossGuard, build_optimizer, clips_gradients, with_scheduler

CHECKPOINT_KEY = "holomodal_medst"
FORMAT_VERSION = 1
LOSS_WEIGHTS = {"global": 1.0, "local": 1.0, "temporal": 1.0}
DEFAULT_IMAGE = {"model_name": "vit_tiny_patch16_224", "pretrained": False}
DEFAULT_TEXT = {"hidden_size": 64, "layers": 2, "heads": 2, "intermediate_size": 128}


def read_medst_run(path: str | Path, *, weights: bool = False) -> dict[str, Any]:
    """The record of a MedST pre-training run folder or checkpoint (columns, model options,
    input specs, preprocessing), with ``weights`` also its ``state_dict``; no code unpickled."""
    from holomodal.safe_load import checkpoint_weights, run_checkpoint_record

    p, ckpt, record = run_checkpoint_record(path, CHECKPOINT_KEY, "MedST pre-training", "medst")
    if weights:
        record["state_dict"] = checkpoint_weights(p, ckpt)
    return record


def load_medst(path: str | Path) -> "MedSTPretraining":
    """A pre-trained MedST model in eval mode, its weights loaded strictly."""
    record = read_medst_run(path, weights=True)
    # the weights are the checkpoint's: nothing to fetch when the encoders are rebuilt
    model = {**record["model"], "image": {**record["model"]["image"], "pretrained": False}}
    module = MedSTPretraining(record["input_specs"], record["frontal"], record["lateral"], record["text"], model=model,
                              optim=record["optim"], preprocessor=record["preprocessor"])
    module.load_state_dict(record["state_dict"], strict=True)
    return module.eval()


class GlobalEmbedding(nn.Module):
    """Linear - BatchNorm - ReLU - Linear - BatchNorm (no affine), MGCA's projection head."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                                    nn.Linear(hidden_dim, out_dim), nn.BatchNorm1d(out_dim, affine=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class LocalEmbedding(nn.Module):
    """The same head applied to every token (1x1 convolutions over the token axis)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Conv1d(in_dim, hidden_dim, 1), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                                    nn.Conv1d(hidden_dim, out_dim, 1), nn.BatchNorm1d(out_dim, affine=False))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.layers(tokens.transpose(1, 2)).transpose(1, 2)


def sequence_tensors(rows: Tensor, sequence: Tensor, position: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Rows (B, D) placed as (S, length, D) by their sequence number and position, with the
    (S, length) mask of the places that hold a study; rows of no sequence (-1) are left out."""
    inside = sequence >= 0
    n = int(sequence.max().item()) + 1 if bool(inside.any()) else 0
    out = rows.new_zeros((n, length, rows.shape[-1]))
    valid = torch.zeros((n, length), dtype=torch.bool, device=rows.device)
    keep = inside & (position < length)
    out = out.index_put((sequence[keep], position[keep]), rows[keep])
    valid[sequence[keep], position[keep]] = True
    return out, valid


class MedSTPretraining(FiniteLossGuard, nn.Module):
    """Args:
        input_specs: the fitted preprocessor's (image statistics, the text vocabulary).
        frontal, lateral, text: the study-level columns (see :mod:`holomodal.studies`).
        model: ``image`` (MultiViewViT options: ``model_name``, ``pretrained``), ``text``
            (TextTransformer options, e.g. ``pretrained: emilyalsentzer/Bio_ClinicalBERT``
            with data tokenised by its tokenizer), ``embed_dim`` (128), ``hidden_dim`` of the
            heads (2048), ``loss_weights``, ``temperatures`` ({global: 0.07, local: 0.1,
            temporal: 0.1}), ``sequence_length`` (4), ``bidirectional`` local loss (true).
        optim: AdamW (lr 4e-5, weight decay 0.05), warm-up over 40 % of the epochs, cosine.
    """

    def __init__(self, input_specs: dict[str, dict[str, Any]], frontal: str, lateral: str, text: str,
                 model: dict[str, Any] | None = None, optim: dict[str, Any] | None = None,
                 preprocessor: dict[str, Any] | None = None) -> None:
        super().__init__()
        from holomodal.encoders.multiview_vit import MultiViewViT
        from holomodal.encoders.text import TextTransformer
        from holomodal.losses.medst import GlobalAlignmentLoss, ModalityWeightedLocalAlignment, TemporalCycleConsistencyLoss

        model = dict(model or {})
        spec = input_specs[frontal]
        self.frontal, self.lateral, self.text = frontal, lateral, text
        self.image_cfg = {**DEFAULT_IMAGE, "img_size": int(spec["size"]), **(model.get("image") or {})}
        self.text_cfg = {**DEFAULT_TEXT, **(model.get("text") or {})}
        self.image_encoder = MultiViewViT(**self.image_cfg)
        self.text_encoder = TextTransformer(input_specs[text], pooling="cls", **self.text_cfg)
        dim, hidden = int(model.get("embed_dim", 128)), int(model.get("hidden_dim", 2048))
        width, text_width = self.image_encoder.output_dim, self.text_encoder.output_dim
        self.image_global, self.text_global = GlobalEmbedding(width, hidden, dim), GlobalEmbedding(text_width, hidden, dim)
        self.image_local, self.text_local = LocalEmbedding(width, hidden, dim), LocalEmbedding(text_width, hidden, dim)
        temps = {"global": 0.07, "local": 0.1, "temporal": 0.1, **(model.get("temperatures") or {})}
        self.global_loss = GlobalAlignmentLoss(temps["global"])
        self.local_loss = ModalityWeightedLocalAlignment(dim, temps["local"], bool(model.get("bidirectional", True)))
        self.temporal_loss = TemporalCycleConsistencyLoss(temps["temporal"])
        self.loss_weights = {**LOSS_WEIGHTS, **(model.get("loss_weights") or {})}
        self.sequence_length = int(model.get("sequence_length", 4))
        channels = int(spec.get("channels", 3))
        mean = torch.tensor(spec.get("mean") or [0.5] * channels, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(spec.get("std") or [0.5] * channels, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self.optim_cfg = {"name": "adamw", "lr": 4e-5, "weight_decay": 0.05, "betas": (0.9, 0.999),
                          "scheduler": "warmup_cosine", "warmup_fraction": 0.4, **(optim or {})}
        self.record = {"format_version": FORMAT_VERSION, "frontal": frontal, "lateral": lateral, "text": text,
                       "model": {**model, "image": self.image_cfg, "text": self.text_cfg, "embed_dim": dim,
                                 "hidden_dim": hidden, "temperatures": temps, "loss_weights": self.loss_weights,
                                 "sequence_length": self.sequence_length},
                       "input_specs": input_specs, "optim": self.optim_cfg, "preprocessor": preprocessor}

    @property
    def phase_name(self) -> str:
        return "MedST pre-training on image-report studies over time"

    def pixels(self, batch: Batch, column: str) -> Tensor:
        x = (batch.inputs[column]["pixels"].float() / 255.0 - self.pixel_mean) / self.pixel_std
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # grey X-rays as RGB, as MedST reads them

    def encode_images(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        lateral_present = batch.present[self.lateral]
        cls, tokens, valid = self.image_encoder(self.pixels(batch, self.frontal), self.pixels(batch, self.lateral),
                                                lateral_present)
        return cls, tokens, valid

    def encode_reports(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        states, _ = self.text_encoder.forward_tokens(batch.inputs[self.text], batch.present[self.text])
        words = states[:, 1:]
        # the words sit between the first ([CLS]) and the last ([SEP]) token of each text
        length = batch.inputs[self.text]["attention_mask"].sum(dim=1)
        slots = torch.arange(words.shape[1], device=words.device)
        word_valid = (slots[None, :] < (length - 2)[:, None]) & batch.present[self.text][:, None]
        return states[:, 0], words, word_valid

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        cls, patches, patch_valid = self.encode_images(batch)
        report, words, word_valid = self.encode_reports(batch)
        image = F.normalize(self.image_global(cls), dim=-1)
        text = F.normalize(self.text_global(report), dim=-1)
        local = self.local_loss(F.normalize(self.text_local(words), dim=-1), word_valid,
                                F.normalize(self.image_local(patches), dim=-1), patch_valid)
        out = {"global": self.global_loss(image, text), "local": local["loss"]}
        if "sequence" in batch.extras:
            seq_images, valid = sequence_tensors(image, batch.extras["sequence"], batch.extras["position"], self.sequence_length)
            seq_texts, _ = sequence_tensors(text, batch.extras["sequence"], batch.extras["position"], self.sequence_length)
            temporal = self.temporal_loss(seq_images, seq_texts, valid)
            out.update(temporal=temporal["loss"], fmc=temporal["fmc"], rmr=temporal["rmr"])
        else:
            out["temporal"] = image.sum() * 0.0
        out["loss"] = sum(self.loss_weights[k] * out[k] for k in LOSS_WEIGHTS)
        return out

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        values = self.losses(batch)
        for name, value in values.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, prog_bar=name == "loss", batch_size=len(batch))
        return self.watch_loss(values["loss"])

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if len(batch) < 2:
            return
        for name, value in self.losses(batch).items():
            self.log(f"val/{name}", value, on_step=False, on_epoch=True, prog_bar=name == "loss", batch_size=len(batch))

    def configure_optimizers(self) -> Any:
        cfg = dict(self.optim_cfg)
        scheduler = cfg.pop("scheduler", "warmup_cosine")
        fraction = float(cfg.pop("warmup_fraction", 0.4))
        trainer = getattr(self, "_trainer", None)  # a plain module (not Lightning's form) has none
        epochs = int(trainer.max_epochs or 1) if trainer is not None else 1
        warmup = int(cfg.pop("warmup_epochs", math.floor(fraction * epochs)))
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, **cfg, fused=not clips_gradients(self))
        return with_scheduler(optimizer, trainer, scheduler, warmup_epochs=warmup,
                              warmup_fraction=fraction)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = json.dumps(self.record)
