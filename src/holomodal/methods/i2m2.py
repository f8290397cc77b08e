"""I2M2 (NeurIPS 2024): inter- and intra-modality experts combined as a product of experts.

One intra-modality expert per modality (its own encoder and classifier) and one
inter-modality expert (all encoders, a fusion module, a classifier). The prediction is

    p(y | x_1..x_M) ∝ Π_e softmax(z_e)(y)  =  softmax(Σ_e z_e)(y),

since ``log_softmax(z) = z - const``: the experts' logits are summed and one
cross-entropy trains the combined prediction (no per-expert losses, no learned expert
weights; spec section 2.1). An absent modality's intra expert contributes zero logits,
i.e. a uniform factor; the inter expert sees the presence flags through its fusion.

``init: pretrained_experts`` follows the original's two stages. First every expert is a
run of its own (``late_fusion``, in ``RUN/experts/<modality>`` and ``RUN/experts/inter``):
``expert_epochs`` epochs with its own optimiser (``expert_optim``, merged over the run's
``optim``) and its own best-validation checkpoint. The estimator runs these fits before the
joint run (:meth:`I2M2.expert_fits`) and loads each expert's best weights into this module.
Then the joint run fine-tunes the product for the run's ``max_epochs``, at a lower learning
rate (``joint_optim``, merged over ``optim``; by default a tenth of its lr and weight decay
1e-4) with gradient clipping by norm (``joint_gradient_clip``, 8), as the original's joint
stage; the run's best epoch is chosen from the joint epochs alone. ``joint: false`` trains
every expert alone on its own loss for the whole run instead, which gives the intra-only
baseline "sum of unimodal experts, each trained alone". ``init: scratch`` trains the product
jointly from the start with the run's own optimiser.

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

# the original's joint stage: a tenth of the experts' learning rate, weight decay 1e-4, and
# gradients clipped to norm 8 (spec 2.2.1, optimiser row)
JOINT_LR_FACTOR = 0.1
JOINT_WEIGHT_DECAY = 1e-4
JOINT_GRADIENT_CLIP = 8.0


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
        expert_optim: dict[str, Any] | None = None,
        joint_optim: dict[str, Any] | None = None,
        joint_gradient_clip: float | None = JOINT_GRADIENT_CLIP,
        optim: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(context, optim)
        if init not in ("scratch", "pretrained_experts"):
            raise ConfigError(f"i2m2 init must be 'scratch' or 'pretrained_experts', not '{init}'")
        if not set(experts) <= {"intra", "inter"} or not experts:
            raise ConfigError(f"i2m2 experts must be a non-empty subset of ['intra', 'inter'], got {list(experts)}")
        self.joint = joint
        # experts fitted as runs of their own, then fine-tuned together: the original's recipe
        self.staged = init == "pretrained_experts" and joint
        if self.staged and (isinstance(expert_epochs, bool) or not isinstance(expert_epochs, int) or expert_epochs < 1):
            raise ConfigError(f"i2m2 init 'pretrained_experts' fits every expert alone for model.expert_epochs epochs "
                              f"before the joint run: set it to 1 or more, got {expert_epochs!r}")
        if joint_gradient_clip is not None and (isinstance(joint_gradient_clip, bool) or
                                                not isinstance(joint_gradient_clip, (int, float)) or joint_gradient_clip <= 0):
            raise ConfigError(f"i2m2 joint_gradient_clip must be a positive number (the gradient norm the joint stage "
                              f"clips to) or null, got {joint_gradient_clip!r}")
        self.expert_epochs = expert_epochs if self.staged else 0
        self.expert_optim_cfg = {**(optim or {}), **(expert_optim or {})}
        self.joint_gradient_clip = joint_gradient_clip if self.staged else None
        if self.staged:
            run_optim = self.optim_cfg
            self.optim_cfg = {**run_optim, "lr": run_optim["lr"] * JOINT_LR_FACTOR, "weight_decay": JOINT_WEIGHT_DECAY,
                              **(joint_optim or {})}
        self.intra_options = {"encoders": encoders, "head": head}
        self.inter_options = dict(inter or {"encoders": encoders, "head": head})
        self.intra = nn.ModuleDict()
        if "intra" in experts:
            for m in context.modalities:
                self.intra[m] = LateFusion(context, **self.intra_options, modalities=[m])
        self.inter = LateFusion(context, **self.inter_options) if "inter" in experts else None
        if self.is_regression:
            names = [*self.intra, *(["inter"] if self.inter is not None else [])]
            self.log_variance = nn.ParameterDict({n: nn.Parameter(torch.zeros(())) for n in names})

    def expert_fits(self) -> dict[str, tuple[str, dict[str, Any], dict[str, Any], int, nn.Module]]:
        """The runs the estimator fits before this one (``init: pretrained_experts``), by
        folder name: (method, model options, optim, epochs, the sub-module their best
        weights are loaded into); empty when the experts are not pre-trained."""
        if not self.staged:
            return {}
        fits: dict[str, tuple[str, dict[str, Any], dict[str, Any], int, nn.Module]] = {}
        for m, expert in self.intra.items():
            options = {k: v for k, v in self.intra_options.items() if v is not None}
            fits[m] = ("late_fusion", {**options, "modalities": [m]}, dict(self.expert_optim_cfg), self.expert_epochs, expert)
        if self.inter is not None:
            options = {k: v for k, v in self.inter_options.items() if v is not None}
            fits["inter"] = ("late_fusion", options, dict(self.expert_optim_cfg), self.expert_epochs, self.inter)
        return fits

    @property
    def gradient_clip_norm(self) -> float | None:
        """The norm the joint stage clips gradients to, read by :func:`~holomodal.methods.base.clips_gradients`."""
        return self.joint_gradient_clip

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        # the trainer's own setting (trainer.gradient_clip_val) wins when the user gives one
        if gradient_clip_val is None and self.joint_gradient_clip is not None:
            gradient_clip_val, gradient_clip_algorithm = float(self.joint_gradient_clip), gradient_clip_algorithm or "norm"
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)

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
        return not self.joint

    @property
    def phase_name(self) -> str:
        """The training phase, for the run's progress lines (holomodal.training.RunConsole)."""
        if self.training_experts_alone:
            return "each expert trained alone"
        if self.staged:
            return "all experts trained jointly, as a product of experts, from their own runs' best weights (experts/)"
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
