"""DyMo's inference-time modality selection (spec ``dymo.md`` sections 3, 4, 6 and 11).

A frozen classifier that accepts any modality subset maps the inputs of a sample (observed
modalities plus recovered ones) and a usage mask (True = modality used) to logits and a
projected feature z. DyMo starts from the observed modalities and greedily adds recovered
ones while the reward

    R_u = Q(m') * G - Q(m),    m' = m + {u}

is positive, where Q is the max prototype-softmax probability against the overall class
prototypes, p is the intra-class similarity (ICS) score of z against the prototype of the
classifier's predicted class for the used subset, and G <= 1 penalises a drop of p.

Subsets are coded by :func:`subset_id`: bitmask of the used modalities minus one, so the
2**M - 1 non-empty subsets are 0 .. 2**M - 2 and :func:`all_subsets` lists them in that
order. Every statistic indexed by subset (:class:`SubsetStatistics`) uses this order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from holomodal.errors import ConfigError, DataError

SUBSET_METRICS = ("cos", "sqeuclid")
CALIBRATIONS = ("logratio", "ratio")

# keeps d / sigma finite for a class whose training rows all sit on the prototype
SCALE_EPSILON = 1e-12
# spec section 3: the guard inside both calibration formulas
CALIBRATION_EPSILON = 1e-9

Forward = Callable[[Tensor], "tuple[Tensor, Tensor]"]


def _rows(mask: Tensor, limit: int = 10) -> str:
    rows = torch.nonzero(mask).flatten().tolist()
    shown = ", ".join(str(r) for r in rows[:limit])
    return f"[{shown}{', ...' if len(rows) > limit else ''}] ({len(rows)} rows)"


def _check_metric(metric: str) -> str:
    if metric not in SUBSET_METRICS:
        raise ConfigError(f"unknown subset metric '{metric}' ({', '.join(SUBSET_METRICS)})")
    return metric


def subset_id(usage: Tensor) -> Tensor:
    """(B, M) bool, True = modality used -> (B,) long: sum of 2**i over used i, minus 1."""
    if usage.dim() != 2:
        raise DataError(f"usage mask must be (batch, modalities), got shape {tuple(usage.shape)}")
    used = usage.to(torch.bool)
    empty = ~used.any(dim=1)
    if empty.any():
        raise DataError(f"no modality to use in rows {_rows(empty)}")
    weights = 2 ** torch.arange(used.shape[1], device=used.device, dtype=torch.long)
    return (used.long() * weights).sum(dim=1) - 1


def all_subsets(num_modalities: int) -> Tensor:
    """(2**M - 1, M) bool: row s is the usage mask whose :func:`subset_id` is s."""
    if num_modalities < 1:
        raise ConfigError(f"number of modalities must be at least 1, got {num_modalities}")
    codes = torch.arange(1, 2**num_modalities, dtype=torch.long)
    return ((codes[:, None] >> torch.arange(num_modalities, dtype=torch.long)) & 1).to(torch.bool)


def _distance(z: Tensor, prototypes: Tensor, metric: str) -> Tensor:
    """Row-wise distance of z (..., D) to its own prototype (..., D): 1 - z.c (cos) or
    ||z - c||_2 (sqeuclid, not squared), as in spec section 3 (b)."""
    if metric == "cos":
        return 1.0 - (z * prototypes).sum(dim=-1)
    return (z - prototypes).norm(dim=-1)


@dataclass
class SubsetStatistics:
    """Per-subset class prototypes ``prototypes`` (S, C, D), their scales ``scales`` (S, C),
    the overall prototypes ``overall`` (C, D) = mean over subsets, and the geometry
    ``metric`` ("cos" or "sqeuclid") they were measured in. S = 2**M - 1."""

    prototypes: Tensor
    scales: Tensor
    overall: Tensor
    metric: str

    def __post_init__(self) -> None:
        _check_metric(self.metric)
        if self.prototypes.dim() != 3:
            raise DataError(f"prototypes must be (subsets, classes, dim), got shape {tuple(self.prototypes.shape)}")
        subsets, classes, dim = self.prototypes.shape
        if not _is_subset_count(subsets):
            raise DataError(f"prototypes have {subsets} subsets; a subset count is 2**M - 1 (1, 3, 7, 15, ...)")
        if tuple(self.scales.shape) != (subsets, classes):
            raise DataError(f"scales must have shape {(subsets, classes)}, got {tuple(self.scales.shape)}")
        if tuple(self.overall.shape) != (classes, dim):
            raise DataError(f"overall prototypes must have shape {(classes, dim)}, got {tuple(self.overall.shape)}")

    @property
    def num_modalities(self) -> int:
        return (self.prototypes.shape[0] + 1).bit_length() - 1

    @property
    def num_classes(self) -> int:
        return self.prototypes.shape[1]

    @property
    def dim(self) -> int:
        return self.prototypes.shape[2]

    def to(self, device: torch.device | str) -> SubsetStatistics:
        return SubsetStatistics(self.prototypes.to(device), self.scales.to(device), self.overall.to(device), self.metric)

    @classmethod
    def fit(cls, features: Tensor, labels: Tensor, num_classes: int, metric: str) -> SubsetStatistics:
        """Statistics of the training set (spec section 6) from ``features`` (S, N, D), the
        projected feature of every row under every subset in :func:`all_subsets` order, and
        the ground-truth ``labels`` (N,).

        c_{s,k} is the mean z of class k (not re-normalised); sigma_{s,k} = sqrt(mean d^2)
        over class k's rows, the RMS the released notebook gets by taking the std of
        {d, -d} (spec pitfall 4), i.e. the scale of a zero-mean normal fitted to d."""
        _check_metric(metric)
        if features.dim() != 3:
            raise DataError(f"features must be (subsets, rows, dim), got shape {tuple(features.shape)}")
        subsets, rows, _ = features.shape
        if not _is_subset_count(subsets):
            raise DataError(f"features have {subsets} subsets; a subset count is 2**M - 1 (1, 3, 7, 15, ...)")
        if labels.dim() != 1 or labels.shape[0] != rows:
            raise DataError(f"labels must be ({rows},) to match the features, got shape {tuple(labels.shape)}")
        labels = labels.to(device=features.device, dtype=torch.long)
        outside = (labels < 0) | (labels >= num_classes)
        if outside.any():
            raise DataError(f"labels outside 0..{num_classes - 1} in rows {_rows(outside)}")
        counts = torch.bincount(labels, minlength=num_classes)
        if (counts == 0).any():
            missing = torch.nonzero(counts == 0).flatten().tolist()
            raise DataError(f"no training row of class {', '.join(str(k) for k in missing)}: its prototype is undefined")

        z = features.to(torch.float64)
        one_hot = torch.nn.functional.one_hot(labels, num_classes).to(torch.float64)  # (N, C)
        prototypes = torch.einsum("snd,nk->skd", z, one_hot) / counts.to(torch.float64)[None, :, None]
        distances = _distance(z, prototypes[:, labels], metric)  # (S, N), each row against its own class
        scales = ((distances**2) @ one_hot / counts.to(torch.float64)).sqrt()
        dtype = features.dtype if features.is_floating_point() else torch.float32
        return cls(prototypes.to(dtype), scales.to(dtype), prototypes.mean(dim=0).to(dtype), metric)

    def to_tensors(self, prefix: str = "dymo.") -> dict[str, Tensor]:
        """Plain tensors for a safetensors file; the metric is stored as its index in
        :data:`SUBSET_METRICS` (uint8), so no string or pickle is needed."""
        return {
            f"{prefix}prototypes": self.prototypes.detach().contiguous(),
            f"{prefix}scales": self.scales.detach().contiguous(),
            f"{prefix}overall": self.overall.detach().contiguous(),
            f"{prefix}metric": torch.tensor(SUBSET_METRICS.index(self.metric), dtype=torch.uint8),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str = "dymo.") -> SubsetStatistics:
        names = ("prototypes", "scales", "overall", "metric")
        missing = [f"{prefix}{name}" for name in names if f"{prefix}{name}" not in tensors]
        if missing:
            raise DataError(f"subset statistics lack the tensors {', '.join(missing)}")
        code = int(tensors[f"{prefix}metric"].item())
        if not 0 <= code < len(SUBSET_METRICS):
            raise DataError(f"tensor {prefix}metric holds {code}, not a metric code (0 .. {len(SUBSET_METRICS) - 1})")
        return cls(tensors[f"{prefix}prototypes"], tensors[f"{prefix}scales"], tensors[f"{prefix}overall"],
                   SUBSET_METRICS[code])


def _is_subset_count(subsets: int) -> bool:
    return subsets >= 1 and (subsets + 1) & subsets == 0


def reward(q_without: Tensor, p_without: Tensor, q_with: Tensor, p_with: Tensor, calibration: str) -> Tensor:
    """R = Q(m') G - Q(m), elementwise (spec section 3 (c)). G = 1 where p(m') >= p(m), else
    "logratio": log p(m) / log(p(m') + 1e-9), or "ratio": p(m') / (p(m) + 1e-9). The
    released code uses "logratio" for the cosine runs on PolyMNIST/MST/CelebA/DVM and
    "ratio" for CAD/Infarction and every Euclidean run (spec pitfall 2)."""
    if calibration == "logratio":
        penalty = torch.log(p_without) / torch.log(p_with + CALIBRATION_EPSILON)
    elif calibration == "ratio":
        penalty = p_with / (p_without + CALIBRATION_EPSILON)
    else:
        raise ConfigError(f"unknown calibration '{calibration}' ({', '.join(CALIBRATIONS)})")
    # G is meant to lie in [0, 1]: the 1e-9 can lift log(p(m') + 1e-9) to >= 0 when p(m') is
    # within 1e-9 of 1, which would make the log-ratio infinite or negative
    penalty = penalty.nan_to_num(nan=0.0).clamp(0.0, 1.0)
    calibration_factor = torch.where(p_with >= p_without, torch.ones_like(penalty), penalty)
    return q_with * calibration_factor - q_without


def quality(z: Tensor, stats: SubsetStatistics, temperature: float = 0.1) -> Tensor:
    """Q (B,): max_k softmax_k(z.c_k / tau) (cos) or softmax_k(-||z - c_k||^2 / tau)
    (sqeuclid), against the overall prototypes c_k."""
    z = z.float()
    overall = stats.overall.to(device=z.device, dtype=torch.float32)
    if stats.metric == "cos":
        scores = z @ overall.T
    else:
        # -||z - c||^2 = 2 z.c - ||c||^2 - ||z||^2; ||z||^2 is the same for every class and
        # cancels in the softmax, so it is left out rather than subtracted
        scores = 2.0 * (z @ overall.T) - (overall**2).sum(dim=1)[None, :]
    return torch.softmax(scores / temperature, dim=1).max(dim=1).values


def ics(z: Tensor, logits: Tensor, usage: Tensor, stats: SubsetStatistics) -> Tensor:
    """Intra-class similarity p (B,) = 2 (1 - Phi(d / sigma)) of z against the prototype of
    the used subset and the class the CLASSIFIER predicts (argmax logits), not the class
    the prototypes predict in :func:`quality`; the released code mixes the two this way
    (spec pitfall 3) and so does this function."""
    z = z.float()
    predicted = logits.argmax(dim=1)
    subsets = subset_id(usage.to(z.device))
    prototypes = stats.prototypes.to(device=z.device, dtype=torch.float32)[subsets, predicted]
    scales = stats.scales.to(device=z.device, dtype=torch.float32)[subsets, predicted]
    distance = _distance(z, prototypes, stats.metric)
    # 2 (1 - Phi(x)) = erfc(x / sqrt 2), which keeps its precision in the far tail
    p = torch.special.erfc(distance / (scales.clamp_min(SCALE_EPSILON) * math.sqrt(2.0)))
    # p in (0, 1]: a cosine distance is negative when z is not unit-length or z.c > 1, which
    # would give p > 1; and the tail underflows to 0 for d >> sigma, where log p (logratio) breaks
    return p.clamp(min=torch.finfo(p.dtype).tiny, max=1.0)


@dataclass
class SelectionResult:
    """What :meth:`DyMoSelector.select` chose.

    ``probabilities`` (B, C): softmax of the classifier's logits under the final usage.
    ``usage`` (B, M): the final usage mask (observed + accepted recovered modalities).
    ``rewards``: one (B, M) tensor per greedy round, NaN where no reward was computed.
    ``forward_passes``: calls of ``forward``; ``rounds``: greedy rounds run.
    ``started_from_recovered`` (B,): rows without an observed modality, which started from
    their best-quality recovered modality before the greedy rounds.
    """

    probabilities: Tensor
    usage: Tensor
    rewards: list[Tensor] = field(default_factory=list)
    forward_passes: int = 0
    rounds: int = 0
    started_from_recovered: Tensor | None = None


class DyMoSelector:
    """Greedy per-sample modality selection (spec section 4).

    Args:
        stats: the training set's :class:`SubsetStatistics`, fitted with the same model.
        temperature: tau of :func:`quality` (DyMo: 0.1).
        calibration: "logratio" or "ratio" (see :func:`reward`).

    ``forward(usage)`` must run the frozen model (eval mode) on the whole batch, whose
    inputs already hold the observed and recovered modalities, with the per-sample usage
    mask (B, M) and return ``(logits (B, C), z (B, D))``. Row b's outputs must depend only
    on row b's inputs and mask: rows are evaluated under different masks in one pass.
    Pass the masks on the model's device: each pass's outputs are moved to the masks' device.

    Passes: each round runs one pass per modality that is still a candidate for some row
    (the rows that do not try that modality keep their current mask in it). The outputs
    under the current mask, the "without u" side of every reward, are kept from the pass
    that produced them: the pass of the modality a row accepted in the previous round, or
    any pass in which the row kept its mask. So a separate pass with the current masks runs
    only when some row's outputs under its current mask are unknown (usually once, in the
    first round), and the final prediction needs no pass of its own unless nothing ran.
    With U_t the modalities open in round t, passes <= 1 + sum_t |U_t|, plus one pass per
    modality recovered for some row without an observed one (the start rule).
    """

    def __init__(self, stats: SubsetStatistics, temperature: float = 0.1, calibration: str = "logratio") -> None:
        if calibration not in CALIBRATIONS:
            raise ConfigError(f"unknown calibration '{calibration}' ({', '.join(CALIBRATIONS)})")
        if not temperature > 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        self.stats = stats
        self.temperature = float(temperature)
        self.calibration = calibration

    def select(self, forward: Forward, observed: Tensor, recovered: Tensor) -> SelectionResult:
        observed, recovered = self._check_masks(observed, recovered)
        run = _CachedForward(forward, self.stats, observed)
        candidates = recovered & ~observed
        cold = ~observed.any(dim=1)
        hopeless = cold & ~candidates.any(dim=1)
        if hopeless.any():
            raise DataError(f"no observed and no recovered modality in rows {_rows(hopeless)}")

        if cold.any():
            self._start_from_best_quality(run, cold, candidates)

        rejected = torch.zeros_like(observed)
        finished = torch.zeros_like(cold)
        history: list[Tensor] = []
        while True:
            open_ = candidates & ~run.usage & ~rejected & ~finished[:, None]
            if not open_.any():
                break
            round_rewards = torch.full(observed.shape, float("nan"), device=observed.device)
            tried = {}
            for u in torch.nonzero(open_.any(dim=0)).flatten().tolist():
                trial = run.usage.clone()
                trial[open_[:, u], u] = True
                logits, z = run(trial)
                tried[u] = (logits, z, quality(z, self.stats, self.temperature), ics(z, logits, trial, self.stats))
            # the "without u" side is the same for every u: one pass at most per round, none
            # when the earlier passes already gave every row its current outputs
            if not run.known.all():
                run(run.usage.clone())
            q_without = quality(run.z, self.stats, self.temperature)
            p_without = ics(run.z, run.logits, run.usage, self.stats)
            for u, (_, _, q_with, p_with) in tried.items():
                r = reward(q_without, p_without, q_with, p_with, self.calibration).to(round_rewards)
                round_rewards[:, u] = torch.where(open_[:, u], r, torch.full_like(r, float("nan")))
            history.append(round_rewards)

            # NaN compares False: modalities not tried this round are neither rejected nor accepted
            rejected |= round_rewards < 0
            positive = round_rewards > 0
            finished |= ~positive.any(dim=1)
            best = round_rewards.nan_to_num(nan=-math.inf).argmax(dim=1)
            accept = ~finished
            for u, (logits, z, _, _) in tried.items():
                rows = accept & (best == u)
                if rows.any():
                    run.accept(rows, u, logits, z)

        if run.logits is None or not run.known.all():
            run(run.usage.clone())
        return SelectionResult(
            probabilities=torch.softmax(run.logits.float(), dim=1),
            usage=run.usage,
            rewards=history,
            forward_passes=run.calls,
            rounds=len(history),
            started_from_recovered=cold,
        )

    def _start_from_best_quality(self, run: _CachedForward, cold: Tensor, candidates: Tensor) -> None:
        """Rows with no observed modality have no subset to compute a reward against (the
        empty subset has no statistics, spec pitfall 6): each starts with the recovered
        modality whose single-modality feature has the highest quality Q, and the greedy
        rounds go on from there. One pass per modality recovered for some such row."""
        best_quality = torch.full(cold.shape, -math.inf, device=cold.device)
        best = torch.full(cold.shape, -1, dtype=torch.long, device=cold.device)
        outputs = {}
        # a placeholder mask for rows not trying u (their output is ignored): the current
        # mask, or for another cold row its first recovered modality, so no mask is empty
        first = candidates.long().argmax(dim=1)
        placeholder = run.usage.clone()
        placeholder[cold, first[cold]] = True
        for u in torch.nonzero((candidates & cold[:, None]).any(dim=0)).flatten().tolist():
            trying = cold & candidates[:, u]
            trial = placeholder.clone()
            trial[trying] = False
            trial[trying, u] = True
            logits, z = run(trial)
            outputs[u] = (logits, z)
            q = quality(z, self.stats, self.temperature).to(best_quality)
            better = trying & (q > best_quality)
            best_quality = torch.where(better, q, best_quality)
            best = torch.where(better, torch.full_like(best, u), best)
        for u, (logits, z) in outputs.items():
            rows = cold & (best == u)
            if rows.any():
                run.accept(rows, u, logits, z)

    def _check_masks(self, observed: Tensor, recovered: Tensor) -> tuple[Tensor, Tensor]:
        if observed.dim() != 2 or tuple(recovered.shape) != tuple(observed.shape):
            raise DataError(f"observed and recovered masks must both be (batch, modalities), got shapes "
                            f"{tuple(observed.shape)} and {tuple(recovered.shape)}")
        if observed.shape[1] != self.stats.num_modalities:
            raise ConfigError(f"the masks have {observed.shape[1]} modalities, the subset statistics "
                              f"{self.stats.num_modalities}")
        return observed.to(torch.bool), recovered.to(device=observed.device, dtype=torch.bool)


class _CachedForward:
    """Calls ``forward`` without gradients, counts the calls, and keeps every row's logits
    and z under its current usage mask from whichever pass computed them."""

    def __init__(self, forward: Forward, stats: SubsetStatistics, observed: Tensor) -> None:
        self.forward = forward
        self.stats = stats
        self.usage = observed.clone()
        self.known = torch.zeros(observed.shape[0], dtype=torch.bool, device=observed.device)
        self.logits: Tensor | None = None
        self.z: Tensor | None = None
        self.calls = 0

    def __call__(self, trial: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            logits, z = self.forward(trial)
        self.calls += 1
        rows = trial.shape[0]
        if logits.dim() != 2 or logits.shape[0] != rows or logits.shape[1] != self.stats.num_classes:
            raise ConfigError(f"forward returned logits of shape {tuple(logits.shape)}, expected "
                              f"({rows}, {self.stats.num_classes}) to match the subset statistics")
        if z.dim() != 2 or z.shape[0] != rows or z.shape[1] != self.stats.dim:
            raise ConfigError(f"forward returned z of shape {tuple(z.shape)}, expected "
                              f"({rows}, {self.stats.dim}) to match the subset statistics")
        logits, z = logits.to(self.usage.device), z.to(self.usage.device)
        if self.logits is None:
            self.logits, self.z = torch.zeros_like(logits), torch.zeros_like(z)
        same = (trial == self.usage).all(dim=1) & self.usage.any(dim=1)
        self._store(same, logits, z)
        return logits, z

    def accept(self, rows: Tensor, modality: int, logits: Tensor, z: Tensor) -> None:
        """Add ``modality`` to ``rows``' masks; their outputs under the new mask are the
        ``logits``, ``z`` of the pass that tried it."""
        self.usage[rows, modality] = True
        self._store(rows, logits, z)

    def _store(self, rows: Tensor, logits: Tensor, z: Tensor) -> None:
        self.logits = torch.where(rows[:, None], logits, self.logits)
        self.z = torch.where(rows[:, None], z, self.z)
        self.known |= rows


__all__ = [
    "CALIBRATIONS", "SUBSET_METRICS", "DyMoSelector", "SelectionResult", "SubsetStatistics",
    "all_subsets", "ics", "quality", "reward", "subset_id",
]
