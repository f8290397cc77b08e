"""Recovery models for DyMo (spec ``dymo.md`` sections 2, 7 and 12): each fills every
missing part of a test batch, and DyMo's selector then decides per sample which of the
recovered modalities to use.

A :class:`Recoverer` is fitted on the training split only and returns a :class:`Recovered`:
the same rows with values written where modalities (or tabular cells) were missing, the
batch's ``present`` and ``cell_missing`` left as they were (they still say what was
observed), and flags saying what was filled. The values written there break the batch
contract's "zero under a mask" on purpose, so the caller must not call
:meth:`~holomodal.batch.Batch.zero_missing` on the result; a model that should read the
filled cells needs ``cell_missing & ~cells``.

Categorical codes follow holomodal's preprocessor: code 0 is the "unknown" category (a value
never seen in training), codes 1..k-1 the known ones. A recovered categorical cell is always
a known category (1..k-1), or 0 for a column with no known category.

Recoverers:
  ``iterative``  scikit-learn IterativeImputer on the table (IMI), fitted on training rows only
  ``nearest``    copies the missing modality of the training row nearest in an embedding
  ``oracle``     the true values (upper bound; tests)
  ``shuffled``   values of a row of another class (misaligned recoveries DyMo should reject)
  ``tip``        the masked tabular reconstruction head of a TIP pre-training run
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from holomodal.batch import Batch
from holomodal.errors import ConfigError, DataError

TABULAR = "tabular"

Embed = Callable[[Batch, Tensor], Tensor]


@dataclass
class Recovered:
    """``batch``: the rows with their missing parts filled (``present`` and ``cell_missing``
    unchanged); ``recovered[m]`` (B,) bool: True where modality ``m`` was absent (for
    ``tabular``: had at least one missing cell) and now holds recovered values; ``cells``
    (B, n_cells) bool: the tabular cells filled (None without a table)."""

    batch: Batch
    recovered: dict[str, Tensor]
    cells: Tensor | None = None


class Recoverer:
    """Base class. ``modalities``: the modalities this recoverer can fill (None = every
    modality of the batch)."""

    modalities: tuple[str, ...] | None = None

    def fit(self, train: Batch) -> "Recoverer":
        """Learn from the training split only; returns self."""
        return self

    def recover(self, batch: Batch) -> Recovered:
        raise NotImplementedError

    def _wants(self, modality: str) -> bool:
        return self.modalities is None or modality in self.modalities


# ---- shared pieces -----------------------------------------------------------------------------
def missing_cells(batch: Batch) -> Tensor | None:
    """(B, n_cells) bool: the tabular cells a row lacks, counting every cell of an absent
    table; None without a table."""
    if TABULAR not in batch.inputs:
        return None
    tab = batch.inputs[TABULAR]
    n_cells = tab["categorical"].shape[1] + tab["continuous"].shape[1]
    absent = ~batch.present[TABULAR].bool()[:, None]
    if batch.cell_missing is None:
        return absent.expand(-1, n_cells).clone()
    return batch.cell_missing.bool() | absent


def _n_categorical(batch: Batch) -> int:
    return int(batch.inputs[TABULAR]["categorical"].shape[1])


def _needs(batch: Batch, modality: str, cells: Tensor | None) -> Tensor:
    """(B,) bool: rows whose ``modality`` has something to recover."""
    if modality == TABULAR:
        return cells.any(dim=1)
    return ~batch.present[modality].bool()


def _known_code_range(cardinalities: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(lowest, highest) valid recovered code per categorical column: 1..k-1, since code 0
    means "a value never seen in training" and is never a sensible recovery."""
    cards = torch.as_tensor([int(k) for k in cardinalities], dtype=torch.long)
    highest = (cards - 1).clamp(min=0)
    lowest = torch.where(cards > 1, torch.ones_like(cards), torch.zeros_like(cards))
    return lowest, highest


class _Filling:
    """The batch being filled: copies a tensor on its first write, so the input batch is
    never modified and untouched tensors are shared."""

    def __init__(self, batch: Batch) -> None:
        self.source = batch
        self.inputs = {m: dict(t) for m, t in batch.inputs.items()}
        self._copied: set[tuple[str, str]] = set()
        n = len(batch)
        self.recovered = {m: torch.zeros(n, dtype=torch.bool) for m in batch.present}
        cells = missing_cells(batch)
        self.cells = None if cells is None else torch.zeros_like(cells, dtype=torch.bool, device="cpu")

    def _writable(self, modality: str, key: str) -> Tensor:
        if (modality, key) not in self._copied:
            self.inputs[modality][key] = self.inputs[modality][key].clone()
            self._copied.add((modality, key))
        return self.inputs[modality][key]

    def modality(self, modality: str, rows: Tensor, donor: dict[str, Tensor], donor_rows: Tensor) -> None:
        """Every tensor of ``modality`` at ``rows`` from ``donor`` at ``donor_rows``."""
        if len(rows) == 0:
            return
        for key in self.inputs[modality]:
            if key not in donor:
                raise DataError(f"recovering modality '{modality}': the donor rows lack its input '{key}'")
            target = self._writable(modality, key)
            target[rows.to(target.device)] = donor[key][donor_rows.to(donor[key].device)].to(target.device, target.dtype)
        self.recovered[modality][rows.cpu()] = True

    def table_cells(self, rows: Tensor, fill: Tensor, categorical: Tensor, continuous: Tensor) -> None:
        """Cells ``fill`` (R, n_cells) of ``rows`` take ``categorical`` (R, Nc) / ``continuous``
        (R, Nn); every other cell keeps its value bit for bit."""
        if len(rows) == 0:
            return
        n_cat = categorical.shape[1]
        fill = fill.bool().cpu()
        for key, part, values in (("categorical", fill[:, :n_cat], categorical), ("continuous", fill[:, n_cat:], continuous)):
            if part.shape[1] == 0 or not part.any():
                continue
            target = self._writable(TABULAR, key)
            at = rows.to(target.device)
            target[at] = torch.where(part.to(target.device), values.to(target.device, target.dtype), target[at])
        rows = rows.cpu()
        self.cells[rows] |= fill
        self.recovered[TABULAR][rows] |= fill.any(dim=1)

    def result(self) -> Recovered:
        return Recovered(replace(self.source, inputs=self.inputs), self.recovered, self.cells)


def _observed_cells(batch: Batch) -> Tensor:
    return ~missing_cells(batch)


def _check_same_layout(batch: Batch, other: Batch, what: str) -> None:
    if len(other) != len(batch):
        raise DataError(f"{what}: the complete batch has {len(other)} rows, the batch to recover {len(batch)}; "
                        "rows are matched by position")
    for m, tensors in batch.inputs.items():
        if m not in other.inputs:
            raise DataError(f"{what}: the complete batch lacks modality '{m}'")
        for key, value in tensors.items():
            theirs = other.inputs[m].get(key)
            if theirs is None or theirs.shape[1:] != value.shape[1:]:
                shape = None if theirs is None else tuple(theirs.shape[1:])
                raise DataError(f"{what}: modality '{m}' input '{key}' has shape {tuple(value.shape[1:])} per row here "
                                f"and {shape} in the complete batch")


# ---- iterative imputation (IMI) ----------------------------------------------------------------
class IterativeImputerRecoverer(Recoverer):
    """The table's missing cells by scikit-learn's IterativeImputer (spec section 7, IMI):
    categorical columns from categorical columns (RandomForestClassifier,
    ``initial_strategy='most_frequent'``), continuous from continuous (the default
    BayesianRidge), as the original's ColumnTransformer does. Unlike the original, which
    fits on train + test rows, only the training rows are fitted (no transduction).

    Args:
        max_iter, random_state: of both imputers (the original's 10 and 42).
        n_estimators, n_jobs: of the random forest (kept small: it is refitted per column and round).
        cardinalities: codes per categorical column (the preprocessor's
            ``input_specs['tabular']['cardinalities']``); by default the largest code seen
            in training plus one.
    """

    modalities = (TABULAR,)

    def __init__(self, max_iter: int = 10, random_state: int = 42, n_estimators: int = 10, n_jobs: int = 1,
                 cardinalities: Sequence[int] | None = None) -> None:
        if max_iter < 0 or n_estimators < 1:
            raise ConfigError(f"iterative recoverer: max_iter must be >= 0 and n_estimators >= 1, "
                              f"got {max_iter} and {n_estimators}")
        self.max_iter = int(max_iter)
        self.random_state = random_state
        self.n_estimators = int(n_estimators)
        self.n_jobs = n_jobs
        self.cardinalities = None if cardinalities is None else [int(k) for k in cardinalities]
        self.categorical_imputer_: Any = None
        self.continuous_imputer_: Any = None
        self.cardinalities_: list[int] | None = None
        self.n_continuous_: int | None = None

    @staticmethod
    def matrices(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """(categorical codes, continuous values) as float64 with NaN in the missing cells."""
        if TABULAR not in batch.inputs:
            raise DataError(f"iterative recoverer: the batch has no '{TABULAR}' modality (it has {batch.modalities})")
        tab, cells = batch.inputs[TABULAR], missing_cells(batch).cpu().numpy()
        n_cat = _n_categorical(batch)
        cat = tab["categorical"].cpu().numpy().astype(np.float64)
        con = tab["continuous"].cpu().numpy().astype(np.float64)
        cat[cells[:, :n_cat]] = np.nan
        con[cells[:, n_cat:]] = np.nan
        return cat, con

    def _imputer(self, categorical: bool, n_columns: int) -> Any:
        from sklearn.experimental import enable_iterative_imputer  # noqa: F401  (the estimator is experimental)
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.impute import IterativeImputer

        # one column has no other column to regress on: the initial imputation is all there is
        rounds = self.max_iter if n_columns > 1 else 0
        # empty columns are kept so that the imputed matrix keeps the table's columns in place
        if categorical:
            forest = RandomForestClassifier(n_estimators=self.n_estimators, random_state=self.random_state, n_jobs=self.n_jobs)
            return IterativeImputer(estimator=forest, initial_strategy="most_frequent", max_iter=rounds,
                                    random_state=self.random_state, keep_empty_features=True)
        return IterativeImputer(max_iter=rounds, random_state=self.random_state, keep_empty_features=True)

    def fit(self, train: Batch) -> "IterativeImputerRecoverer":
        from sklearn.exceptions import ConvergenceWarning

        cat, con = self.matrices(train)
        if self.cardinalities is not None:
            if len(self.cardinalities) != cat.shape[1]:
                raise ConfigError(f"iterative recoverer: {len(self.cardinalities)} cardinalities given for "
                                  f"{cat.shape[1]} categorical columns")
            self.cardinalities_ = list(self.cardinalities)
        else:
            seen = np.where(np.isnan(cat), -1, cat).max(axis=0, initial=-1) if len(cat) else np.full(cat.shape[1], -1)
            self.cardinalities_ = [int(s) + 1 if s >= 0 else 1 for s in seen]
        with warnings.catch_warnings():
            # a forest's imputations never settle below the tolerance; the fixed max_iter is the stopping rule
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.categorical_imputer_ = self._imputer(True, cat.shape[1]).fit(cat) if cat.shape[1] else None
            self.continuous_imputer_ = self._imputer(False, con.shape[1]).fit(con) if con.shape[1] else None
        self.n_continuous_ = con.shape[1]
        return self

    def recover(self, batch: Batch) -> Recovered:
        from sklearn.exceptions import ConvergenceWarning

        if self.cardinalities_ is None:
            raise ConfigError("iterative recoverer: call fit(train) before recover")
        cat, con = self.matrices(batch)
        if cat.shape[1] != len(self.cardinalities_) or con.shape[1] != self.n_continuous_:
            raise DataError(f"iterative recoverer: fitted on {len(self.cardinalities_)} categorical and "
                            f"{self.n_continuous_} continuous columns, the batch has {cat.shape[1]} and {con.shape[1]}")
        filling = _Filling(batch)
        cells = missing_cells(batch).cpu()
        rows = torch.nonzero(cells.any(dim=1)).flatten()
        if len(rows) == 0:
            return filling.result()
        picked = rows.numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            cat_filled = self.categorical_imputer_.transform(cat[picked]) if cat.shape[1] else cat[picked]
            con_filled = self.continuous_imputer_.transform(con[picked]) if con.shape[1] else con[picked]
        lowest, highest = _known_code_range(self.cardinalities_)
        codes = torch.from_numpy(np.nan_to_num(np.rint(cat_filled))).long()
        codes = torch.maximum(torch.minimum(codes, highest), lowest)
        values = torch.from_numpy(np.nan_to_num(con_filled)).float()
        filling.table_cells(rows, cells[rows], codes, values)
        return filling.result()


# ---- nearest neighbour in an embedding ---------------------------------------------------------
class NearestNeighbourRecoverer(Recoverer):
    """Each absent modality copied from the training row nearest to the query in an embedding.

    For a query row, its observed modalities form a usage mask; query and training rows are
    embedded with ``embed(batch, usage)`` under that mask (a training row under the mask
    restricted to what it holds), and the neighbour is the training row at the smallest
    Euclidean distance (ties to the lowest index) among those that hold the missing
    modality, preferring rows that also hold every modality of the mask. All of the
    modality's tensors are copied. A table absent from the query is copied whole from the
    neighbour (the cells the neighbour lacks stay unfilled); a table with some cells
    missing gets each missing cell from the nearest training row that observed that cell.
    A row with no observed modality gets nothing.

    Args:
        embed: ``(batch, usage (B, M) bool) -> (B, D)``, e.g. a dynamic model's
            ``subset_features``; it gets the batches on the device they are on (``device``).
        modality_order: the modality of each usage column.
        batch_size: rows per ``embed`` call.
        device: where the batches passed to ``embed`` are moved (None: left where they are).
    """

    def __init__(self, embed: Embed, modality_order: Sequence[str], batch_size: int = 256,
                 device: torch.device | str | None = None) -> None:
        if not modality_order:
            raise ConfigError("nearest recoverer: modality_order is empty")
        self.embed = embed
        self.modality_order = list(modality_order)
        self.batch_size = int(batch_size)
        self.device = device
        self.train_: Batch | None = None
        self._train_embeddings: dict[tuple[bool, ...], Tensor] = {}

    def _usage(self, batch: Batch) -> Tensor:
        unknown = [m for m in self.modality_order if m not in batch.present]
        if unknown:
            raise ConfigError(f"nearest recoverer: modality_order names {unknown}, which the batch lacks "
                              f"(it has {list(batch.present)})")
        return torch.stack([batch.present[m].bool().cpu() for m in self.modality_order], dim=1)

    def fit(self, train: Batch) -> "NearestNeighbourRecoverer":
        self._usage(train)
        self.train_ = train
        self._train_embeddings = {}
        return self

    @torch.no_grad()
    def _embedded(self, batch: Batch, rows: Tensor, usage: Tensor) -> Tensor:
        parts = []
        for start in range(0, len(rows), self.batch_size):
            part = batch.select(rows[start:start + self.batch_size])
            if self.device is not None:
                part = part.to(self.device)
            z = self.embed(part, usage[start:start + self.batch_size].to(self.device or "cpu"))
            parts.append(z.detach().float().cpu())
        return torch.cat(parts)

    def train_embedding(self, pattern: Tensor) -> Tensor:
        """(N, D): every training row embedded under ``pattern`` (M,) restricted to what the
        row holds; computed once per pattern."""
        key = tuple(bool(v) for v in pattern.tolist())
        if key not in self._train_embeddings:
            held = self._usage(self.train_)
            usage = held & pattern[None]
            self._train_embeddings[key] = self._embedded(self.train_, torch.arange(len(self.train_)), usage)
        return self._train_embeddings[key]

    @staticmethod
    def _nearest(distance: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
        """(index of the nearest candidate per query row, whether it has one)."""
        masked = distance.masked_fill(~candidates[None], float("inf"))
        found = torch.isfinite(masked).any(dim=1)
        # argmin gives the first of equal minima: ties go to the lowest index
        return masked.argmin(dim=1), found

    def recover(self, batch: Batch) -> Recovered:
        if self.train_ is None:
            raise ConfigError("nearest recoverer: call fit(train) before recover")
        train = self.train_
        usage = self._usage(batch)
        held = self._usage(train)
        filling = _Filling(batch)
        cells = missing_cells(batch)
        train_observed = None
        if TABULAR in self.modality_order:
            cells = cells.cpu()
            train_observed = _observed_cells(train).cpu()
        needs = torch.stack([_needs(batch, m, cells).cpu() for m in self.modality_order], dim=1)
        active = needs.any(dim=1) & usage.any(dim=1)
        if not active.any():
            return filling.result()
        patterns, group = torch.unique(usage[active], dim=0, return_inverse=True)
        active_rows = torch.nonzero(active).flatten()
        for p, pattern in enumerate(patterns):
            rows = active_rows[group == p]
            query = self._embedded(batch, rows, pattern[None].expand(len(rows), -1))
            # the exact form: the matrix-product shortcut can make a row's distance to itself non-zero
            distance = torch.cdist(query[None], self.train_embedding(pattern)[None],
                                   compute_mode="donot_use_mm_for_euclid_dist")[0]
            covers = (held | ~pattern[None]).all(dim=1)
            shares = (held & pattern[None]).any(dim=1)
            for i, m in enumerate(self.modality_order):
                if pattern[i]:
                    continue
                holds = held[:, i] if m != TABULAR else held[:, i] & train_observed.any(dim=1)
                candidates = holds & covers if (holds & covers).any() else holds & shares
                donor, found = self._nearest(distance, candidates)
                take, donor = rows[found], donor[found]
                if m == TABULAR:
                    tab = train.inputs[TABULAR]
                    filling.table_cells(take, cells[take] & train_observed[donor],
                                        tab["categorical"][donor].cpu(), tab["continuous"][donor].cpu())
                else:
                    filling.modality(m, take, train.inputs[m], donor)
            if TABULAR in self.modality_order and pattern[self.modality_order.index(TABULAR)]:
                self._fill_cells_from_nearest(filling, rows, cells[rows], distance, covers, train_observed, train)
        return filling.result()

    def _fill_cells_from_nearest(self, filling: _Filling, rows: Tensor, cells: Tensor, distance: Tensor,
                                 covers: Tensor, train_observed: Tensor, train: Batch) -> None:
        """Each missing cell of a present table from the nearest training row observing it."""
        tab = train.inputs[TABULAR]
        n_cat = tab["categorical"].shape[1]
        categorical = torch.zeros(len(rows), n_cat, dtype=tab["categorical"].dtype)
        continuous = torch.zeros(len(rows), tab["continuous"].shape[1], dtype=tab["continuous"].dtype)
        fill = torch.zeros_like(cells)
        for j in torch.nonzero(cells.any(dim=0)).flatten().tolist():
            observing = train_observed[:, j]
            donor, found = self._nearest(distance, observing & covers if (observing & covers).any() else observing)
            fill[:, j] = cells[:, j] & found
            if j < n_cat:
                categorical[:, j] = tab["categorical"][donor, j].cpu()
            else:
                continuous[:, j - n_cat] = tab["continuous"][donor, j - n_cat].cpu()
        filling.table_cells(rows, fill, categorical, continuous)


# ---- true and misaligned values (tests, upper bounds) --------------------------------------------
class OracleRecoverer(Recoverer):
    """The true values: every missing part taken from ``complete``, the same rows before
    masking, matched by position. A part ``complete`` lacks too stays missing."""

    def __init__(self, complete: Batch) -> None:
        self.complete = complete

    def recover(self, batch: Batch) -> Recovered:
        complete = self.complete
        _check_same_layout(batch, complete, "oracle recoverer")
        filling = _Filling(batch)
        every = torch.arange(len(batch))
        for m in batch.present:
            if not self._wants(m):
                continue
            if m == TABULAR:
                fill = missing_cells(batch).cpu() & _observed_cells(complete).cpu()
                tab = complete.inputs[TABULAR]
                filling.table_cells(every, fill, tab["categorical"].cpu(), tab["continuous"].cpu())
            else:
                rows = torch.nonzero((~batch.present[m].bool() & complete.present[m].bool()).cpu()).flatten()
                filling.modality(m, rows, complete.inputs[m], rows)
        return filling.result()


class ShuffledRecoverer(Recoverer):
    """Each absent part filled from a row of ``complete`` whose target differs from the
    row's own (drawn with ``seed``, the same draw on every call): semantically misaligned
    recoveries, which DyMo should reject. Tables: an absent table or missing cells take the
    donor's values where the donor observed them. A row with no donor of another class
    holding the modality gets nothing."""

    def __init__(self, complete: Batch, seed: int = 0, chunk_rows: int = 1024) -> None:
        if complete.target is None:
            raise DataError("shuffled recoverer: the complete batch has no target, so 'another class' is undefined")
        self.complete = complete
        self.seed = int(seed)
        self.chunk_rows = int(chunk_rows)

    def _donors(self, own: Tensor, holds: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        donor_target = self.complete.target.cpu()
        donors, found = [], []
        for start in range(0, len(own), self.chunk_rows):
            part = own[start:start + self.chunk_rows]
            valid = (donor_target[None] != part[:, None]) & holds[None]
            # a uniform draw among the valid donors: the argmax of random scores over them
            scores = torch.rand(valid.shape, generator=generator).masked_fill(~valid, -1.0)
            donors.append(scores.argmax(dim=1))
            found.append(valid.any(dim=1))
        return torch.cat(donors), torch.cat(found)

    def recover(self, batch: Batch) -> Recovered:
        complete = self.complete
        target = batch.target if batch.target is not None else (complete.target if len(complete) == len(batch) else None)
        if target is None:
            raise DataError("shuffled recoverer: the batch has no target (and the complete batch has other rows)")
        target = target.cpu()
        filling = _Filling(batch)
        cells = missing_cells(batch)
        generator = torch.Generator().manual_seed(self.seed)
        for m in batch.present:
            if not self._wants(m):
                continue
            if m not in complete.inputs:
                raise DataError(f"shuffled recoverer: the complete batch lacks modality '{m}'")
            rows = torch.nonzero(_needs(batch, m, None if cells is None else cells.cpu()).cpu()).flatten()
            if len(rows) == 0:
                continue
            holds = complete.present[m].bool().cpu()
            if m == TABULAR:
                observed = _observed_cells(complete).cpu()
                holds = holds & observed.any(dim=1)
            donor, found = self._donors(target[rows], holds, generator)
            rows, donor = rows[found], donor[found]
            if m == TABULAR:
                tab = complete.inputs[TABULAR]
                filling.table_cells(rows, cells.cpu()[rows] & observed[donor], tab["categorical"][donor].cpu(),
                                    tab["continuous"][donor].cpu())
            else:
                filling.modality(m, rows, complete.inputs[m], donor)
        return filling.result()


# ---- TIP's masked tabular reconstruction -------------------------------------------------------
class TIPReconstructionRecoverer(Recoverer):
    """Missing tabular cells from the masked tabular reconstruction (MTR) head of a holomodal
    TIP pre-training run (spec section 7, ``ReconTIP``): the missing cells enter the tabular
    encoder as ``[MASK]`` (an absent table: every cell), the fused tokens go through the MTR
    head; a categorical cell takes the argmax over its own column's known categories, a
    continuous cell the regressor's output. Observed cells are kept.

    The batch must be encoded with the run's preprocessor (``preprocessor_state``, as
    ``tip`` fine-tuning does) and hold the run's image columns.

    Args:
        run: a pre-training run folder or its checkpoint.
        tabular_spec: the data's ``input_specs['tabular']``; compared with the run's in full
            (columns, cardinalities) when given. Without it only the column counts and the
            observed codes are checked.
        batch_size: rows per forward pass.
        device: where the backbone runs.
    """

    modalities = (TABULAR,)

    def __init__(self, run: str | Path, tabular_spec: dict[str, Any] | None = None, batch_size: int = 256,
                 device: torch.device | str = "cpu") -> None:
        from holomodal.losses import MaskedTabularReconstructionLoss
        from holomodal.methods.tip import TIPBackbone, backbone_state, read_pretrained, views_of

        record = read_pretrained(run, weights=True)
        if "mtr" not in (record.get("losses") or []):
            raise ConfigError(f"tip recoverer: the pre-training run '{run}' was trained with losses {record.get('losses')}, "
                              "without 'mtr', so it has no reconstruction head")
        config = copy.deepcopy(record["backbone"])
        spec = config["input_specs"][TABULAR]
        self.cardinalities = [int(k) for k in spec["cardinalities"]]
        self.n_continuous = int(spec["n_continuous"])
        self.columns = list(spec.get("columns") or [])
        self.views = views_of(config["image_modality"])
        self.preprocessor_state = record.get("preprocessor")
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        state = record["state_dict"]
        self.backbone = TIPBackbone(**config)
        self.backbone.load_state_dict(backbone_state(state), strict=True)
        fused_dim = self.backbone.fused_dim
        self.head = MaskedTabularReconstructionLoss(fused_dim, self.cardinalities, self.n_continuous)
        self.head.load_state_dict({k[len("mtr."):]: v for k, v in state.items() if k.startswith("mtr.")}, strict=True)
        self.backbone.to(self.device).eval()
        self.head.to(self.device).eval()
        if tabular_spec is not None:
            self._check_spec(tabular_spec)

    def _check_spec(self, spec: dict[str, Any]) -> None:
        theirs = {"cardinalities": [int(k) for k in spec.get("cardinalities", [])],
                  "n_continuous": int(spec.get("n_continuous", -1)), "columns": list(spec.get("columns") or [])}
        ours = {"cardinalities": self.cardinalities, "n_continuous": self.n_continuous, "columns": self.columns}
        for key in ("columns", "cardinalities", "n_continuous"):
            if key == "columns" and not (theirs[key] and ours[key]):
                continue
            if theirs[key] != ours[key]:
                raise ConfigError(f"tip recoverer: the table's {key} differ from the TIP run's: data {theirs[key]}, "
                                  f"run {ours[key]}")

    def _check_batch(self, batch: Batch) -> None:
        if TABULAR not in batch.inputs:
            raise ConfigError(f"tip recoverer: the batch has no '{TABULAR}' modality (it has {batch.modalities})")
        lacking = [v for v in self.views if v not in batch.inputs]
        if lacking:
            raise ConfigError(f"tip recoverer: the TIP run encodes image column(s) {self.views}; the batch lacks {lacking}")
        tab = batch.inputs[TABULAR]
        n_cat, n_con = tab["categorical"].shape[1], tab["continuous"].shape[1]
        if n_cat != len(self.cardinalities) or n_con != self.n_continuous:
            raise ConfigError(f"tip recoverer: the table has {n_cat} categorical and {n_con} continuous columns, the TIP "
                              f"run {len(self.cardinalities)} categorical (cardinalities {self.cardinalities}) and "
                              f"{self.n_continuous} continuous")
        if n_cat:
            observed = _observed_cells(batch)[:, :n_cat].cpu()
            codes = tab["categorical"].cpu().masked_fill(~observed, 0)
            limit = torch.as_tensor(self.cardinalities)
            over = (codes >= limit) | (codes < 0)
            if over.any():
                j = int(torch.nonzero(over.any(dim=0)).flatten()[0])
                name = self.columns[j] if j < len(self.columns) else f"#{j}"
                raise ConfigError(f"tip recoverer: categorical column '{name}' holds code {int(codes[:, j].max())}, "
                                  f"beyond the TIP run's cardinality {self.cardinalities[j]} (was the batch encoded "
                                  "with the run's preprocessor?)")

    @torch.no_grad()
    def predict(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(codes (B, Nc) long, values (B, Nn) float): the head's reconstruction of every cell."""
        lowest, highest = _known_code_range(self.cardinalities)
        offsets = torch.as_tensor([0, *self.cardinalities[:-1]], dtype=torch.long).cumsum(0)[: len(self.cardinalities)]
        codes, values = [], []
        for start in range(0, len(batch), self.batch_size):
            part = batch.select(torch.arange(start, min(start + self.batch_size, len(batch)))).to(self.device)
            table_tokens, _ = self.backbone.tabular_tokens(part)
            fused = self.backbone.fuse(table_tokens, self.backbone.encode_images(part))
            logits, regressed = self.head.predict(fused)
            if logits is not None:
                logits = logits.float().cpu()
                column_codes = []
                for j, k in enumerate(self.cardinalities):
                    lo, off = int(lowest[j]), int(offsets[j])
                    # only this column's known categories compete
                    column_codes.append(logits[:, j, off + lo: off + k].argmax(dim=1) + lo if k > lo else
                                        torch.full((len(part),), lo, dtype=torch.long))
                codes.append(torch.stack(column_codes, dim=1).clamp(min=lowest, max=highest))
            else:
                codes.append(torch.zeros(len(part), 0, dtype=torch.long))
            values.append(regressed.float().cpu() if regressed is not None else torch.zeros(len(part), 0))
        return torch.cat(codes), torch.cat(values)

    def recover(self, batch: Batch) -> Recovered:
        self._check_batch(batch)
        filling = _Filling(batch)
        cells = missing_cells(batch).cpu()
        rows = torch.nonzero(cells.any(dim=1)).flatten()
        if len(rows):
            codes, values = self.predict(batch.select(rows))
            filling.table_cells(rows, cells[rows], codes, values)
        return filling.result()


# ---- by name -----------------------------------------------------------------------------------
RECOVERERS: dict[str, type[Recoverer]] = {
    "iterative": IterativeImputerRecoverer,
    "nearest": NearestNeighbourRecoverer,
    "oracle": OracleRecoverer,
    "shuffled": ShuffledRecoverer,
    "tip": TIPReconstructionRecoverer,
}


def create_recoverer(name: str, **kwargs: Any) -> Recoverer:
    """The recoverer registered as ``name`` (iterative, nearest, oracle, shuffled, tip)."""
    import inspect

    if name not in RECOVERERS:
        raise ConfigError(f"unknown recoverer '{name}' (known: {', '.join(RECOVERERS)})")
    cls = RECOVERERS[name]
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        raise ConfigError(f"recoverer '{name}': {err}") from None
    return cls(**kwargs)
