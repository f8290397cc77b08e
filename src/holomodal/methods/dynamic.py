"""DyMo's subset-aware classifier (spec ``dymo.md`` section 5): a transformer over one token
per modality that is told which modalities to use, trained on random modality subsets.

Architecture (5.1). Each modality's encoder gives its pooled vector, projected to ``dim``
and layer-normalised: **one token per modality**, where the paper feeds several tokens for
images (a ResNet's 4x4 map) and tables (one per column); a pooled vector keeps every
holomodal encoder usable. A token whose modality is not used is zeroed, then every token
gets its modality embedding; the sequence ``[CLS; tokens]`` gets a learned positional
embedding and passes through pre-LN transformer blocks whose attention ignores the keys of
unused tokens for every query (CLS is never masked, so a row that uses nothing still
predicts, from CLS alone). No final LayerNorm. The CLS output feeds a classifier and a
projection ``z`` (L2-normalised for the cosine metric).

Which modalities are used is the caller's choice (:meth:`forward_subset`), not the
batch's: a recoverer may fill in a modality the batch marks absent, and DyMo decides
whether to use it. :meth:`forward` uses exactly the present modalities, so the method is
an ordinary classifier under any missingness.

Training (5.2). Every batch draws ``subsets_per_batch`` (K) distinct non-empty subsets of
the modalities uniformly, each applied to the whole batch (or, with
``per_sample_subsets``, K distinct subsets per row: spec pitfall 15), AND-ed with the
batch's present masks so that a modality a row lacks is never used; a row left with no
modality in a subset is left out of that subset's losses and prototypes. The loss is
``mean CE + prototype_weight * mean L_pt`` over the (row, subset) pairs, with
``L_pt = -log softmax_k(sim(z, P_k) / temperature)[y]``, ``sim`` the dot product (cosine:
``z`` normalised, ``P`` not re-normalised) or minus the squared Euclidean distance. ``P``
holds the previous epoch's per-class mean of the detached ``z`` over all sampled subsets
and batches (no momentum). L_pt is weighted 0 before epoch ``prototype_start_epoch`` (3:
the code's value, its comment says 5; spec pitfall 13), when ``P`` is still zero or
young; it is computed anyway so that every parameter takes part in every step (DDP).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from holomodal.batch import Batch
from holomodal.errors import ConfigError, DataError
from holomodal.methods import register_method
from holomodal.methods.base import REGRESSION, ClassificationMethod, ModelContext, build_encoders
from holomodal.schema import Task

METRICS = ("cos", "sqeuclid")


class SubsetAttentionBlock(nn.Module):
    """A pre-LN transformer block (ViT's: no qkv bias, MLP ratio 4, GELU, no dropout) whose
    attention skips the keys that ``key_used`` marks False."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.attention_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attention_out = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor, key_used: Tensor) -> Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # a masked key gets weight exactly 0 for every query and head
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=key_used[:, None, None, :])
        x = x + self.attention_out(attended.transpose(1, 2).reshape(b, s, d))
        return x + self.mlp(self.mlp_norm(x))


def _init_fusion_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@register_method("dynamic")
class DynamicSubsetClassifier(ClassificationMethod):
    """Args:
        context: the data's model context; its modalities, in order, are the tokens (the
            table counts as one modality).
        encoders: encoder configuration per modality name or type, as ``late_fusion``'s.
        dim, depth, heads: the fusion transformer's width, blocks and attention heads.
        projection_dim: size of ``z``, the prototype space.
        metric: ``cos`` (dot product of normalised ``z`` with the prototypes) or ``sqeuclid``
            (minus the squared distance).
        subsets_per_batch: K, the distinct modality subsets drawn per batch; at most
            ``2**M - 1``, a larger K uses every subset.
        per_sample_subsets: draw the K subsets per row instead of per batch.
        prototype_weight: λ of the prototype loss.
        prototype_start_epoch: first (0-based) epoch whose loss includes the prototype loss.
        temperature: of the prototype softmax.
    """

    def __init__(
        self,
        context: ModelContext,
        encoders: dict[str, Any] | None = None,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        projection_dim: int = 64,
        metric: str = "cos",
        subsets_per_batch: int = 2,
        per_sample_subsets: bool = False,
        prototype_weight: float = 1.0,
        prototype_start_epoch: int = 3,
        temperature: float = 0.1,
        optim: dict[str, Any] | None = None,
    ) -> None:
        if context.task in (REGRESSION, Task.MULTILABEL.value):
            raise ConfigError(f"method 'dynamic' (DyMo) classifies one class per row: task '{context.task}' is not "
                              "supported (use a multiclass or binary label)")
        if metric not in METRICS:
            raise ConfigError(f"model.metric must be one of {', '.join(METRICS)}, not {metric!r}")
        if dim < 1 or heads < 1 or dim % heads:
            raise ConfigError(f"model.dim ({dim}) must be a positive multiple of model.heads ({heads})")
        if depth < 1 or projection_dim < 1:
            raise ConfigError(f"model.depth and model.projection_dim must be >= 1, got {depth} and {projection_dim}")
        if isinstance(subsets_per_batch, bool) or not isinstance(subsets_per_batch, int) or subsets_per_batch < 1:
            raise ConfigError(f"model.subsets_per_batch must be an integer >= 1, got {subsets_per_batch!r}")
        if not temperature > 0:
            raise ConfigError(f"model.temperature must be positive, got {temperature!r}")
        if prototype_weight < 0 or prototype_start_epoch < 0:
            raise ConfigError(f"model.prototype_weight and model.prototype_start_epoch must be >= 0, got "
                              f"{prototype_weight!r} and {prototype_start_epoch!r}")
        super().__init__(context, optim)
        self.modality_order = list(context.modalities)
        n_modalities = len(self.modality_order)
        self.metric = metric
        self.subsets_per_batch = min(subsets_per_batch, 2**n_modalities - 1)
        self.per_sample_subsets = bool(per_sample_subsets)
        self.prototype_weight = float(prototype_weight)
        self.prototype_start_epoch = int(prototype_start_epoch)
        self.temperature = float(temperature)

        self.encoders = build_encoders(context, encoders, self.modality_order)
        self.token_projections = nn.ModuleDict({m: nn.Linear(e.output_dim, dim) for m, e in self.encoders.items()})
        self.token_norms = nn.ModuleDict({m: nn.LayerNorm(dim) for m in self.modality_order})
        self.modality_embedding = nn.Embedding(n_modalities, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position_embedding = nn.Parameter(torch.zeros(1, 1 + n_modalities, dim))
        self.blocks = nn.ModuleList(SubsetAttentionBlock(dim, heads) for _ in range(depth))
        self.classifier = nn.Linear(dim, context.num_classes)
        self.projection = nn.Linear(dim, projection_dim)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        # the fusion part only: the encoders keep their own initialisation (or pre-trained weights)
        for part in (self.token_projections, self.token_norms, self.modality_embedding, self.blocks,
                     self.classifier, self.projection):
            part.apply(_init_fusion_weights)

        # the previous epoch's prototypes travel with checkpoints; the running sums do not
        # (a resumed epoch starts them afresh rather than count one process's sums on every process)
        self.register_buffer("prototypes", torch.zeros(context.num_classes, projection_dim))
        self.register_buffer("prototype_sum", torch.zeros(context.num_classes, projection_dim), persistent=False)
        self.register_buffer("prototype_count", torch.zeros(context.num_classes), persistent=False)
        self._prototypes_updated_this_epoch = False
        # DyMo's subset statistics (spec section 6), measured once after training on the
        # training split and saved with the model's weights (no side file)
        n_subsets = 2 ** n_modalities - 1
        self.register_buffer("subset_prototypes", torch.zeros(n_subsets, context.num_classes, projection_dim))
        self.register_buffer("subset_scales", torch.zeros(n_subsets, context.num_classes))
        self.register_buffer("subset_statistics_fitted", torch.zeros((), dtype=torch.bool))

    # ---- the model ---------------------------------------------------------------------
    def usage_from_present(self, batch: Batch) -> Tensor:
        """(B, M) bool: the batch's present masks in :attr:`modality_order`."""
        return torch.stack([batch.present[m].bool() for m in self.modality_order], dim=1)

    def encode(self, batch: Batch, present: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each modality's pooled encoder output (B, E_m); the encoders zero the rows that
        ``present`` marks False before reading them."""
        return {
            m: enc(batch.inputs[m], present[m], batch.cell_missing if m == "tabular" else None)
            for m, enc in self.encoders.items()
        }

    def fuse(self, pooled: dict[str, Tensor], usage: Tensor) -> tuple[Tensor, Tensor]:
        """(logits (B, C), z (B, projection_dim)) from pooled encoder outputs and the (B, M)
        usage mask."""
        tokens = torch.stack([self.token_norms[m](self.token_projections[m](pooled[m])) for m in self.modality_order], 1)
        # masked_fill rather than a product: an unused token stays 0 whatever its encoder gave
        tokens = tokens.masked_fill(~usage[..., None], 0.0) + self.modality_embedding.weight[None]
        x = torch.cat([self.cls_token.expand(len(tokens), -1, -1).to(tokens.dtype), tokens], dim=1)
        x = x + self.position_embedding
        key_used = torch.cat([torch.ones_like(usage[:, :1]), usage], dim=1)
        for block in self.blocks:
            x = block(x, key_used)
        cls = x[:, 0]
        z = self.projection(cls)
        return self.classifier(cls), F.normalize(z, dim=-1) if self.metric == "cos" else z

    def forward_subset(self, batch: Batch, usage: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, z) using the modalities ``usage`` (B, M) bool marks True, in
        :attr:`modality_order`, whatever the batch's present masks say: a recovered modality
        the batch marks absent is read when used. The tabular encoder still gets the batch's
        ``cell_missing``, so a recoverer that fills cells clears their flags."""
        usage = usage.to(device=self.cls_token.device, dtype=torch.bool)
        if usage.shape != (len(batch), len(self.modality_order)):
            raise ValueError(f"usage must have shape ({len(batch)}, {len(self.modality_order)}) for modalities "
                             f"{self.modality_order}, got {tuple(usage.shape)}")
        present = {m: usage[:, i] for i, m in enumerate(self.modality_order)}
        return self.fuse(self.encode(batch, present), usage)

    def forward(self, batch: Batch) -> Tensor:
        return self.forward_subset(batch, self.usage_from_present(batch))[0]

    @torch.no_grad()
    def after_fit(self, train: Batch, batch_size: int = 256) -> None:
        """Estimator hook once the best weights are in place: DyMo's subset statistics from
        the training rows. Subset s is measured on the rows that hold every modality of s
        (all rows when the data is complete, as in DyMo)."""
        from holomodal.selection.dymo import SubsetStatistics, all_subsets

        present = self.usage_from_present(train)
        prototypes, scales = [], []
        for subset in all_subsets(len(self.modality_order)):
            rows = torch.nonzero((present | ~subset).all(dim=1)).flatten()
            device = self.cls_token.device
            parts = (train.select(rows[i:i + batch_size]).map(lambda t: t.to(device)) for i in range(0, len(rows), batch_size))
            z = torch.cat([self.subset_features(part, subset.expand(len(part), -1)) for part in parts])
            names = [m for m, used in zip(self.modality_order, subset.tolist()) if used]
            try:
                stats = SubsetStatistics.fit(z[None].cpu(), train.target[rows].cpu(), self.context.num_classes, self.metric)
            except DataError as err:
                raise DataError(f"dynamic: the training rows holding {names} leave a class out, so DyMo's statistics "
                                f"for that subset cannot be measured ({err})") from None
            prototypes.append(stats.prototypes[0])
            scales.append(stats.scales[0])
        self.subset_prototypes.copy_(torch.stack(prototypes))
        self.subset_scales.copy_(torch.stack(scales))
        self.subset_statistics_fitted.fill_(True)

    def subset_statistics(self) -> Any:
        """The measured :class:`~holomodal.selection.dymo.SubsetStatistics` (overall prototypes
        = their mean over subsets)."""
        from holomodal.selection.dymo import SubsetStatistics

        if not bool(self.subset_statistics_fitted):
            raise ConfigError("dynamic: this model has no subset statistics yet (they are measured at the end of fit)")
        return SubsetStatistics(self.subset_prototypes, self.subset_scales, self.subset_prototypes.mean(0), self.metric)

    @torch.no_grad()
    def subset_features(self, batch: Batch, usage: Tensor) -> Tensor:
        """z (B, projection_dim) for ``usage``, in eval mode and without gradients."""
        was_training = self.training
        self.eval()
        try:
            return self.forward_subset(batch, usage)[1]
        finally:
            self.train(was_training)

    # ---- training ----------------------------------------------------------------------
    def draw_subsets(self, batch_size: int) -> Tensor:
        """(K, B, M) bool: K distinct non-empty modality subsets drawn uniformly, the same for
        every row, or drawn per row with ``per_sample_subsets``."""
        n_modalities = len(self.modality_order)
        n_subsets = 2**n_modalities - 1
        if self.per_sample_subsets:
            codes = torch.rand(batch_size, n_subsets).argsort(dim=1)[:, : self.subsets_per_batch].T + 1
        else:
            codes = (torch.randperm(n_subsets)[: self.subsets_per_batch] + 1)[:, None].expand(-1, batch_size)
        bits = 2 ** torch.arange(n_modalities)
        return (codes[..., None] & bits) != 0

    @property
    def prototype_loss_weight(self) -> float:
        """λ of the prototype loss in the current epoch: 0 before ``prototype_start_epoch``."""
        return self.prototype_weight if self.current_epoch >= self.prototype_start_epoch else 0.0

    def prototype_logits(self, z: Tensor) -> Tensor:
        """sim(z, P_k) / temperature (N, C) against the previous epoch's prototypes."""
        z, prototypes = z.float(), self.prototypes.float()
        if self.metric == "cos":
            similarity = z @ prototypes.T
        else:  # expanded rather than cdist, whose gradient is NaN at distance 0
            similarity = -((z * z).sum(1, keepdim=True) - 2 * z @ prototypes.T + (prototypes * prototypes).sum(1))
        return similarity / self.temperature

    def subset_losses(self, batch: Batch, usages: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(cross-entropy, prototype loss, z, rows) over the (subset, row) pairs of ``usages``
        (K, B, M): both losses are means over the pairs that use some modality (``rows``,
        (K*B,) bool), z (K*B, projection_dim) is in subset-major order. The encoders run
        once; only the fusion sees every subset."""
        k = len(usages)
        pooled = self.encode(batch, batch.present)
        # a used modality is present in its row, so these are the encodings forward_subset gives
        stacked = {m: p.repeat(k, *([1] * (p.dim() - 1))) for m, p in pooled.items()}
        usage = usages.to(self.cls_token.device).reshape(-1, len(self.modality_order))
        logits, z = self.fuse(stacked, usage)
        target = batch.target.repeat(k)
        rows = usage.any(dim=1)
        weights = rows.float()
        pairs = rows.sum().clamp_min(1)
        ce = (F.cross_entropy(logits.float(), target, reduction="none") * weights).sum() / pairs
        pt = (F.cross_entropy(self.prototype_logits(z), target, reduction="none") * weights).sum() / pairs
        return ce, pt, z, rows

    def training_usages(self, batch: Batch) -> Tensor:
        """(K, B, M): the drawn subsets, each restricted to the modalities its row holds."""
        present = self.usage_from_present(batch)
        # drawn on the host (the seeded generator), copied over: no read-back from the device
        return self.draw_subsets(len(batch)).to(present.device) & present[None]

    def training_loss(self, batch: Batch) -> Tensor:
        usages = self.training_usages(batch)
        ce, pt, z, rows = self.subset_losses(batch, usages)
        if self.training:
            self.accumulate_prototypes(z.detach()[rows], batch.target.repeat(len(usages))[rows])
        if getattr(self, "_trainer", None) is not None:  # logged in a training run only
            self.log("train/ce", ce.detach(), on_step=False, on_epoch=True, batch_size=len(batch))
            self.log("train/prototype_loss", pt.detach(), on_step=False, on_epoch=True, batch_size=len(batch))
        return ce + self.prototype_loss_weight * pt

    @property
    def phase_name(self) -> str:
        """The training phase, for the run's progress lines (holomodal.training.RunConsole)."""
        if self.prototype_loss_weight:
            return "cross-entropy and prototype loss on random modality subsets"
        return "cross-entropy on random modality subsets"

    # ---- prototypes --------------------------------------------------------------------
    @torch.no_grad()
    def accumulate_prototypes(self, z: Tensor, target: Tensor) -> None:
        """Add detached ``z`` (N, projection_dim) to the running per-class sums of the epoch."""
        self.prototype_sum.index_add_(0, target, z.float())
        self.prototype_count.index_add_(0, target, torch.ones_like(target, dtype=self.prototype_count.dtype))

    @torch.no_grad()
    def update_prototypes(self) -> None:
        """P_k = the epoch's per-class mean of z, summed over every process under DDP; a class
        no row of the epoch had keeps its previous prototype. Then the sums start afresh."""
        totals = torch.cat([self.prototype_sum, self.prototype_count[:, None]], dim=1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(totals)
        sums, counts = totals[:, :-1], totals[:, -1]
        seen = counts > 0
        self.prototypes[seen] = (sums[seen] / counts[seen, None]).to(self.prototypes.dtype)
        self.prototype_sum.zero_()
        self.prototype_count.zero_()

    def on_train_epoch_start(self) -> None:
        self.prototype_sum.zero_()
        self.prototype_count.zero_()
        self._prototypes_updated_this_epoch = False

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        # after the epoch's last batch, before validation: the checkpoints written at
        # validation end then hold this epoch's prototypes
        if self.trainer.is_last_batch and not self._prototypes_updated_this_epoch:
            self.update_prototypes()
            self._prototypes_updated_this_epoch = True

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        # every process reaches its last batch together, so all decide alike here (no lone collective)
        if not self._prototypes_updated_this_epoch:
            self.update_prototypes()
            self._prototypes_updated_this_epoch = True
