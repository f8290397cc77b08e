"""STiL (CVPR 2025): semi-supervised learning from two modalities (spec ``tip_stil.md`` 2).

For any two modalities a and b (image and table in the paper; image and audio, table and
series here too), per step on a batch of labelled and unlabelled rows:

**Network** (:class:`DisentangledNetwork`). Each modality's encoder gives tokens and a
summary vector (the tabular CLS, the pooled image). DCC splits each modality into
*specific* tokens ``S = MLP_s(tokens)`` and a *shared* vector ``a = MLP_a(summary)``; a
common token ``c = Linear([a_a; a_b])``. One MI-transformer layer with one set of weights
updates the three streams: ``S_a`` and ``S_b`` attend to themselves, ``c`` to ``[c; S_a;
S_b]``. Three classifiers: ``f_m([s_a; c; s_b])`` (s = mean of S), ``f_a([s_a; a_a])``,
``f_b([s_b; a_b])``. Inference uses ``f_m`` only.

**Losses.**
  (1) ``L_ce = CE(f_m) + CE(f_a) + CE(f_b)`` on the labelled rows.
  (2) ``L_itc``: CLIP loss between ``g_a(a_a)`` and ``g_b(a_b)`` (tau 0.1), all rows.
  (3) ``L_club = I_hat_a + L_est,a + I_hat_b + L_est,b``: CLUB between the mean specific
      tokens before the MI-transformer and the shared vector, per modality. ``club``
      chooses how: ``joint`` (default, STiL's code: all four terms in the one loss) or
      ``alternating`` (CLUB's scheme: the estimator learns only its likelihood, the
      encoders only the bound); see :mod:`holomodal.losses.club`.
  (4) CGPL: the EMA teacher's three classifiers vote on each unlabelled row
      (:func:`consensus_pseudo_labels`): all agree -> softmax of the mean of the three
      logits trains all heads; f_m agrees with one modality -> the mean of those two trains
      the dissenting modality's head only; otherwise softmax(f_m) trains one unimodal
      head, chosen by a fair coin per row.
  (5) PGLS: ``y~ = r q + (1 - r) pi`` with prototype scores ``pi = softmax(p P^T / tau)`` of
      the teacher's projected multimodal embedding ``p = norm(g_m([s_a; c; s_b]))``
      (teacher features, the student's ``g_m``); confidence ``kappa = max(r softmax(f_m^e)
      + (1 - r) pi)``, mask ``kappa >= threshold``; the unlabelled soft-target CE of each
      head is averaged over all unlabelled rows. Prototypes are rebuilt every epoch from
      the confident teacher embeddings (labelled rows with weight 1 / repeat_ratio), and
      ``L_pt`` aligns the student embeddings with them.
  Total: ``alpha L_ce + beta L_itc + gamma L_club``, plus ``rate_pt L_pt + rate_uce (L_u^m +
  L_u^a + L_u^b)`` after ``start_epoch``. Until then unlabelled rows neither train nor
  build prototypes (STiL zeroes their blended prediction).

The teacher is a copy of the network (not of g_*, nor of the CLUB estimators), updated
by EMAN (buffers included) before its forward pass, always in eval mode; teacher and
student see the same augmented view (``views.stil``: TIP's pre-training augmentation and
30 % table corruption).

Encoders start from a holomodal TIP pre-training run (``checkpoint``), as the paper
does, or from the encoders' own initialisation. Rows missing one of the two modalities
(holomodal's addition: STiL assumes both present) zero that modality's features before
``f_m``, mask its tokens from the common token, leave ITC and CLUB out for the row, never
train that modality's head on it, and take ``softmax(f_m)`` as pseudo-label with the
present modality's head as the learner.

Not copied from the original: the per-step ``torch.cuda.empty_cache()``, and the log entry
``PTloss`` that held the ITC loss (``train/pt`` here is L_pt).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from holomodal.batch import Batch
from holomodal.errors import ConfigError
from holomodal.losses import CLUBMean, ImageTabularContrastiveLoss, PrototypeBank, ProjectionHead, prototype_alignment_loss
from holomodal.methods import register_method
from holomodal.methods.base import ModelContext, build_encoders, resolve_encoders
from holomodal.methods.semi_supervised.base import (
    PseudoLabels, SemiSupervisedMethod, StepResult, check_two_modalities, ema_update, encode_tokens, make_teacher,
    masked_mean, soft_cross_entropy,
)

TABULAR = "tabular"
# STiL's tabular encoder is TIP's transformer: it gives a token per column and a CLS
DEFAULT_TABULAR_ENCODER = {"name": "tabular_transformer", "dim": 512, "depth": 4, "heads": 8}


# ---- the network -------------------------------------------------------------------------------
def mlp(in_dim: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Linear(dim, dim))


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth per sample: the residual branch dropped for a share ``rate`` of rows."""
    if rate <= 0 or not training:
        return x
    keep = (torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= rate).to(x.dtype)
    return x * keep / (1 - rate)


class MITransformerLayer(nn.Module):
    """One pre-LN layer shared by the three streams: self-attention within each specific
    stream, the common token attending to all tokens (absent modalities' tokens masked),
    then one MLP (ratio 1, GELU) on every stream."""

    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.1, path_drop: float = 0.1) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.projection_drop = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(path_drop), nn.Linear(dim, dim), nn.Dropout(path_drop))
        self.path_drop = path_drop

    def _attend(self, queries: Tensor, keys: Tensor, blocked: Tensor | None = None) -> Tensor:
        out = self.attention(queries, keys, keys, key_padding_mask=blocked, need_weights=False)[0]
        return drop_path(self.projection_drop(out), self.path_drop, self.training)

    def forward(self, s_a: Tensor, s_b: Tensor, common: Tensor, present_a: Tensor, present_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n_a, n_b = s_a.shape[1], s_b.shape[1]
        x_a, x_b, x_c = self.norm1(s_a), self.norm1(s_b), self.norm1(common)
        blocked = torch.cat([
            torch.zeros_like(present_a[:, None]), (~present_a)[:, None].expand(-1, n_a), (~present_b)[:, None].expand(-1, n_b),
        ], dim=1)
        s_a = s_a + self._attend(x_a, x_a)
        s_b = s_b + self._attend(x_b, x_b)
        common = common + self._attend(x_c, torch.cat([x_c, x_a, x_b], dim=1), blocked)
        outs = [x + drop_path(self.mlp(self.norm2(x)), self.path_drop, self.training) for x in (s_a, s_b, common)]
        return outs[0], outs[1], outs[2]


@dataclass
class DisentangledOutput:
    logits: Tensor  # f_m
    unimodal: dict[str, Tensor]  # f_a, f_b
    joint: Tensor  # [s_a; c; s_b], the input of f_m and g_m
    shared: dict[str, Tensor]  # a_a, a_b
    specific_before: dict[str, Tensor]  # mean of S before the MI-transformer (CLUB's x)
    present: dict[str, Tensor]


class DisentangledNetwork(nn.Module):
    """STiL's backbone (DCC, MI-transformer, three classifiers) for two modalities."""

    def __init__(self, context: ModelContext, modalities: list[str], encoders: dict[str, dict[str, Any]], dim: int = 512,
                 heads: int = 4, mi_layers: int = 1, dropout: float = 0.1, path_drop: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"stil: dim {dim} is not divisible by heads {heads}")
        self.modalities = list(modalities)
        self.encoders = build_encoders(context, copy.deepcopy(encoders), self.modalities)
        self.specific = nn.ModuleDict({m: mlp(getattr(e, "token_dim", e.output_dim), dim) for m, e in self.encoders.items()})
        self.shared = nn.ModuleDict({m: mlp(e.output_dim, dim) for m, e in self.encoders.items()})
        self.common = nn.Linear(2 * dim, dim)
        self.layers = nn.ModuleList(MITransformerLayer(dim, heads, dropout, path_drop) for _ in range(mi_layers))
        self.multimodal_head = nn.Linear(3 * dim, context.num_classes)
        self.unimodal_heads = nn.ModuleDict({m: nn.Linear(2 * dim, context.num_classes) for m in self.modalities})
        self.dim = dim

    def forward(self, batch: Batch) -> DisentangledOutput:
        a, b = self.modalities
        specific, shared, before, present = {}, {}, {}, {}
        for m in (a, b):
            tokens, summary = encode_tokens(self.encoders[m], batch.inputs[m], batch.present[m],
                                            batch.cell_missing if m == TABULAR else None)
            keep = batch.present[m].view(-1, 1).to(summary.dtype)
            specific[m] = self.specific[m](tokens)
            shared[m] = self.shared[m](summary) * keep
            before[m] = specific[m].mean(dim=1)
            present[m] = batch.present[m].bool()
        common = self.common(torch.cat([shared[a], shared[b]], dim=1))[:, None]
        s_a, s_b = specific[a], specific[b]
        for layer in self.layers:
            s_a, s_b, common = layer(s_a, s_b, common, present[a], present[b])
        pooled = {a: s_a.mean(dim=1) * present[a].view(-1, 1).to(s_a.dtype),
                  b: s_b.mean(dim=1) * present[b].view(-1, 1).to(s_b.dtype)}
        joint = torch.cat([pooled[a], common[:, 0], pooled[b]], dim=1)
        unimodal = {m: self.unimodal_heads[m](torch.cat([pooled[m], shared[m]], dim=1)) for m in (a, b)}
        return DisentangledOutput(self.multimodal_head(joint), unimodal, joint, shared, before, present)


# ---- consensus-guided pseudo-labels ----------------------------------------------------------------
@dataclass
class Consensus:
    target: Tensor  # (B, C) the consensus pseudo-label q
    learners: dict[str, Tensor]  # (B,) bool: which student heads learn from q ("multimodal", a, b)
    cases: dict[str, Tensor]  # (B,) bool per case


def consensus_pseudo_labels(logits_m: Tensor, logits_a: Tensor, logits_b: Tensor, names: tuple[str, str],
                            coin: Tensor, present_a: Tensor | None = None, present_b: Tensor | None = None) -> Consensus:
    """STiL's CGPL table. ``names`` (a, b) name the modalities; ``coin`` (B,) bool picks a's
    head in case 3 (b's otherwise). Rows missing a modality take softmax(f_m), which trains
    the present modality's head."""
    a, b = names
    y_m, y_a, y_b = logits_m.argmax(1), logits_a.argmax(1), logits_b.argmax(1)
    case1 = (y_m == y_a) & (y_a == y_b)
    agree_a = (y_m == y_a) & (y_a != y_b)  # b dissents: b learns
    agree_b = (y_m == y_b) & (y_b != y_a)  # a dissents: a learns
    case3 = ~(case1 | agree_a | agree_b)
    mean3 = torch.softmax((logits_m + logits_a + logits_b).float() / 3, dim=1)
    mean_a = torch.softmax((logits_m + logits_a).float() / 2, dim=1)
    mean_b = torch.softmax((logits_m + logits_b).float() / 2, dim=1)
    alone = torch.softmax(logits_m.float(), dim=1)
    target = torch.where(case1[:, None], mean3, torch.where(agree_a[:, None], mean_a, torch.where(agree_b[:, None], mean_b, alone)))
    learners = {"multimodal": case1, a: case1 | agree_b | (case3 & coin), b: case1 | agree_a | (case3 & ~coin)}
    cases = {"case1": case1, f"case2_{a}": agree_a, f"case2_{b}": agree_b, "case3": case3}
    if present_a is not None and present_b is not None:
        incomplete = ~(present_a & present_b)
        target = torch.where(incomplete[:, None], alone, target)
        learners = {"multimodal": learners["multimodal"] & ~incomplete,
                    a: torch.where(incomplete, present_a, learners[a]), b: torch.where(incomplete, present_b, learners[b])}
        cases = {k: v & ~incomplete for k, v in cases.items()}
        cases["incomplete"] = incomplete
    return Consensus(target, learners, cases)


def smoothed_pseudo_labels(consensus: Tensor, teacher_multimodal: Tensor, prototype_scores: Tensor, rate: float,
                           threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """PGLS: (y~ = r q + (1 - r) pi, the blended prediction r softmax(f_m^e) + (1 - r) pi,
    the confidence mask max(blended) >= threshold)."""
    smoothed = rate * consensus + (1 - rate) * prototype_scores
    blended = rate * torch.softmax(teacher_multimodal.float(), dim=1) + (1 - rate) * prototype_scores
    return smoothed, blended, blended.max(dim=1).values >= threshold


# ---- the method ------------------------------------------------------------------------------
@register_method("stil")
class STiL(SemiSupervisedMethod):
    """Args (defaults: STiL's DVM configuration; ``configs/experiments/*stil*.yaml`` hold
    the DVM and cardiac presets):
        modalities: the two modalities (default: the data's two).
        encoders: per-modality encoder options (default: the holomodal defaults, TIP's
            tabular transformer for a table); filled in from ``checkpoint``.
        checkpoint: a holomodal TIP pre-training run (or its .ckpt): its image and tabular
            encoders' weights initialise STiL's, fully trainable, and the data are encoded
            as in pre-training.
        dim, heads, mi_layers, dropout, path_drop: DCC and MI-transformer (512, 4, 1, 0.1, 0.1).
        projection_dim: width of the ITC and prototype embeddings (128).
        alpha, beta, gamma, rate_pt, rate_uce: the loss weights (DVM 0.2, 3.0, 0.5, 1.0, 0.2;
            cardiac 0.2, 1.0, 1.0, 1.0, 0.2).
        threshold, rate_pseudo: theta and r (DVM 0.9, 0.9; cardiac 0.85, 0.95).
        temperature: tau of ITC, prototype scores and L_pt (0.1).
        ema_momentum: the teacher's EMA momentum (DVM 0.996; cardiac 0.4).
        club: ``joint`` (STiL's code) or ``alternating`` (CLUB's scheme).
        start_epoch: the warm-up without pseudo-labels (DVM 35; cardiac 8).
    """

    def __init__(
        self, context: ModelContext, modalities: list[str] | None = None, encoders: dict[str, Any] | None = None,
        checkpoint: str | None = None, dim: int = 512, heads: int = 4, mi_layers: int = 1, dropout: float = 0.1,
        path_drop: float = 0.1, projection_dim: int = 128, alpha: float = 0.2, beta: float = 3.0, gamma: float = 0.5,
        rate_pt: float = 1.0, rate_uce: float = 0.2, threshold: float = 0.9, rate_pseudo: float = 0.9,
        temperature: float = 0.1, ema_momentum: float = 0.996, club: str = "joint",
        optim: dict[str, Any] | None = None, start_epoch: int = 35, unlabelled_ratio: int = 7,
        views: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(context, {"name": "adam", "lr": 1e-4, "weight_decay": 0.0, **(optim or {})}, start_epoch,
                         unlabelled_ratio, views)
        if not 0.0 <= ema_momentum <= 1.0 or not 0.0 <= rate_pseudo <= 1.0:
            raise ConfigError(f"stil: ema_momentum and rate_pseudo must lie in [0, 1], got {ema_momentum} and {rate_pseudo}")
        self.names = tuple(check_two_modalities(context, modalities, "stil"))
        self.checkpoint = checkpoint
        chosen = self.resolve_encoder_options(context, encoders, list(self.names))
        self.network = DisentangledNetwork(context, list(self.names), chosen, dim, heads, mi_layers, dropout, path_drop)
        self.teacher = make_teacher(self.network)
        a, b = self.names
        self.itc = ImageTabularContrastiveLoss(dim, dim, projection_dim, temperature)
        self.club = nn.ModuleDict({m: CLUBMean(dim, dim, mode=club) for m in self.names})
        self.projection = ProjectionHead(3 * dim, 3 * dim, projection_dim)
        self.bank = PrototypeBank(context.num_classes, projection_dim, temperature)
        self.loss_weights = {"alpha": alpha, "beta": beta, "gamma": gamma, "rate_pt": rate_pt, "rate_uce": rate_uce}
        self.threshold, self.rate_pseudo = float(threshold), float(rate_pseudo)
        self.temperature, self.ema_momentum = float(temperature), float(ema_momentum)
        self._pretrained_loaded = False

    # ---- options and pre-trained encoders ------------------------------------------------------
    @staticmethod
    def resolve_encoder_options(context: ModelContext, encoders: dict[str, Any] | None, names: list[str]) -> dict[str, dict[str, Any]]:
        given = dict(encoders or {})
        if TABULAR in names and not (given.get(TABULAR) or given.get("tabular")):
            given[TABULAR] = dict(DEFAULT_TABULAR_ENCODER)
        return resolve_encoders(context, given, names)

    @classmethod
    def resolve_options(cls, context: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        names = check_two_modalities(context, options.get("modalities"), "stil")
        return {**options, "modalities": names, "encoders": cls.resolve_encoder_options(context, options.get("encoders"), names)}

    @staticmethod
    def adopt_pretraining(preprocessor: Any, model: dict[str, Any]) -> dict[str, Any]:
        """With a TIP ``checkpoint``: the data encoded as in pre-training, the encoders'
        options the checkpoint's (image column and table)."""
        from holomodal.methods.tip import TIP, read_pretrained, views_of

        if not model.get("checkpoint"):
            return model
        adopted = TIP.adopt_pretraining(preprocessor, {k: v for k, v in model.items() if k in ("checkpoint", "image_modality")})
        backbone = adopted["backbone"]
        views = views_of(backbone["image_modality"])
        if len(views) != 1:
            raise ConfigError(f"stil uses one image column; the TIP checkpoint encodes {views}")
        record_encoders = read_pretrained(model["checkpoint"])["backbone"]["encoders"]
        return {**model, "modalities": [views[0], TABULAR],
                "encoders": {views[0]: dict(record_encoders["image"]), TABULAR: dict(record_encoders["tabular"])}}

    def setup(self, stage: str) -> None:
        # before Lightning restores a resumed run, which then replaces these weights
        if stage == "fit" and self.checkpoint and not self._pretrained_loaded:
            from holomodal.methods.tip import backbone_state, read_pretrained

            state = backbone_state(read_pretrained(self.checkpoint, weights=True)["state_dict"])
            image = next(m for m in self.names if m != TABULAR)
            for module, prefix in ((self.network.encoders[image], "image_encoder."), (self.network.encoders[TABULAR], "tabular_encoder.")):
                module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
            self.teacher.load_state_dict(self.network.state_dict())
            self._pretrained_loaded = True

    @property
    def phase_name(self) -> str:
        start = "from TIP pre-training" if self.checkpoint else "from the encoders' initialisation"
        return (f"STiL semi-supervised training {start}, {self.context.train_rows} labelled and "
                f"{self.context.unlabelled_rows} unlabelled rows; pseudo-labels after a warm-up of {self.start_epoch + 1} epoch(s)")

    # ---- forward and step ---------------------------------------------------------------------
    def embed(self, joint: Tensor) -> Tensor:
        return F.normalize(self.projection(joint).float(), dim=1)

    def _itc(self, out: DisentangledOutput) -> Tensor:
        a, b = self.names
        both = out.present[a] & out.present[b]
        if int(both.sum()) < 2:  # no pair to contrast: zero, with the heads still in the graph (DDP)
            return 0.0 * (self.itc.image_head(out.shared[a]).sum() + self.itc.tabular_head(out.shared[b]).sum())
        return self.itc(out.shared[a][both], out.shared[b][both])[0]

    def _club(self, out: DisentangledOutput) -> tuple[Tensor, dict[str, Tensor]]:
        total, terms = out.logits.new_zeros(()), {}
        for m in self.names:
            rows = out.present[m]
            if int(rows.sum()) < 2:
                rows = torch.ones_like(rows)  # keeps the estimator in the graph; features are zero
            bound, estimator = self.club[m](out.specific_before[m][rows], out.shared[m][rows])
            terms[f"club_{m}"], terms[f"club_{m}_estimator"] = bound, estimator
            total = total + bound + estimator
        return total, terms

    def semi_supervised_step(self, labelled: Batch, unlabelled: Batch) -> StepResult:
        a, b = self.names
        n_l = len(labelled)
        view = self.views(Batch.cat([labelled, unlabelled]), "stil")
        student = self.network(view)
        ema_update(self.teacher, self.network, self.ema_momentum)
        with torch.no_grad():
            teacher = self.teacher(view)
            teacher_embedding = self.embed(teacher.joint)
        target = labelled.target
        ce = F.cross_entropy(student.logits[:n_l].float(), target)
        for m in self.names:
            ce = ce + masked_mean(F.cross_entropy(student.unimodal[m][:n_l].float(), target, reduction="none"), student.present[m][:n_l])
        itc = self._itc(student)
        club, club_terms = self._club(student)

        # pseudo-labels of the unlabelled rows, from the teacher
        present_u = {m: student.present[m][n_l:] for m in self.names}
        coin = torch.rand(len(unlabelled), device=ce.device) < 0.5
        consensus = consensus_pseudo_labels(teacher.logits[n_l:], teacher.unimodal[a][n_l:], teacher.unimodal[b][n_l:],
                                            (a, b), coin, present_u[a], present_u[b])
        scores = self.bank.scores(teacher_embedding[n_l:])
        smoothed, blended, confident = smoothed_pseudo_labels(consensus.target, teacher.logits[n_l:], scores,
                                                              self.rate_pseudo, self.threshold)
        heads = {"multimodal": student.logits[n_l:], a: student.unimodal[a][n_l:], b: student.unimodal[b][n_l:]}
        unlabelled_ce = {name: masked_mean(soft_cross_entropy(logits, smoothed), confident & consensus.learners[name])
                         for name, logits in heads.items()}

        # prototypes: labelled rows by their label (weight 1 / repeat_ratio), unlabelled ones
        # by the blended prediction once the warm-up is over
        on = self.pseudo_labels_on
        labels = torch.cat([target, blended.argmax(dim=1)])
        use = torch.cat([torch.ones_like(target, dtype=torch.bool), confident & on])
        weights = torch.cat([torch.full((n_l,), 1.0 / self.repeat_ratio, device=ce.device), torch.ones(len(unlabelled), device=ce.device)])
        self.bank.accumulate(teacher_embedding, labels, weights * use)
        pt = prototype_alignment_loss(self.embed(student.joint), self.bank.prototypes, labels, use, self.temperature)

        w = self.loss_weights
        loss = w["alpha"] * ce + w["beta"] * itc + w["gamma"] * club
        unsup = sum(unlabelled_ce.values())
        # before start_epoch the terms count zero, yet stay in the graph (DDP needs every parameter used)
        loss = loss + (1.0 if on else 0.0) * (w["rate_pt"] * pt + w["rate_uce"] * unsup)
        terms = {"ce": ce, "itc": itc, "club": club, **club_terms, "pt": pt,
                 **{f"ce_unlabelled_{k}": v for k, v in unlabelled_ce.items()}}
        pseudo = PseudoLabels(blended.argmax(dim=1), confident & on, consensus.cases)
        return StepResult(loss, terms, pseudo)

    # ---- epoch-level prototypes ---------------------------------------------------------------
    def _finish_prototypes(self) -> None:
        strategy = self.trainer.strategy
        self.bank.finish_epoch(lambda t: strategy.reduce(t, reduce_op="sum"))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        # on the epoch's last step, so validation and the epoch's checkpoint see the new prototypes
        if self.trainer.is_last_batch:
            self._finish_prototypes()

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        # an epoch cut short before its last batch; one process only, as under DDP the
        # processes must agree on every all-reduce
        if self.trainer.world_size == 1 and self.bank.has_sums:
            self._finish_prototypes()
