"""What every semi-supervised method shares: two loaders, a teacher, pseudo-label records.

A semi-supervised method trains on a few labelled rows and many unlabelled ones. Each
training step receives ``{"labelled": Batch, "unlabelled": Batch}`` from
:func:`holomodal.loading.semi_supervised_loader` (Lightning's ``CombinedLoader``, 1
labelled : 7 unlabelled rows, an epoch one pass over the unlabelled rows). A subclass
implements :meth:`SemiSupervisedMethod.semi_supervised_step`, which returns the loss, its
named terms and the pseudo-labels it used; the base logs them, and, in a run whose hidden
labels are known (``data.label_fraction``), how often the confident pseudo-labels are
right. The hidden labels travel beside the unlabelled batch and are removed before the
method sees it: no method can train on them.

Validation, testing and prediction are the supervised ones: ``forward`` gives the logits
of the classifier used at inference.

Shared pieces: the EMA teacher (:func:`make_teacher`, :func:`ema_update`: EMAN, buffers
included), the soft-target cross-entropy, distribution alignment, the encoders' tokens
(:func:`encode_tokens`) and the baselines' concat network (:class:`ConcatNetwork`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from holomodal.batch import Batch
from holomodal.errors import ConfigError
from holomodal.losses.itc import ProjectionHead
from holomodal.methods.base import ClassificationMethod, ModelContext, build_encoders
from holomodal.methods.semi_supervised.views import ViewMaker
from holomodal.schema import Task

LABELLED, UNLABELLED = "labelled", "unlabelled"
# the hidden labels of a label_fraction run, beside the unlabelled rows (-1: unknown)
HIDDEN_TARGET = "hidden_target"
SEMI_SUPERVISED_TASKS = (Task.BINARY.value, Task.MULTICLASS.value)


@dataclass
class PseudoLabels:
    """The pseudo-labels of one step's unlabelled rows.

    ``labels`` (B_u,) hard labels; ``confident`` (B_u,) bool, the rows whose pseudo-label
    trains the model this step; ``cases`` named (B_u,) bool masks (STiL's consensus cases)
    whose shares are logged."""

    labels: Tensor
    confident: Tensor
    cases: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class StepResult:
    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    pseudo: PseudoLabels | None = None


class SemiSupervisedMethod(ClassificationMethod):
    """Base of the semi-supervised methods (``semi_supervised = True``: the estimator gives
    them the two-loader batches).

    Args:
        start_epoch: pseudo-labels train the model only in epochs after this one (epochs
            count from 0; STiL: 35 on DVM, 8 on cardiac data; its baselines 10 / 8).
        unlabelled_ratio: unlabelled rows per labelled row in a batch (STiL: 7).
        views: :class:`~holomodal.methods.semi_supervised.views.ViewMaker` options
            (``image_preset``, ``natural_images``, ``corruption``).
    """

    semi_supervised = True
    # whether training without any unlabelled row is an error (it is, but for supervised_only)
    needs_unlabelled = True

    def __init__(self, context: ModelContext, optim: dict[str, Any] | None = None, start_epoch: int = 10,
                 unlabelled_ratio: int = 7, views: dict[str, Any] | None = None) -> None:
        if context.task not in SEMI_SUPERVISED_TASKS:
            raise ConfigError(f"semi-supervised methods classify (binary or multiclass labels); this label is "
                              f"{context.task}: use a supervised method")
        super().__init__(context, optim)
        if int(start_epoch) < 0 or int(unlabelled_ratio) < 1:
            raise ConfigError(f"start_epoch must be >= 0 and unlabelled_ratio >= 1, got {start_epoch} and {unlabelled_ratio}")
        self.start_epoch = int(start_epoch)
        self.unlabelled_ratio = int(unlabelled_ratio)
        self.views = ViewMaker(context.modality_types, **(views or {}))

    # ---- to implement ------------------------------------------------------------------
    def semi_supervised_step(self, labelled: Batch, unlabelled: Batch) -> StepResult:
        raise NotImplementedError

    def forward(self, batch: Batch) -> Tensor:
        """The logits of the classifier used at inference: every method keeps its student
        network in ``self.network``, whose output has ``logits``."""
        return self.network(batch).logits

    # ---- shared ------------------------------------------------------------------------
    @property
    def pseudo_labels_on(self) -> bool:
        """Past the warm-up: pseudo-label losses count from epoch ``start_epoch + 1`` on."""
        return self.current_epoch > self.start_epoch

    @property
    def repeat_ratio(self) -> int:
        """About how often each labelled row is seen per epoch (STiL's ``repeat_ratio``)."""
        from holomodal.loading import repeat_ratio

        return repeat_ratio(self.context.train_rows or 1, self.context.unlabelled_rows or 0, self.unlabelled_ratio)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if not isinstance(batch, dict):  # a plain loader: there are no unlabelled rows
            if self.needs_unlabelled:
                raise ConfigError(f"{type(self).__name__} trains on labelled and unlabelled rows: give unlabelled rows "
                                  "(rows with an empty label, fit(..., unlabeled=table) or data.label_fraction)")
            batch = {LABELLED: batch, UNLABELLED: batch.select([])}
        labelled, unlabelled = batch[LABELLED], batch[UNLABELLED]
        hidden = unlabelled.extras.get(HIDDEN_TARGET)
        unlabelled = replace(unlabelled, target=None,
                             extras={k: v for k, v in unlabelled.extras.items() if k != HIDDEN_TARGET})
        result = self.semi_supervised_step(labelled, unlabelled)
        n = len(labelled) + len(unlabelled)
        self.log("train/loss", result.loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        for name, value in result.terms.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=n)
        if result.pseudo is not None:
            self.log_pseudo_labels(result.pseudo, hidden)
        return self.watch_loss(result.loss)

    def log_pseudo_labels(self, pseudo: PseudoLabels, hidden: Tensor | None) -> None:
        """Per epoch: the share of unlabelled rows with a confident pseudo-label, the share of
        each case, and, where the hidden label is known, the accuracy of the confident ones."""
        n = len(pseudo.labels)
        confident = pseudo.confident.float()
        self.log("pseudo/confident_share", confident.mean(), on_step=False, on_epoch=True, batch_size=n)
        for name, mask in pseudo.cases.items():
            self.log(f"pseudo/{name}_share", mask.float().mean(), on_step=False, on_epoch=True, batch_size=n)
        if hidden is None:
            return
        known = (hidden >= 0) & pseudo.confident
        count = int(known.sum())
        if count:  # weighted by the rows counted, so the epoch value is correct / confident
            correct = (pseudo.labels[known] == hidden[known]).float().mean()
            self.log("pseudo/accuracy", correct, on_step=False, on_epoch=True, batch_size=count)
        known_all = hidden >= 0
        if int(known_all.sum()):
            self.log("pseudo/accuracy_all", (pseudo.labels[known_all] == hidden[known_all]).float().mean(),
                     on_step=False, on_epoch=True, batch_size=int(known_all.sum()))

    def train(self, mode: bool = True) -> "SemiSupervisedMethod":
        super().train(mode)
        teacher = getattr(self, "teacher", None)
        if isinstance(teacher, nn.Module):  # an EMA teacher never trains: its batch norm stays frozen
            teacher.eval()
        return self


def gathered(module: SemiSupervisedMethod, tensor: Tensor) -> Tensor:
    """``tensor`` of every process, stacked along the rows, under DDP, so that a memory bank
    or queue written with it stays the same in every process; as it is otherwise."""
    trainer = getattr(module, "_trainer", None)  # the plain module, outside a training run, has none
    if trainer is None or trainer.world_size == 1:
        return tensor
    return module.all_gather(tensor).flatten(0, 1)


# ---- teacher -------------------------------------------------------------------------------
def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student``, always in eval mode (its batch norm and dropout off)."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """EMAN: every floating tensor of the state dict, buffers (batch-norm running statistics)
    included, ``t <- m t + (1 - m) s``; integer buffers (``num_batches_tracked``) copied."""
    student_state = student.state_dict()
    for name, t in teacher.state_dict().items():
        s = student_state[name].detach()
        if t.dtype.is_floating_point:
            t.mul_(momentum).add_(s.to(t.dtype), alpha=1.0 - momentum)
        else:
            t.copy_(s)


# ---- losses and pseudo-label helpers -------------------------------------------------------------
def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Per-row cross-entropy against a probability vector (B,)."""
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over all rows with the masked-out ones counting as zero (as STiL and FixMatch
    average: over B_u, not over the confident rows)."""
    if values.numel() == 0:
        return values.sum()
    return (values * mask.to(values.dtype)).mean()


class DistributionAlignment(nn.Module):
    """ReMixMatch's distribution alignment: probabilities rescaled by the ratio of a uniform
    class prior to the running mean of the model's predictions over the last ``history``
    steps, then renormalised (SimMatch: 256 steps, CoMatch: 128)."""

    def __init__(self, num_classes: int, history: int = 256) -> None:
        super().__init__()
        self.register_buffer("queue", torch.full((history, num_classes), 1.0 / num_classes))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def forward(self, probs: Tensor, update: bool = True) -> Tensor:
        if update:
            with torch.no_grad():
                self.queue[self.pointer] = probs.detach().float().mean(dim=0)
                self.pointer.copy_((self.pointer + 1) % self.queue.shape[0])
        aligned = probs / self.queue.mean(dim=0).clamp(min=1e-8)
        return aligned / aligned.sum(dim=1, keepdim=True)


# ---- networks --------------------------------------------------------------------------------
def encode_tokens(encoder: nn.Module, inputs: dict[str, Tensor], present: Tensor,
                  cell_missing: Tensor | None) -> tuple[Tensor, Tensor]:
    """An encoder's tokens (B, T, D) without a CLS token, and its summary vector (B, D): the
    CLS token for the tabular transformer, the pooled feature for an image or audio CNN, the
    final state for a GRU. An encoder without tokens gives its embedding as one token."""
    if hasattr(encoder, "forward_tokens"):
        tokens, summary = encoder.forward_tokens(inputs, present, cell_missing)
        if getattr(encoder, "cls_first", False):
            tokens = tokens[:, 1:]
        return tokens, summary
    embedding = encoder(inputs, present, cell_missing)
    return embedding[:, None], embedding


def check_two_modalities(context: ModelContext, modalities: list[str] | None, method: str) -> list[str]:
    """The two modalities a two-branch method uses: ``modalities``, else the data's two."""
    chosen = list(modalities or context.modalities)
    unknown = [m for m in chosen if m not in context.modalities]
    if unknown:
        raise ConfigError(f"{method}: model.modalities {unknown} are not modalities of the data ({context.modalities})")
    if len(chosen) != 2:
        raise ConfigError(f"{method} learns from two modalities; the data has {context.modalities}: name two with "
                          "model.modalities, e.g. [image, tabular]")
    return chosen


@dataclass
class NetworkOutput:
    logits: Tensor  # (B, C) the multimodal classifier
    unimodal: dict[str, Tensor]  # (B, C) per modality
    embedding: Tensor  # (B, projection_dim), L2-normalised
    present: dict[str, Tensor]


class ConcatNetwork(nn.Module):
    """The baselines' multimodal backbone (STiL repository, ``multimodal_backbone.py``),
    for any modalities: each encoder's summary vector projected to ``dim`` and concatenated
    (zeros where the modality is absent), a linear multimodal classifier, an embedding head
    (concat -> dim -> ``projection_dim``, L2-normalised) and one linear classifier per
    modality on its encoder's summary."""

    def __init__(self, context: ModelContext, encoders: dict[str, Any] | None = None, modalities: list[str] | None = None,
                 dim: int = 512, projection_dim: int = 128) -> None:
        super().__init__()
        self.modalities = list(modalities or context.modalities)
        self.encoders = build_encoders(context, encoders, self.modalities)
        self.projections = nn.ModuleDict({m: nn.Linear(e.output_dim, dim) for m, e in self.encoders.items()})
        width = dim * len(self.modalities)
        self.classifier = nn.Linear(width, context.num_classes)
        self.embedding_head = ProjectionHead(width, dim, projection_dim)
        self.unimodal_heads = nn.ModuleDict({m: nn.Linear(e.output_dim, context.num_classes) for m, e in self.encoders.items()})

    def forward(self, batch: Batch) -> NetworkOutput:
        parts, unimodal, present = [], {}, {}
        for m, enc in self.encoders.items():
            summary = enc(batch.inputs[m], batch.present[m], batch.cell_missing if m == "tabular" else None)
            present[m] = batch.present[m]
            unimodal[m] = self.unimodal_heads[m](summary)
            parts.append(self.projections[m](summary) * batch.present[m].view(-1, 1).to(summary.dtype))
        joint = torch.cat(parts, dim=1)
        return NetworkOutput(self.classifier(joint), unimodal, F.normalize(self.embedding_head(joint).float(), dim=-1), present)


def unimodal_cross_entropy(out: NetworkOutput, target: Tensor) -> Tensor:
    """The sum over modalities of each unimodal head's cross-entropy, over the rows where the
    modality is present."""
    total = out.logits.new_zeros(())
    for m, logits in out.unimodal.items():
        ce = F.cross_entropy(logits.float(), target, reduction="none")
        total = total + masked_mean(ce, out.present[m])
    return total


def is_semi_supervised(method_class: Any) -> bool:
    return bool(getattr(method_class, "semi_supervised", False))
