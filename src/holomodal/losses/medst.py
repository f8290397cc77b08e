"""MedST's three pre-training losses (spec ``dcp_i2m2_medst.md`` 3.4, pitfalls 3.8, addenda 2.4 (7)).

Global alignment (3.4.1), on L2-normalised global image / report embeddings v, t (B, D):

    S = v t^T / tau,   L_global = CE(S, [0..B-1]) + CE(S^T, [0..B-1])      (tau = 0.07, batch-local)

Modality-weighted local alignment (3.4.2), per sample, word side (w_i words, p_j patches):

    c_i   = normalize( sum_j softmax_j(w_i . p_j / tau_l) p_j )            (valid patches only)
    a_i   = normalize(w_i * c_i)
    alpha = attention weights of a single-head MHA, query mean_i a_i, keys {a_i}; renormalised
    S_ik  = w_i . c_k / tau_l
    L_word = (1/B) sum_b sum_i alpha_i * 1/2 [CE(S_i,:, i) + CE(S_:,i, i)]   (tau_l = 0.1)

and the patch side with the roles swapped (a second MHA); L_local = L_word + L_patch.

Temporal cycle consistency (3.4.3), per sequence of T studies, U -> V (u_i, v_k):

    sim(a, b) = -||a - b||^2 / tau_t                                       (tau_t = 0.1)
    FMC:  mean_i CE(sim(u_i, v_:), i)
    RMR:  alpha_ik = softmax_k sim(u_i, v_k),  v~_i = sum_k alpha_ik v_k,
          beta_ij = softmax_j sim(v~_i, u_j),  s_j = j / T,
          mu_i = sum_j beta_ij s_j,  var_i = sum_j beta_ij (s_j - mu_i)^2,
          e_i = (s_i - mu_i)^2 / var_i + lambda_v log var_i                 if |s_i - mu_i| < delta
          e_i = delta (|s_i - mu_i| - delta / 2)                            otherwise
    L_temporal = [FMC + RMR](images -> reports) + [FMC + RMR](reports -> images)

Masks. Invalid tokens (padded words, patches of a missing lateral view) and invalid time
steps (sequences shorter than T) are removed from every softmax, every cross-entropy and
every mean; MedST's released code lets missing-lateral patches and padded words in (3.8),
which these losses do not. Masking fills logits with the dtype's lowest finite value rather
than -inf, so a row with nothing valid gives zeros instead of NaN (values and gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from holomodal.errors import ConfigError

# added to the RMR variance before it divides and enters the log (spec: log(var + 1e-7))
VARIANCE_EPS = 1e-7


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise ConfigError(f"{name} must be positive, not {value}")
    return float(value)


def _masked_log_softmax(logits: Tensor, valid: Tensor, dim: int) -> Tensor:
    return torch.log_softmax(logits.masked_fill(~valid, torch.finfo(logits.dtype).min), dim=dim)


def _masked_softmax(logits: Tensor, valid: Tensor, dim: int) -> Tensor:
    """Softmax over the valid entries; a slice with none valid is all zeros."""
    filled = logits.masked_fill(~valid, torch.finfo(logits.dtype).min)
    return torch.softmax(filled, dim=dim) * valid


def _squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """||a_i - b_k||^2 for (S, T, D) inputs, (S, T, T); exact (no expansion of the square)."""
    return (a[:, :, None, :] - b[:, None, :, :]).square().sum(dim=-1)


class GlobalAlignmentLoss(nn.Module):
    """Symmetric InfoNCE on (B, D) image and report embeddings, the two directions summed."""

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        self.temperature = _positive("temperature", temperature)

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        logits = image.float() @ text.float().T / self.temperature
        target = torch.arange(logits.shape[0], device=logits.device)
        return F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)


class ModalityWeightedLocalAlignment(nn.Module):
    """Token-level alignment weighted by learned attention (MedST).

    ``forward(words, word_valid, patches, patch_valid)`` takes (B, W, D) / (B, P, D)
    L2-normalised tokens and their boolean validity masks and returns a dict:
    ``loss`` (``word_loss + patch_loss``; ``word_loss`` alone when not bidirectional),
    ``word_loss``, ``patch_loss``, ``word_weights`` (B, W) and ``patch_weights`` (B, P).

    The weights are exactly zero on invalid tokens and sum to 1 over a sample's valid
    tokens (all zeros for a sample with none). A sample with fewer than two valid words
    (patches) contributes 0 to the word (patch) side: a cross-entropy over one candidate
    carries no signal. The loss is still the mean over all B samples, as in the spec.
    Without ``bidirectional`` the patch side is not computed: ``patch_loss`` is 0 and
    ``patch_weights`` are zeros.
    """

    def __init__(self, dim: int = 128, temperature: float = 0.1, bidirectional: bool = True) -> None:
        super().__init__()
        self.temperature = _positive("temperature", temperature)
        self.bidirectional = bool(bidirectional)
        self.word_attention = nn.MultiheadAttention(dim, 1, batch_first=True)
        self.patch_attention = nn.MultiheadAttention(dim, 1, batch_first=True)
        # only the attention weights are read, never the attended values: the value and
        # output projections would get no gradient, which DDP refuses as unused parameters
        for attention in (self.word_attention, self.patch_attention):
            attention.out_proj.requires_grad_(False)

    def _side(
        self, tokens: Tensor, token_valid: Tensor, others: Tensor, other_valid: Tensor, attention: nn.MultiheadAttention
    ) -> tuple[Tensor, Tensor]:
        """The loss of one side (tokens attend to the other modality) and its token weights."""
        attend = _masked_softmax(tokens @ others.transpose(1, 2) / self.temperature, other_valid[:, None, :], dim=-1)
        context = F.normalize(attend @ others, dim=-1)
        fused = F.normalize(tokens * context, dim=-1)

        count = token_valid.sum(dim=1)
        query = (fused * token_valid[..., None]).sum(dim=1, keepdim=True) / count.clamp(min=1)[:, None, None]
        # an all-masked key set makes MultiheadAttention return NaN; such a sample keeps its
        # keys here and has its weights zeroed just below
        padding = ~token_valid & (count > 0)[:, None]
        _, raw_weights = attention(query, fused, fused, key_padding_mask=padding, need_weights=True)
        raw_weights = raw_weights.squeeze(1) * token_valid
        weights = raw_weights / raw_weights.sum(dim=1, keepdim=True).clamp(min=torch.finfo(raw_weights.dtype).tiny)

        logits = tokens @ context.transpose(1, 2) / self.temperature
        pair_valid = token_valid[:, :, None] & token_valid[:, None, :]
        row = _masked_log_softmax(logits, pair_valid, dim=2).diagonal(dim1=1, dim2=2)
        column = _masked_log_softmax(logits, pair_valid, dim=1).diagonal(dim1=1, dim2=2)
        contributes = token_valid & (count >= 2)[:, None]
        per_token = torch.where(contributes, -0.5 * (row + column), torch.zeros_like(row))
        return (weights * per_token).sum(dim=1).mean(), weights

    def forward(self, words: Tensor, word_valid: Tensor, patches: Tensor, patch_valid: Tensor) -> dict[str, Tensor]:
        words, patches = words.float(), patches.float()
        word_valid, patch_valid = word_valid.bool(), patch_valid.bool()
        word_loss, word_weights = self._side(words, word_valid, patches, patch_valid, self.word_attention)
        if self.bidirectional:
            patch_loss, patch_weights = self._side(patches, patch_valid, words, word_valid, self.patch_attention)
            loss = word_loss + patch_loss
        else:
            patch_loss, patch_weights = word_loss.new_zeros(()), patches.new_zeros(patches.shape[:2])
            loss = word_loss
        return {
            "loss": loss, "word_loss": word_loss, "patch_loss": patch_loss,
            "word_weights": word_weights, "patch_weights": patch_weights,
        }


class TemporalCycleConsistencyLoss(nn.Module):
    """FMC + RMR between (S, T, D) image and report sequences, in both directions.

    ``valid`` (S, T) marks the positions that hold a study (default: all). Time stamps are
    ``j / T`` with T the tensor's time length, so a sequence padded to T keeps the stamps of
    the full-length grid. FMC and RMR are each a mean over the valid positions of all
    sequences with at least two valid positions; if there are none, every entry of the
    returned dict is a zero that is still connected to the inputs' graph.

    Returns a dict: ``loss``, ``fmc`` and ``rmr`` (each summed over the two directions).
    """

    def __init__(self, temperature: float = 0.1, variance_weight: float = 0.001, huber_delta: float = 2.0) -> None:
        super().__init__()
        self.temperature = _positive("temperature", temperature)
        self.variance_weight = float(variance_weight)
        self.huber_delta = _positive("huber_delta", huber_delta)

    def _align(self, source: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Per-position FMC and RMR terms (S, T) of source -> target."""
        steps = source.shape[1]
        pair_valid = valid[:, :, None] & valid[:, None, :]
        logits = -_squared_distances(source, target) / self.temperature
        fmc = -_masked_log_softmax(logits, pair_valid, dim=2).diagonal(dim1=1, dim2=2)

        soft_target = _masked_softmax(logits, pair_valid, dim=2) @ target
        cycle_logits = -_squared_distances(soft_target, source) / self.temperature
        beta = _masked_softmax(cycle_logits, pair_valid, dim=2)
        stamps = torch.arange(steps, device=source.device, dtype=source.dtype) / steps
        mean = beta @ stamps
        variance = (beta * (stamps[None, None, :] - mean[..., None]).square()).sum(dim=2) + VARIANCE_EPS
        error = stamps[None, :] - mean
        gaussian = error.square() / variance + self.variance_weight * torch.log(variance)
        # Huber branch exactly as the spec writes it: it replaces e_i, with no variance
        # scaling and no log-variance term. With stamps in [0, 1) it can only fire for
        # delta < 1 (MedST's delta = 2 never does; addenda 2.4 (7)).
        huber = self.huber_delta * (error.abs() - self.huber_delta / 2)
        rmr = torch.where(error.abs() < self.huber_delta, gaussian, huber)
        return fmc, rmr

    def forward(self, images: Tensor, reports: Tensor, valid: Tensor | None = None) -> dict[str, Tensor]:
        if images.shape != reports.shape or images.dim() != 3:
            raise ValueError(f"images and reports must both be (S, T, D), got {tuple(images.shape)} and "
                             f"{tuple(reports.shape)}")
        if valid is None:
            valid = torch.ones(images.shape[:2], dtype=torch.bool, device=images.device)
        elif valid.shape != images.shape[:2]:
            raise ValueError(f"valid must be (S, T) = {tuple(images.shape[:2])}, got {tuple(valid.shape)}")
        images, reports, valid = images.float(), reports.float(), valid.bool()

        contributes = valid & (valid.sum(dim=1) >= 2)[:, None]
        count = contributes.sum()
        if count == 0:
            zero = images.sum() * 0 + reports.sum() * 0
            return {"loss": zero, "fmc": zero, "rmr": zero}

        def mean(terms: Tensor) -> Tensor:
            return torch.where(contributes, terms, torch.zeros_like(terms)).sum() / count

        fmc_forward, rmr_forward = self._align(images, reports, valid)
        fmc_backward, rmr_backward = self._align(reports, images, valid)
        fmc = mean(fmc_forward) + mean(fmc_backward)
        rmr = mean(rmr_forward) + mean(rmr_backward)
        return {"loss": fmc + rmr, "fmc": fmc, "rmr": rmr}
