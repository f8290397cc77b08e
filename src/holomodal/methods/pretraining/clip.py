"""CLIP-style pre-training on a user's own image-text pairs.

The symmetric contrastive loss of CLIP (open_clip's ``ClipLoss``: cross-entropy over the
image-to-text and the text-to-image similarity rows of a batch) with the model's learned
temperature ``logit_scale``, from random or pretrained weights. It gives users without
downloadable weights, and the offline benchmarks, an aligned backbone for the prompt methods:
``model.backbone=runs/<this run>`` in ``mmp``, ``dcp``, ``clip_baseline``, ``clip_finetune``.

The checkpoint (``checkpoints/last.ckpt``) carries the backbone's record (architecture, no
weight source: the weights are the checkpoint's own) under :data:`CHECKPOINT_KEY`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from holomodal.backbones.clip import CLIPBackbone, CLIPInputs
from holomodal.batch import Batch
from holomodal.methods.base import FiniteLossGuard, build_optimizer, clips_gradients, with_scheduler

CHECKPOINT_KEY = "holomodal_clip"
FORMAT_VERSION = 1
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps its temperature at 1/100
BACKBONE_PREFIX = "backbone.model."


def read_clip_run(path: str | Path, *, weights: bool = False) -> dict[str, Any]:
    """The record of a CLIP pre-training run folder or checkpoint: ``backbone`` (the record
    :class:`CLIPBackbone` builds from), ``image``, ``text``, and with ``weights`` the
    open_clip model's ``backbone_state``. Read without unpickling code."""
    from holomodal.safe_load import checkpoint_weights, run_checkpoint_record

    p, ckpt, record = run_checkpoint_record(path, CHECKPOINT_KEY, "CLIP pre-training", "clip")
    if weights:
        state = checkpoint_weights(p, ckpt)
        record["backbone_state"] = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    return record


class CLIPPretraining(FiniteLossGuard, nn.Module):
    """Contrastive image-text pre-training of a :class:`CLIPBackbone`.

    Args:
        backbone: the resolved backbone record (weights: None, a tag, a file).
        image, text: the two columns paired.
        input_specs: the fitted preprocessor's, for the image statistics.
        optim: AdamW options; default CLIP's (lr 5e-4, betas (0.9, 0.98), eps 1e-6, weight
            decay 0.2 on matrices only), ``warmup_epochs`` of linear warm-up then cosine.
        preprocessor: the fitted preprocessor's state, kept in the checkpoint.
    """

    def __init__(self, backbone: dict[str, Any], image: str, text: str, input_specs: dict[str, dict[str, Any]],
                 optim: dict[str, Any] | None = None, preprocessor: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.backbone = CLIPBackbone(backbone)
        self.image, self.text = image, text
        spec = input_specs[image]
        self.inputs = CLIPInputs(spec["mean"], spec["std"])
        self.optim_cfg = {"name": "adamw", "lr": 5e-4, "weight_decay": 0.2, "betas": (0.9, 0.98), "eps": 1e-6,
                          "scheduler": "warmup_cosine", "warmup_epochs": 1, **(optim or {})}
        self.loss_fn: Any = None
        architecture = {k: v for k, v in backbone.items() if k != "weights"}
        self.record = {"format_version": FORMAT_VERSION, "backbone": {**architecture, "weights": None},
                       "initial_weights": backbone.get("weights"), "image": image, "text": text,
                       "optim": self.optim_cfg, "preprocessor": preprocessor}
        self._weights_loaded = False

    @property
    def phase_name(self) -> str:
        start = self.record["initial_weights"] or "random weights"
        return f"CLIP pre-training on image-text pairs, from {start}"

    def setup(self, stage: str) -> None:
        from open_clip.loss import ClipLoss

        # weights before Lightning restores a resumed run, which then overwrites them
        if stage == "fit" and not self._weights_loaded:
            self.backbone.load_weights()
            self._weights_loaded = True
        trainer = getattr(self, "_trainer", None)  # a plain module (not Lightning's form) has none
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        # across processes every image is contrasted with every process's texts
        self.loss_fn = ClipLoss(gather_with_grad=world > 1, rank=rank, world_size=world)

    def embeddings(self, batch: Batch) -> tuple[Tensor, Tensor]:
        pixels = self.inputs.pixels(batch.inputs[self.image]["pixels"], batch.present[self.image])
        ids = self.inputs.ids(batch.inputs[self.text]["input_ids"], batch.present[self.text])
        image = torch.nn.functional.normalize(self.backbone.encode_image(pixels).float(), dim=-1)
        text = torch.nn.functional.normalize(self.backbone.encode_text(ids).float(), dim=-1)
        return image, text

    def contrastive(self, batch: Batch) -> dict[str, Tensor]:
        from open_clip.loss import ClipLoss

        image, text = self.embeddings(batch)
        loss_fn = self.loss_fn or ClipLoss()
        scale = self.backbone.logit_scale.exp()
        loss = loss_fn(image, text, scale)
        with torch.no_grad():
            hits = (image @ text.T).argmax(dim=1) == torch.arange(len(image), device=image.device)
        return {"loss": loss, "retrieval_acc": hits.float().mean(), "temperature": 1.0 / scale.detach()}

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        values = self.contrastive(batch)
        for name, value in values.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, prog_bar=name == "loss", batch_size=len(batch))
        return self.watch_loss(values["loss"])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        with torch.no_grad():
            self.backbone.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if len(batch) < 2:
            return  # a last batch of one pair has nothing to contrast
        for name, value in self.contrastive(batch).items():
            self.log(f"val/{name}", value, on_step=False, on_epoch=True, prog_bar=name == "loss", batch_size=len(batch))

    def configure_optimizers(self) -> Any:
        cfg = dict(self.optim_cfg)
        scheduler = cfg.pop("scheduler", "warmup_cosine")
        warmup = int(cfg.pop("warmup_epochs", 1))
        decay = float(cfg.pop("weight_decay", 0.0))
        params = [p for p in self.parameters() if p.requires_grad]
        # CLIP decays matrices only: gains, biases, embeddings' scale and the temperature are left alone
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        optimizer = build_optimizer(groups, **cfg, fused=not clips_gradients(self))
        return with_scheduler(optimizer, self.trainer, scheduler, warmup_epochs=warmup)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = json.dumps(self.record)
