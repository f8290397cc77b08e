"""Class prototypes in a projected embedding space and STiL's prototype-alignment loss
(spec ``tip_stil.md`` 2.4 (5), addenda 2.1).

:class:`PrototypeBank` keeps one prototype per class, rebuilt once per epoch (not by
momentum): during the epoch it sums ``w * p`` and ``w`` per class over the confident
samples, and at the epoch's end ``P_c = sum(w p) / sum(w)`` (not re-normalised). A class
that gathered no weight keeps its previous prototype (STiL's code asserts this never
happens; on small data it can). Prototypes start at zero, so the first epoch's scores are
uniform.

Under DDP each process sums its own samples; :meth:`PrototypeBank.finish_epoch` adds the
sums of all processes before dividing (one all-reduce per epoch, which gives the same
prototypes as STiL's all-reduce at every step), so every process holds the same
prototypes. The running sums are plain tensors, not buffers: DDP broadcasts buffers from
rank 0 before every forward pass, which would overwrite the other processes' sums.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


class PrototypeBank(nn.Module):
    def __init__(self, num_classes: int, dim: int, temperature: float = 0.1) -> None:
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
        self.temperature = float(temperature)
        self.sums = torch.zeros(num_classes, dim, dtype=torch.float64)
        self.weights = torch.zeros(num_classes, dtype=torch.float64)

    def scores(self, embeddings: Tensor) -> Tensor:
        """softmax(p P^T / tau), (B, C)."""
        return torch.softmax(embeddings.float() @ self.prototypes.T / self.temperature, dim=1)

    @torch.no_grad()
    def accumulate(self, embeddings: Tensor, labels: Tensor, weights: Tensor) -> None:
        """Add ``weights * embeddings`` to the sums of their ``labels``' classes (weight 0:
        not confident)."""
        if self.sums.device != embeddings.device:
            self.sums, self.weights = self.sums.to(embeddings.device), self.weights.to(embeddings.device)
        w = weights.to(torch.float64)
        self.sums.index_add_(0, labels, embeddings.detach().to(torch.float64) * w[:, None])
        self.weights.index_add_(0, labels, w)

    @property
    def has_sums(self) -> bool:
        return bool(self.weights.sum() > 0)

    @torch.no_grad()
    def finish_epoch(self, all_reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """New prototypes from the epoch's sums (summed over processes by ``all_reduce``),
        then the sums are reset. Returns the weight each class gathered."""
        sums, weights = self.sums.clone(), self.weights.clone()
        if all_reduce is not None:
            sums, weights = all_reduce(sums.clone()), all_reduce(weights.clone())
        filled = weights > 0
        new = (sums / weights.clamp(min=1e-12)[:, None]).to(self.prototypes.dtype).to(self.prototypes.device)
        self.prototypes.copy_(torch.where(filled.to(self.prototypes.device)[:, None], new, self.prototypes))
        self.sums.zero_()
        self.weights.zero_()
        return weights


def prototype_alignment_loss(embeddings: Tensor, prototypes: Tensor, labels: Tensor, confident: Tensor,
                             temperature: float = 0.1) -> Tensor:
    """L_pt = (1/B) sum_b 1[conf_b] * -log(softmax(p_b P^T / tau)[y_b] + 1e-7): hard targets,
    averaged over all B rows, the unconfident ones counting zero."""
    probs = torch.softmax(embeddings.float() @ prototypes.float().T / temperature, dim=1)
    picked = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    return (-torch.log(picked + 1e-7) * confident.float()).mean()


__all__ = ["PrototypeBank", "prototype_alignment_loss"]
