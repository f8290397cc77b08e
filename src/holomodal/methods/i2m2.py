"""I2M2 (NeurIPS 2024): inter- and intra-modality experts combined as a product of experts.

One intra-modality expert per modality (its own encoder and classifier) and one
inter-modality expert (all encoders, a fusion module, a classifier). The prediction is

    p(y | x_1..x_M) ∝ Π_e softmax(z_e)(y)  =  softmax(Σ_e z_e)(y),

since ``log_softmax(z) = z - const``: the experts' logits are summed and one
cross-entropy trains the combined prediction (no per-expert losses, no learned expert
weights; spec section 2.1). An absent modality's intra expert contributes zero logits,
i.e. a uniform factor; the inter expert sees the presence flags through its fusion.

``init: pretrained_experts`` follows the paper's recommended recipe: for the first
``expert_epochs`` epochs every expert is trained alone on its own cross-entropy (the
experts share no parameters, so summing their losses is the same as separate runs), then
all are fine-tuned jointly on the product's cross-entropy. ``joint: false`` never
switches, which gives the intra-only baseline "sum of unimodal experts, each trained alone".

For regression every expert predicts a mean and has a learned variance σ²_e (one per
expert, not per row), and the product of the present experts' Gaussians is again a
Gaussian, with precision Σ_e 1/σ²_e and mean Σ_e μ_e/σ²_e over that precision: the
continuous counterpart of summing logits, where an absent modality's expert drops out of
both sums instead of contributing a uniform factor. Training minimises the product's
Gaussian negative log-likelihood, so the variances are fitted rather than free weights
that could grow without bound; the prediction is the product's mean.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from holomodal.batch import Batch
from holomodal.errors import ConfigError
from holomodal.methods import register_method
from holomodal.methods.base import ClassificationMethod, ModelContext
from holomodal.methods.late_fusion import LateFusion


@register_method("i2m2")
class I2M2(ClassificationMethod):
    def __init__(
        self,
        context: ModelContext,
        encoders: dict[str, Any] | None = None,
        head: dict[str, Any] | None = None,
        inter: dict[str, Any] | None = None,
        experts: tuple[str, ...] | list[str] = ("intra", "inter"),
        init: str = "scratch",
        expert_epochs: int = 0,
        joint: bool = True,
        optim: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(context, optim)
        if init not in ("scratch", "pretrained_experts"):
            raise ConfigError(f"i2m2 init must be 'scratch' or 'pretrained_experts', not '{init}'")
        if not set(experts) <= {"intra", "inter"} or not experts:
            raise ConfigError(f"i2m2 experts must be a non-empty subset of ['intra', 'inter'], got {list(experts)}")
        self.expert_epochs = expert_epochs if init == "pretrained_experts" else 0
        self.joint = joint
        self.intra = nn.ModuleDict()
        if "intra" in experts:
            for m in context.modalities:
                self.intra[m] = LateFusion(context, encoders=encoders, head=head, modalities=[m])
        self.inter = LateFusion(context, **(inter or {"encoders": encoders, "head": head})) if "inter" in experts else None
        if self.is_regression:
            names = [*self.intra, *(["inter"] if self.inter is not None else [])]
            self.log_variance = nn.ParameterDict({n: nn.Parameter(torch.zeros(())) for n in names})

    def expert_logits(self, batch: Batch) -> dict[str, Tensor]:
        """Each expert's logits; an absent modality's intra expert gives zeros."""
        logits = {}
        for m, expert in self.intra.items():
            logits[m] = expert(batch) * batch.present[m][:, None].to(batch.present[m].device)
        if self.inter is not None:
            logits["inter"] = self.inter(batch)
        return logits

    def expert_precisions(self, batch: Batch) -> dict[str, Tensor]:
        """Regression: each expert's precision 1/σ²_e per row, zero where its modality is absent."""
        out = {}
        for name, log_var in self.log_variance.items():
            precision = torch.exp(-log_var).expand(len(batch))
            out[name] = precision * batch.present[name].to(precision.dtype) if name in self.intra else precision
        return out

    def gaussian_product(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Regression: mean and variance (B,) of the product of the experts' Gaussians."""
        means = {n: z.float().reshape(-1) for n, z in self.expert_logits(batch).items()}
        precisions = self.expert_precisions(batch)
        total = torch.stack(list(precisions.values())).sum(dim=0)
        mean = torch.stack([precisions[n] * means[n] for n in means]).sum(dim=0) / total
        return mean, 1.0 / total

    def forward(self, batch: Batch) -> Tensor:
        if self.is_regression:
            return self.gaussian_product(batch)[0][:, None]
        return torch.stack(list(self.expert_logits(batch).values())).sum(dim=0)

    def _regression_loss(self, batch: Batch) -> Tensor:
        target = batch.target.float().reshape(-1)
        if not self.training_experts_alone:
            mean, variance = self.gaussian_product(batch)
            return nn.functional.gaussian_nll_loss(mean, target, variance)
        losses = []
        for name, z in self.expert_logits(batch).items():
            rows = batch.present[name] if name in self.intra else torch.ones_like(target, dtype=torch.bool)
            variance = torch.exp(self.log_variance[name]).expand(len(batch))
            per_row = nn.functional.gaussian_nll_loss(z.float().reshape(-1), target, variance, reduction="none")
            losses.append((per_row * rows).sum() / rows.sum().clamp_min(1))
        return torch.stack(losses).sum()

    @property
    def training_experts_alone(self) -> bool:
        return not self.joint or self.current_epoch < self.expert_epochs

    @property
    def phase_name(self) -> str:
        """The training phase, for the run's progress lines (holomodal.training.RunConsole)."""
        if self.training_experts_alone:
            return "each expert trained alone"
        return "all experts trained jointly, as a product of experts"

    def training_loss(self, batch: Batch) -> Tensor:
        if self.is_regression:
            return self._regression_loss(batch)
        if not self.training_experts_alone:
            return self.loss_from_logits(self(batch), batch.target)
        losses = []
        for name, z in self.expert_logits(batch).items():
            # an intra expert learns only from rows where its modality is present
            rows = batch.present[name] if name in self.intra else torch.ones_like(batch.target, dtype=torch.bool)
            per_row = nn.functional.cross_entropy(z, batch.target, reduction="none") if self.task != "multilabel" else \
                nn.functional.binary_cross_entropy_with_logits(z, batch.target.float(), reduction="none").mean(dim=1)
            losses.append((per_row * rows).sum() / rows.sum().clamp_min(1))
        return torch.stack(losses).sum()
