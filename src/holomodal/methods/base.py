"""What every classification method shares: loss, metrics, optimiser, prediction.

A method is a LightningModule that composes encoders, a fusion module and a head; a
subclass implements :meth:`forward` (``Batch -> logits``) and may override
:meth:`training_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn

from holomodal.batch import Batch
from holomodal.errors import ConfigError
from holomodal.schema import Task

# encoder used for a modality type when the configuration names none
DEFAULT_ENCODERS = {
    "tabular": {"name": "tabular_mlp"},
    "image": {"name": "timm", "model_name": "resnet18"},
    "text": {"name": "text_transformer"},
    "audio": {"name": "audio_cnn"},
    "timeseries": {"name": "gru"},
}


def build_optimizer(params: Any, name: str = "adam", **options: Any) -> torch.optim.Optimizer:
    """An optimiser by name (adamw, adam, sgd, rmsprop); Adam/AdamW fused on CUDA, one kernel
    per step instead of one launch per parameter tensor."""
    name = name.lower()
    if name in ("adam", "adamw"):
        fused = {"fused": True} if torch.cuda.is_available() else {}
        return (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(params, **options, **fused)
    if name == "sgd":
        return torch.optim.SGD(params, **options)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, **options)
    raise ConfigError(f"unknown optimiser '{name}' (adamw, adam, sgd, rmsprop)")


@dataclass
class ModelContext:
    """What a method needs to know about the data, derived from the fitted preprocessor."""

    input_specs: dict[str, dict[str, Any]]
    modality_types: dict[str, str]
    num_classes: int
    task: str
    class_names: list[str] = field(default_factory=list)

    @property
    def modalities(self) -> list[str]:
        return list(self.input_specs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_specs": self.input_specs, "modality_types": self.modality_types,
            "num_classes": self.num_classes, "task": self.task, "class_names": self.class_names,
        }


def build_encoders(context: ModelContext, config: dict[str, Any] | None, modalities: list[str] | None = None) -> nn.ModuleDict:
    from holomodal.encoders import create_encoder

    config = config or {}
    encoders = nn.ModuleDict()
    for m in modalities or context.modalities:
        cfg = dict(config.get(m) or config.get(context.modality_types[m]) or DEFAULT_ENCODERS[context.modality_types[m]])
        name = cfg.pop("name")
        encoders[m] = create_encoder(name, context.input_specs[m], **cfg)
    return encoders


def mlp_head(in_dim: int, out_dim: int, hidden: int | None = None, dropout: float = 0.0) -> nn.Module:
    if not hidden:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))


def make_metrics(task: str, num_classes: int) -> torchmetrics.MetricCollection:
    if task == Task.MULTILABEL.value:
        kw = {"task": "multilabel", "num_labels": num_classes}
        return torchmetrics.MetricCollection(compute_groups=False, metrics={
            "f1_macro": torchmetrics.F1Score(average="macro", **kw),
            "f1_micro": torchmetrics.F1Score(average="micro", **kw),
            "auroc": torchmetrics.AUROC(average="macro", **kw),
            "auprc": torchmetrics.AveragePrecision(average="macro", **kw),
        })
    if task == Task.BINARY.value:
        return torchmetrics.MetricCollection(compute_groups=False, metrics={
            "accuracy": torchmetrics.Accuracy(task="binary"),
            "balanced_accuracy": torchmetrics.Accuracy(task="multiclass", num_classes=2, average="macro"),
            "f1_macro": torchmetrics.F1Score(task="multiclass", num_classes=2, average="macro"),
            "auroc": torchmetrics.AUROC(task="binary"),
            "auprc": torchmetrics.AveragePrecision(task="binary"),
        })
    kw = {"task": "multiclass", "num_classes": num_classes}
    return torchmetrics.MetricCollection(compute_groups=False, metrics={
        "accuracy": torchmetrics.Accuracy(**kw),
        "balanced_accuracy": torchmetrics.Accuracy(average="macro", **kw),
        "f1_macro": torchmetrics.F1Score(average="macro", **kw),
        "auroc": torchmetrics.AUROC(average="macro", **kw),
    })


def metric_args(task: str, name: str, probs: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Adapt (probabilities, target) to the form metric ``name`` of ``task`` expects."""
    if task == Task.MULTILABEL.value:
        return probs, target.long()
    if task == Task.BINARY.value and name.split("/")[-1] in ("accuracy", "auroc", "auprc"):
        return probs[:, 1], target
    return probs, target


def compute_metrics(task: str, num_classes: int, probs: Tensor, target: Tensor) -> dict[str, float]:
    metrics = make_metrics(task, num_classes)
    out = {}
    for name, metric in metrics.items():
        metric.update(*metric_args(task, name, probs, target))
        out[name] = float(metric.compute())
    return out


class ClassificationMethod(L.LightningModule):
    def __init__(self, context: ModelContext, optim: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.context = context
        self.task = context.task
        self.optim_cfg = {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4, **(optim or {})}
        metrics = make_metrics(context.task, context.num_classes)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    # ---- to implement ------------------------------------------------------------------
    def forward(self, batch: Batch) -> Tensor:  # logits (B, num_classes)
        raise NotImplementedError

    # ---- shared ------------------------------------------------------------------------
    def loss_from_logits(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.task == Task.MULTILABEL.value:
            return F.binary_cross_entropy_with_logits(logits, target.float())
        return F.cross_entropy(logits, target)

    def probabilities(self, logits: Tensor) -> Tensor:
        if self.task == Task.MULTILABEL.value:
            return torch.sigmoid(logits)
        return torch.softmax(logits.float(), dim=-1)

    def training_loss(self, batch: Batch) -> Tensor:
        return self.loss_from_logits(self(batch), batch.target)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = self.training_loss(batch)
        # logged as a tensor: Lightning reduces it at the end of the epoch, no sync per step
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch))
        return loss

    def _update_metrics(self, metrics: torchmetrics.MetricCollection, batch: Batch, prefix: str) -> None:
        logits = self(batch)
        self.log(f"{prefix}/loss", self.loss_from_logits(logits, batch.target), on_epoch=True, batch_size=len(batch))
        probs = self.probabilities(logits)
        for name, metric in metrics.items():
            metric.update(*metric_args(self.task, name, probs, batch.target))
        self.log_dict(metrics, on_epoch=True, prog_bar=prefix == "val", batch_size=len(batch))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._update_metrics(self.val_metrics, batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._update_metrics(self.test_metrics, batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self.probabilities(self(batch))

    def parameter_groups(self) -> list[dict[str, Any]] | Any:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        cfg = dict(self.optim_cfg)
        scheduler = cfg.pop("scheduler", None)
        opt = build_optimizer(self.parameter_groups(), **cfg)
        if scheduler == "cosine" and self.trainer is not None and self.trainer.max_epochs:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.trainer.max_epochs)
            return {"optimizer": opt, "lr_scheduler": sched}
        return opt
