"""What every classification method shares: loss, metrics, optimiser, prediction.

A method is a torch module that composes encoders, a fusion module and a head; a subclass
implements :meth:`forward` (``Batch -> logits``) and may override :meth:`training_loss`.
It holds the Lightning hooks (``training_step``, ``configure_optimizers``, ...), and
:func:`lightning_class` makes its LightningModule form, which training hands to a
``lightning.Trainer``. A model rebuilt to predict is the plain module: predicting imports
neither Lightning nor torchmetrics, whose imports cost several CPU-seconds.
"""

from __future__ import annotations

import inspect
import math
import sys
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from holomodal.batch import Batch
from holomodal.errors import ConfigError, DataError
from holomodal.schema import Task

if TYPE_CHECKING:
    import torchmetrics

# encoder used for a modality type when the configuration names none
DEFAULT_ENCODERS = {
    "tabular": {"name": "tabular_mlp"},
    "image": {"name": "timm", "model_name": "resnet18", "pretrained": "auto"},
    "text": {"name": "text_transformer"},
    "audio": {"name": "audio_cnn"},
    "timeseries": {"name": "gru"},
}
# Below this many training rows a ResNet-18 trained from scratch overfits before it learns
# (0.47 accuracy on 374 rows where trees on the table reach 0.73): the default image encoder
# is then ResNet-10-T, a third of the parameters, pretrained when timm's cache has it.
SMALL_DATA_ROWS = 2000
SMALL_DATA_ENCODERS = {"image": {"name": "timm", "model_name": "resnet10t", "pretrained": "auto"}}


def build_optimizer(params: Any, name: str = "adam", *, fused: bool = True, **options: Any) -> torch.optim.Optimizer:
    """An optimiser by name (adamw, adam, sgd, rmsprop). Adam/AdamW are fused (one kernel over
    all parameters instead of a loop over tensors: 3.5x faster steps on a CPU, fewer kernel
    launches on a GPU; torch's fused kernels exist for both devices) unless ``fused`` is False:
    Lightning's mixed precision refuses to clip the gradients of a fused optimiser, which
    unscales them inside its own step (see :func:`clips_gradients`)."""
    name = name.lower()
    if name in ("adam", "adamw"):
        return (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(params, **options, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(params, **options)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, **options)
    raise ConfigError(f"unknown optimiser '{name}' (adamw, adam, sgd, rmsprop)")


def clips_gradients(module: Any) -> bool:
    """The trainer running ``module`` clips gradients (``trainer.gradient_clip_val``), or the
    module clips its own (a ``gradient_clip_norm`` that is not None, as I2M2's joint stage)."""
    trainer = getattr(module, "_trainer", None)
    return bool(trainer is not None and trainer.gradient_clip_val) or getattr(module, "gradient_clip_norm", None) is not None


def warmup_cosine(epoch: int, warmup: int, total: int) -> float:
    """LR factor: linear warm-up over ``warmup`` epochs, then cosine to 0 at ``total``.

    TIP's scheduler trains epoch 0 at LR 0; here epoch e of the warm-up uses (e+1)/warmup,
    so no epoch is spent on a no-op."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    span = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(epoch - warmup, span) / span))


@dataclass
class ModelContext:
    """What a method needs to know about the data, derived from the fitted preprocessor."""

    input_specs: dict[str, dict[str, Any]]
    modality_types: dict[str, str]
    num_classes: int
    task: str
    class_names: list[str] = field(default_factory=list)
    # rows of the training split, when known: small data sets get smaller default encoders
    train_rows: int | None = None
    # (mean, std) of a regression label on the training split: the model works on the
    # standardised label, its logged errors are in the label's own units
    label_scale: tuple[float, float] | None = None
    # unlabelled rows a semi-supervised method trains on beside the ``train_rows`` labelled ones
    unlabelled_rows: int | None = None

    @property
    def modalities(self) -> list[str]:
        return list(self.input_specs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_specs": self.input_specs, "modality_types": self.modality_types,
            "num_classes": self.num_classes, "task": self.task, "class_names": self.class_names,
            "train_rows": self.train_rows, "label_scale": None if self.label_scale is None else list(self.label_scale),
            "unlabelled_rows": self.unlabelled_rows,
        }


def default_encoder(modality_type: str, train_rows: int | None = None) -> dict[str, Any]:
    """The encoder configuration used for a modality type that the configuration leaves out."""
    if train_rows is not None and train_rows < SMALL_DATA_ROWS and modality_type in SMALL_DATA_ENCODERS:
        return dict(SMALL_DATA_ENCODERS[modality_type])
    return dict(DEFAULT_ENCODERS[modality_type])


def resolve_encoders(context: ModelContext, config: dict[str, Any] | None, modalities: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Every modality's encoder configuration, by modality name: the one the configuration
    gives (by modality name, else by modality type), else the default. This is what a run
    records, so that a run folder says which encoders the defaults chose."""
    config = config or {}
    out = {}
    for m in modalities or context.modalities:
        kind = context.modality_types[m]
        chosen = config.get(m) or config.get(kind)
        out[m] = dict(chosen) if chosen else default_encoder(kind, context.train_rows)
    return out


def build_encoders(context: ModelContext, config: dict[str, Any] | None, modalities: list[str] | None = None) -> nn.ModuleDict:
    from holomodal.encoders import create_encoder

    encoders = nn.ModuleDict()
    for m, cfg in resolve_encoders(context, config, modalities).items():
        name = cfg.pop("name")
        encoders[m] = create_encoder(name, context.input_specs[m], **cfg)
    return encoders


def mlp_head(in_dim: int, out_dim: int, hidden: int | None = None, dropout: float = 0.0) -> nn.Module:
    if not hidden:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))


# task name of a continuous target (the schema's Task.REGRESSION); methods predict one value
REGRESSION = "regression"


def make_metrics(task: str, num_classes: int) -> torchmetrics.MetricCollection:
    import torchmetrics

    if task == REGRESSION:
        return torchmetrics.MetricCollection(compute_groups=False, metrics={
            "rmse": torchmetrics.MeanSquaredError(squared=False),
            "mae": torchmetrics.MeanAbsoluteError(),
            "r2": torchmetrics.R2Score(),
        })
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
    if task == REGRESSION:
        return probs.reshape(-1).float(), target.reshape(-1).float()
    if task == Task.MULTILABEL.value:
        return probs, target.long()
    if task == Task.BINARY.value and name.split("/")[-1] in ("accuracy", "auroc", "auprc"):
        return probs[:, 1], target
    return probs, target


class UndefinedMetricWarning(UserWarning):
    """A metric the target of a split cannot define (e.g. AUROC with one class present)."""


class Scores(dict):
    """Metric values by name; ``undefined`` maps every metric the target cannot define (NaN
    here) to the reason."""

    def __init__(self, values: dict[str, float], undefined: dict[str, str]) -> None:
        super().__init__(values)
        self.undefined = undefined


def undefined_metrics(task: str, num_classes: int, target: Tensor, class_names: Sequence[str] = ()) -> dict[str, str]:
    """The metrics of ``task`` that ``target`` cannot define, with the reason. torchmetrics
    reports these as 0 (with a warning), which would read as a real, terrible score."""
    if task == REGRESSION:
        if len(target) < 2 or bool((target == target.reshape(-1)[0]).all()):
            return {"r2": f"the target is constant over its {len(target)} row(s), so R2 divides by zero"}
        return {}
    names = list(class_names) or [str(i) for i in range(num_classes)]
    if task == Task.MULTILABEL.value:
        positives = target.long().sum(dim=0).tolist()
        constant = [names[i] for i in range(num_classes) if positives[i] in (0, len(target))]
        no_positive = [names[i] for i in range(num_classes) if positives[i] == 0]
        out = {}
        if constant:
            out["auroc"] = f"label(s) {constant} are all positive or all negative in the target"
        if no_positive:
            out["auprc"] = f"label(s) {no_positive} have no positive row in the target"
        return out
    present = set(torch.unique(target).tolist())
    absent = [names[i] for i in range(num_classes) if i not in present]
    if not absent:
        return {}
    out = {"balanced_accuracy": f"class(es) {absent} are absent from the target, so their recall is undefined"}
    if task == Task.BINARY.value:
        if len(present) < 2:
            out["auroc"] = f"the target holds the single class {names[min(present)]!r} ({len(target)} row(s))"
        if 1 not in present:
            out["auprc"] = f"the target holds no row of the positive class {names[1]!r}"
    else:
        out["auroc"] = f"class(es) {absent} are absent from the target, so their one-vs-rest AUROC is undefined"
    return out


def compute_metrics(
    task: str, num_classes: int, probs: Tensor, target: Tensor, *,
    metrics: torchmetrics.MetricCollection | None = None, class_names: Sequence[str] = (),
) -> Scores:
    """The metrics of ``task`` on finite probabilities; an undefined one is NaN, its reason
    in ``Scores.undefined`` and an :class:`UndefinedMetricWarning`. ``metrics`` is a
    collection to reuse (reset here), as a bootstrap does."""
    metrics = make_metrics(task, num_classes) if metrics is None else metrics
    undefined = undefined_metrics(task, num_classes, target, class_names)
    out = {}
    for name, metric in metrics.items():
        if name.split("/")[-1] in undefined:
            out[name] = float("nan")
            continue
        metric.reset()
        metric.update(*metric_args(task, name, probs, target))
        out[name] = float(metric.compute())
    reported = {name: why for name, why in undefined.items() if name in out}
    if reported:
        warnings.warn("undefined on this split, reported as NaN: " + "; ".join(f"{k}: {v}" for k, v in reported.items()),
                      UndefinedMetricWarning, stacklevel=2)
    return Scores(out, reported)


class FiniteLossGuard:
    """Stops training with a clear error once the loss is NaN or infinite.

    Reading the loss on the host every step would stall the device, so each step ANDs
    ``isfinite(loss)`` into a device-side flag (and keeps the first bad epoch and step on the
    device too); the flag is read every ``log_every_n_steps`` steps and at the end of every
    epoch, before validation and checkpointing, so the checkpoints of earlier epochs are
    never replaced by diverged weights. Mixed into a module ahead of ``nn.Module``; the hooks
    run in the module's :func:`lightning_class` form.
    """

    _loss_finite: Tensor | None = None
    _bad_epoch: Tensor | None = None
    _bad_step: Tensor | None = None

    def watch_loss(self, loss: Tensor) -> Tensor:
        """Record whether ``loss`` is finite, on its device; returns it unchanged."""
        ok = torch.isfinite(loss.detach()).all()
        if self._loss_finite is None or self._loss_finite.device != ok.device:
            self._loss_finite = torch.ones((), dtype=torch.bool, device=ok.device)
            self._bad_epoch = self._bad_step = torch.full((), -1, dtype=torch.long, device=ok.device)
        trainer = self.trainer  # type: ignore[attr-defined]
        newly = self._loss_finite & ~ok
        self._bad_epoch = torch.where(newly, trainer.current_epoch, self._bad_epoch)
        self._bad_step = torch.where(newly, trainer.global_step, self._bad_step)
        self._loss_finite &= ok
        return loss

    def check_loss_finite(self) -> None:
        if self._loss_finite is None:
            return
        trainer = self.trainer  # type: ignore[attr-defined]
        # every process decides together, so that under DDP none is left waiting in a collective
        if trainer.strategy.reduce_boolean_decision(bool(self._loss_finite.item()), all=True):
            return
        epoch, step = int(self._bad_epoch), int(self._bad_step)
        where = f"at epoch {epoch} (step {step})" if epoch >= 0 else "on another process"
        lr = getattr(self, "optim_cfg", {}).get("lr")
        raise DataError(
            f"training loss became non-finite (NaN or inf) {where}: training diverged. Lower optim.lr"
            f"{f' (now {lr:g})' if isinstance(lr, (int, float)) else ''}, set trainer.gradient_clip_val, or check "
            "the inputs for extreme values; the run folder keeps the checkpoints of earlier epochs"
        )

    def on_train_start(self) -> None:
        self._loss_finite = None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        trainer = self.trainer  # type: ignore[attr-defined]
        if (batch_idx + 1) % max(int(trainer.log_every_n_steps), 1) == 0 or trainer.is_last_batch:
            self.check_loss_finite()

    def on_validation_start(self) -> None:
        self.check_loss_finite()

    def on_train_epoch_end(self) -> None:
        self.check_loss_finite()


def is_lightning(module: Any) -> bool:
    """``module`` is a LightningModule; False without importing Lightning when nothing has."""
    lightning = sys.modules.get("lightning")
    return lightning is not None and isinstance(module, lightning.LightningModule)


# plain module class -> its LightningModule form, made once so that a patch of the plain
# class (or of its form) holds for every model of the method
_LIGHTNING_FORMS: dict[type, type] = {}


def _new_lightning_form(plain: type) -> Any:
    form = lightning_class(plain)
    return form.__new__(form)


def _reduce_lightning_form(self: Any, protocol: int) -> Any:
    # the form is made at run time, so a pickle names the plain class and re-makes the form
    _, _, *rest = object.__reduce_ex__(self, protocol)
    return (_new_lightning_form, (type(self)._plain_class,), *rest)


def lightning_class(cls: type) -> type:
    """The LightningModule form of the module class ``cls``: a subclass of ``cls`` and of
    ``lightning.LightningModule`` (in that order, so the method's hooks win), with the same
    name, so that ``isinstance(model, cls)`` holds and the weights' keys are the same.
    ``cls`` itself when it is a LightningModule already or no module (classical methods)."""
    import lightning as L

    if not isinstance(cls, type) or not issubclass(cls, nn.Module) or issubclass(cls, L.LightningModule):
        return cls
    form = _LIGHTNING_FORMS.get(cls)
    if form is None:
        form = type(cls.__name__, (cls, L.LightningModule), {
            "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__,
            "__reduce_ex__": _reduce_lightning_form, "_plain_class": cls,
        })
        _LIGHTNING_FORMS[cls] = form
    return form


class ClassificationMethod(FiniteLossGuard, nn.Module):
    def __init__(self, context: ModelContext, optim: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.context = context
        self.task = context.task
        self.optim_cfg = {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4, **(optim or {})}
        if is_lightning(self):  # only a training run logs metrics; predicting needs no torchmetrics
            metrics = make_metrics(context.task, context.num_classes)
            self.val_metrics = metrics.clone(prefix="val/")
            self.test_metrics = metrics.clone(prefix="test/")

    @classmethod
    def resolve_options(cls, context: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` with the defaults this method would fill in written out (its encoders,
        by modality name), so that a run's record says what was built. A method with other
        defaults overrides this."""
        if "encoders" not in inspect.signature(cls.__init__).parameters:
            return dict(options)
        return {**options, "encoders": resolve_encoders(context, options.get("encoders"))}

    # ---- to implement ------------------------------------------------------------------
    def forward(self, batch: Batch) -> Tensor:  # logits (B, num_classes)
        raise NotImplementedError

    # ---- shared ------------------------------------------------------------------------
    @property
    def is_regression(self) -> bool:
        return self.task == REGRESSION

    def loss_from_logits(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.is_regression:  # the target is standardised on the training split
            return F.mse_loss(logits.float().reshape(-1), target.float().reshape(-1))
        if self.task == Task.MULTILABEL.value:
            return F.binary_cross_entropy_with_logits(logits, target.float())
        return F.cross_entropy(logits, target)

    def probabilities(self, logits: Tensor) -> Tensor:
        """Class probabilities; for regression the predicted (standardised) value, (B, 1)."""
        if self.is_regression:
            return logits.float().reshape(-1, 1)
        if self.task == Task.MULTILABEL.value:
            return torch.sigmoid(logits)
        return torch.softmax(logits.float(), dim=-1)

    def training_loss(self, batch: Batch) -> Tensor:
        return self.loss_from_logits(self(batch), batch.target)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = self.watch_loss(self.training_loss(batch))
        # logged as a tensor: Lightning reduces it at the end of the epoch, no sync per step
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch))
        return loss

    def _update_metrics(self, metrics: torchmetrics.MetricCollection, batch: Batch, prefix: str) -> None:
        logits = self(batch)
        self.log(f"{prefix}/loss", self.loss_from_logits(logits, batch.target), on_epoch=True, batch_size=len(batch))
        probs, target = self.probabilities(logits), batch.target
        if self.is_regression and self.context.label_scale is not None:
            mean, std = self.context.label_scale
            probs, target = probs * std + mean, target.float() * std + mean
        for name, metric in metrics.items():
            metric.update(*metric_args(self.task, name, probs, target))
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
        warmup = {k: cfg.pop(k) for k in ("warmup_epochs", "warmup_fraction") if k in cfg}
        optimizer = build_optimizer(self.parameter_groups(), **cfg, fused=not clips_gradients(self))
        return with_scheduler(optimizer, self.trainer, scheduler, **warmup)


SCHEDULERS = ("cosine", "warmup_cosine", "warmup_linear", "none")


def with_scheduler(opt: torch.optim.Optimizer, trainer: Any, scheduler: str | None, *, warmup_epochs: int = 10,
                   warmup_fraction: float = 0.1) -> Any:
    """``opt`` with a learning-rate schedule over the run, in Lightning's return format:

    * ``cosine``: cosine annealing to 0 over the epochs;
    * ``warmup_cosine``: ``warmup_epochs`` of linear warm-up, then cosine (STiL's, TIP's), per epoch;
    * ``warmup_linear``: linear warm-up over ``warmup_fraction`` of the optimisation steps, then
      linear decay to 0 at the last step (DCP's and MMP's), per step;
    * ``none`` / None: a constant rate."""
    if trainer is None or not trainer.max_epochs or scheduler in (None, "none"):
        return opt
    total = int(trainer.max_epochs)
    if scheduler == "cosine":
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)}
    if scheduler == "warmup_cosine":
        warmup = min(int(warmup_epochs), max(total - 1, 0))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: warmup_cosine(e, warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
    if scheduler == "warmup_linear":
        steps = max(int(trainer.estimated_stepping_batches), 1)
        warmup = int(round(float(warmup_fraction) * steps))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (steps - step) / max(steps - warmup, 1))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
    raise ConfigError(f"optim.scheduler must be one of {', '.join(SCHEDULERS)}, not '{scheduler}'")
