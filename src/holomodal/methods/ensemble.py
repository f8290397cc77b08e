"""``ensemble``: greedy ensemble selection (Caruana et al., 2004) with weights per missingness pattern.

Members are trained methods (deep or classical) whose validation predictions are known.
For each *pattern*, a set of modalities present in a row, the validation split is
predicted again with the other modalities dropped, and a weighted average of the members
is chosen for that pattern by forward selection with replacement: start from the best
single member, add whichever member (possibly one already chosen) most improves the score
of the running average, and keep the best prefix. Because the first prefix is the best
single member, the chosen average is never worse on validation than its best member, on
complete rows or on any pattern; and where a modality is missing it leans on the members
that cope with that.

A test row is combined with the weights of its own pattern; a pattern never seen on
validation takes the weights of the seen pattern that shares the most modalities with it,
ties broken towards the pattern that assumes the fewest modalities the row lacks.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from holomodal.errors import ConfigError, DataError
from holomodal.methods import register_method
from holomodal.methods.base import ModelContext
from holomodal.schema import TABULAR

Pattern = frozenset[str]
Score = Callable[[np.ndarray, np.ndarray], float]


def all_patterns(modalities: Sequence[str]) -> list[Pattern]:
    """Every non-empty subset of ``modalities``, the complete one first."""
    mods = list(modalities)
    return [frozenset(c) for k in range(len(mods), 0, -1) for c in combinations(mods, k)]


def row_patterns(present: Mapping[str, np.ndarray], modalities: Sequence[str]) -> list[Pattern]:
    """The pattern of every row: the modalities present in it."""
    n = len(next(iter(present.values())))
    flags = np.stack([np.asarray(present[m], dtype=bool) for m in modalities], axis=1) if modalities else np.zeros((n, 0), bool)
    return [frozenset(m for m, ok in zip(modalities, row) if ok) for row in flags]


def greedy_selection(predictions: Sequence[np.ndarray], target: np.ndarray, score: Score, rounds: int = 25) -> np.ndarray:
    """Member weights (summing to 1) of the best prefix of forward selection with replacement."""
    scores = [score(p, target) for p in predictions]
    best = int(np.nanargmax(scores)) if not np.all(np.isnan(scores)) else 0
    counts = np.zeros(len(predictions))
    counts[best] = 1
    running = predictions[best].astype(np.float64)
    best_counts, best_score = counts.copy(), scores[best]
    for step in range(2, rounds + 1):
        trials = [score((running * (step - 1) + p) / step, target) for p in predictions]
        if np.all(np.isnan(trials)):
            break
        pick = int(np.nanargmax(trials))
        counts[pick] += 1
        running = (running * (step - 1) + predictions[pick]) / step
        if not trials[pick] <= best_score:  # strictly better, so ties keep the simpler ensemble
            best_counts, best_score = counts.copy(), trials[pick]
    return best_counts / best_counts.sum()


class PatternEnsemble:
    """Weights over ``members`` for each missingness pattern over ``modalities``."""

    def __init__(self, members: Sequence[str], modalities: Sequence[str], rounds: int = 25) -> None:
        self.members = list(members)
        self.modalities = list(modalities)
        self.rounds = int(rounds)
        self.weights_: dict[Pattern, np.ndarray] = {}
        self.scores_: dict[Pattern, dict[str, float]] = {}

    def fit(self, predictions: Mapping[Pattern, Sequence[np.ndarray]], target: np.ndarray, score: Score) -> "PatternEnsemble":
        """``predictions[pattern][i]``: member ``i``'s validation output with only ``pattern`` present."""
        for pattern, preds in predictions.items():
            self.weights_[pattern] = greedy_selection(preds, target, score, self.rounds)
            combined = self._mix(preds, self.weights_[pattern])
            self.scores_[pattern] = {**{m: score(p, target) for m, p in zip(self.members, preds)},
                                     "ensemble": score(combined, target)}
        return self

    @staticmethod
    def _mix(preds: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
        return sum(w * p.astype(np.float64) for w, p in zip(weights, preds) if w > 0)

    def weights_for(self, pattern: Pattern) -> np.ndarray:
        if pattern in self.weights_:
            return self.weights_[pattern]
        nearest = max(self.weights_, key=lambda p: (len(p & pattern), -len(p - pattern), len(p)))
        return self.weights_[nearest]

    def combine(self, predictions: Sequence[np.ndarray], present: Mapping[str, np.ndarray]) -> np.ndarray:
        """Each row's weighted average of the members' outputs, with its pattern's weights."""
        patterns = row_patterns(present, self.modalities)
        out = np.zeros_like(predictions[0], dtype=np.float64)
        for pattern in set(patterns):
            rows = np.fromiter((p == pattern for p in patterns), dtype=bool, count=len(patterns))
            weights = self.weights_for(pattern)
            out[rows] = sum(w * p[rows].astype(np.float64) for w, p in zip(weights, predictions) if w > 0)
        return out

    # ---- persistence: plain JSON ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def key(p: Pattern) -> str:
            return "+".join(m for m in self.modalities if m in p)

        return {
            "members": self.members, "modalities": self.modalities, "rounds": self.rounds,
            "weights": {key(p): w.tolist() for p, w in self.weights_.items()},
            "validation_scores": {key(p): s for p, s in self.scores_.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PatternEnsemble":
        ens = cls(data["members"], data["modalities"], data.get("rounds", 25))
        ens.weights_ = {frozenset(k.split("+")): np.asarray(w, dtype=np.float64) for k, w in data["weights"].items()}
        ens.scores_ = {frozenset(k.split("+")): s for k, s in data.get("validation_scores", {}).items()}
        return ens


# ---- the method ----------------------------------------------------------------------------
ENSEMBLE_FILE = "ensemble.json"
MEMBERS_DIR = "members"
# beyond this many modalities only the complete pattern and those missing one modality are
# fitted (2**k - 1 validation passes per member would be too many); other rows take the nearest
MAX_ALL_PATTERNS = 4


def default_members(context: ModelContext) -> list[dict[str, Any]]:
    """The deep default (late fusion), trees when there is a table, the linear model when there
    is a table or text."""
    kinds = set(context.modality_types.values())
    members: list[dict[str, Any]] = [{"method": "late_fusion", "model": {}}]
    if TABULAR in context.input_specs:
        members.append({"method": "gbdt", "model": {}})
    if TABULAR in context.input_specs or "text" in kinds:
        members.append({"method": "linear", "model": {}})
    return members


def member_names(members: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each member's folder name: its ``name``, else its method (numbered when repeated)."""
    names: list[str] = []
    for spec in members:
        base = str(spec.get("name") or spec["method"])
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def fitted_patterns(modalities: Sequence[str]) -> list[Pattern]:
    if len(modalities) <= MAX_ALL_PATTERNS:
        return all_patterns(modalities)
    full = frozenset(modalities)
    return [full, *(full - {m} for m in modalities)]


@register_method("ensemble")
class EnsembleMethod:
    """Greedy per-pattern ensemble of trained members (``holomodal.estimator.Classifier``s
    that encode the data as the ensemble does). :class:`~holomodal.estimator.Classifier`
    fits the members (``members``: a list of ``{method, model}`` mappings, optionally
    ``name``), then :meth:`fit_weights` chooses the weights on validation."""

    fits_directly = True

    def __init__(self, context: ModelContext, members: Sequence[Mapping[str, Any]] | None = None, rounds: int = 25,
                 seed: int = 0) -> None:
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ConfigError(f"method 'ensemble': rounds must be a whole number >= 1, got {rounds!r}")
        self.context = context
        self.specs = [dict(m) for m in (members if members is not None else default_members(context))]
        if not self.specs:
            raise ConfigError("method 'ensemble' needs at least one member (model.members)")
        for i, spec in enumerate(self.specs):
            if spec.get("method") == "ensemble":
                raise ConfigError(f"model.members[{i}]: an ensemble cannot be a member of an ensemble")
        self.rounds = rounds
        self.names = member_names(self.specs)
        self.members_: dict[str, Any] = {}
        self.ensemble_: PatternEnsemble | None = None

    @classmethod
    def resolve_options(cls, context: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        members = options.get("members")
        return {**options, "members": [dict(m) for m in (members if members is not None else default_members(context))]}

    @property
    def uses_text(self) -> bool:
        return any(getattr(m.model_, "uses_text", False) for m in self.members_.values())

    @property
    def modalities(self) -> list[str]:
        return list(self.context.input_specs)

    def set_members(self, members: Mapping[str, Any]) -> None:
        self.members_ = dict(members)
        self.names = list(self.members_)

    # ---- fit and predict -----------------------------------------------------------------
    def member_outputs(self, batch: Any, texts: dict[str, list[str]] | None) -> list[np.ndarray]:
        return [m._probabilities(batch, texts) for m in self.members_.values()]

    def fit_weights(self, batch: Any, texts: dict[str, list[str]] | None, score: Score) -> "EnsembleMethod":
        """Weights for every pattern, from the validation ``batch`` predicted with only that
        pattern's modalities present."""
        import torch

        target = batch.target.numpy()
        predictions = {}
        for pattern in fitted_patterns(self.modalities):
            dropped = batch.with_masks(present={m: torch.full((len(batch),), m in pattern) for m in batch.present})
            predictions[pattern] = self.member_outputs(dropped, texts)
        self.ensemble_ = PatternEnsemble(self.names, self.modalities, self.rounds).fit(predictions, target, score)
        return self

    def probabilities(self, batch: Any, texts: dict[str, list[str]] | None = None) -> Any:
        import torch

        if self.ensemble_ is None:
            raise DataError("the ensemble has no weights yet: fit it first")
        present = {m: p.numpy() for m, p in batch.present.items()}
        return torch.from_numpy(self.ensemble_.combine(self.member_outputs(batch, texts), present).astype(np.float32))

    # ---- persistence: JSON + the members' own model folders ------------------------------
    def save(self, folder: Path) -> None:
        import json

        folder.mkdir(parents=True, exist_ok=True)
        for name, member in self.members_.items():
            member.save(folder / MEMBERS_DIR / name)
        (folder / ENSEMBLE_FILE).write_text(json.dumps(self.ensemble_.to_dict(), indent=2))

    def load(self, folder: Path) -> "EnsembleMethod":
        from holomodal.estimator import Classifier
        from holomodal.safe_load import read_json, require_keys

        path = folder / ENSEMBLE_FILE
        data = read_json(path, "ensemble weights")
        require_keys(path, data, ("members", "modalities", "weights"))
        self.ensemble_ = PatternEnsemble.from_dict(data)
        self.set_members({name: Classifier.load(folder / MEMBERS_DIR / name) for name in self.ensemble_.members})
        return self
