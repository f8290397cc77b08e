"""Synthetic missingness: seeded generators for tabular cells and whole modalities.

Tabular strategies follow TIP (spec section 1.8.1):
  * ``rvm`` random value masking: ``int(M * N * r)`` cells of a split, without
    replacement, drawn anew for every split (seeds 2021 / 2022 / 2023 for train / val / test);
  * ``rfm`` random feature masking: ``int(N * r)`` whole columns, the same in every split
    (seed 2022);
  * ``mifm`` / ``lifm``: the ``int(N * r)`` most / least important columns, ranked by a
    scikit-learn random forest fitted on the training split.
Modality strategies follow MMP/DCP: at rate ``eta`` a named modality is dropped, or with
``both`` (``all`` for more than two modalities) the incomplete samples are shared evenly
among the modalities, each losing one.

Draws (``generator``): ``tip`` is TIP's ``np.random.seed(s); np.random.choice(n, k,
replace=False)`` (numpy's legacy generator), so a holomodal RVM/RFM mask is the paper's,
column by column; ``numpy`` draws from ``np.random.default_rng(s)``. Both take the first
``k`` of one seeded permutation, so at one seed the masks are nested: a higher rate masks
every cell (column, row) that a lower rate masks, and curves over rates compare like with
like. ``follow_run_seed`` offsets a spec's seed by the run's seed, so that repeated runs
draw different masks and their spread includes the masks' noise.

A :class:`MissingnessPlan` is a list of :class:`MissingnessSpec`; fitted on the training
split and serialised with the run, it re-makes the very same masks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from holomodal.errors import ConfigError

TABULAR_KINDS = ("rvm", "rfm", "mifm", "lifm")
KINDS = TABULAR_KINDS + ("modality",)
# TIP seeds its RVM masks 2021/2022/2023 for train/val/test; offsets keep that pattern.
SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SEED = 2021
DEFAULT_SEEDS = {"rfm": 2022}  # TIP's RFM seed, the same for every split
GENERATORS = ("tip", "numpy")
# the draws of plans saved before ``generator`` existed (not nested); such a plan re-makes them
UNNESTED_GENERATOR = "numpy_choice"
# a run's seed moves a ``follow_run_seed`` spec's seed in steps this large, clear of the
# split offsets, so that no two runs share a mask
RUN_SEED_STRIDE = 1000


def draw_without_replacement(n: int, k: int, seed: int, generator: str = "tip") -> np.ndarray:
    """``k`` distinct indices of ``range(n)``: the first ``k`` of a seeded permutation, so a
    larger ``k`` at the same seed draws a superset."""
    if generator == "tip":
        # numpy's legacy choice without replacement is exactly a permutation's prefix
        return np.random.RandomState(seed).choice(n, k, replace=False)
    if generator == UNNESTED_GENERATOR:
        return np.random.default_rng(seed).choice(n, k, replace=False)
    return np.random.default_rng(seed).permutation(n)[:k]


def random_value_mask(n_rows: int, n_cols: int, rate: float, seed: int, generator: str = "tip") -> np.ndarray:
    """Exactly ``int(n_rows * n_cols * rate)`` cells set, chosen uniformly without replacement."""
    mask = np.zeros(n_rows * n_cols, dtype=bool)
    mask[draw_without_replacement(mask.size, int(mask.size * rate), seed, generator)] = True
    return mask.reshape(n_rows, n_cols)


def random_feature_columns(n_cols: int, rate: float, seed: int, generator: str = "tip") -> np.ndarray:
    """``int(n_cols * rate)`` column indices; the seed alone decides them, so splits agree."""
    return np.sort(draw_without_replacement(n_cols, int(n_cols * rate), seed, generator))


def importance_ranking(x: np.ndarray, y: np.ndarray, seed: int = 2022) -> np.ndarray:
    """Column indices from most to least important, by random-forest impurity importance.

    The forest (scikit-learn defaults, as in TIP) handles NaN cells natively, so observed
    values are ranked as they are, without imputation.
    """
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    y = np.asarray(y)
    # a regression target is one float value per row; multi-label targets are float too, but 2-D
    continuous = y.ndim == 1 and np.issubdtype(y.dtype, np.floating)
    forest = (RandomForestRegressor if continuous else RandomForestClassifier)(random_state=seed, n_jobs=1)
    forest.fit(np.asarray(x, dtype=np.float64), y)
    # stable sort keeps ties in column order, so rankings are reproducible
    return np.argsort(-forest.feature_importances_, kind="stable")


def modality_keep(
    n_rows: int, modalities: Sequence[str], rate: float, drop: str, seed: int
) -> dict[str, np.ndarray]:
    """Per-modality keep flags: ``round(n_rows * rate)`` rows lose a modality.

    ``drop`` names one modality, or ``both`` / ``all`` to share the incomplete rows evenly
    among ``modalities`` (each incomplete row loses exactly one of them).
    """
    keep = {m: np.ones(n_rows, dtype=bool) for m in modalities}
    # MMP/DCP publish no mask seeds to match: one generator, nested across rates as the others
    incomplete = draw_without_replacement(n_rows, int(round(n_rows * rate)), seed, "numpy")
    if drop in ("both", "all"):
        if drop == "both" and len(modalities) != 2:
            raise ConfigError(
                f"modality drop 'both' needs exactly two modalities, the data has {list(modalities)}; "
                "use 'all' or name one"
            )
        for i, part in enumerate(np.array_split(incomplete, len(modalities))):
            keep[modalities[i]][part] = False
    elif drop in keep:
        keep[drop][incomplete] = False
    else:
        raise ConfigError(f"cannot drop modality '{drop}': the data has {list(modalities)}")
    return keep


def resolve_drop(drop: str | None, modalities: list[str], types: dict[str, str]) -> str | None:
    """A modality spec's ``drop`` as a modality name: a name, ``both``/``all``, or a modality
    type held by exactly one modality (``text`` drops the text column, whatever its name)."""
    if drop in modalities or drop in ("both", "all") or drop is None:
        return drop
    of_type = [m for m in modalities if types.get(m) == drop]
    if len(of_type) == 1:
        return of_type[0]
    if len(of_type) > 1:
        raise ConfigError(f"cannot drop modality '{drop}': the data has several {drop} columns {of_type}; name one")
    return drop  # modality_keep names the known ones


@dataclass
class MissingnessSpec:
    """One synthetic missingness pattern.

    ``kind``: rvm, rfm, mifm, lifm or modality; ``rate``: fraction r (cells, columns or
    samples); ``drop``: for ``modality``, the modality name or ``both`` / ``all``;
    ``splits``: the splits it applies to; ``seed``: TIP's by default (2022 for rfm, else
    2021, plus 0 / 1 / 2 for train / val / test where masks differ by split);
    ``generator``: ``tip`` or ``numpy`` (module docstring); ``follow_run_seed``: add
    ``1000 x`` the run's seed to ``seed`` (:meth:`MissingnessPlan.for_run`).
    """

    kind: str
    rate: float
    seed: int | None = None
    drop: str | None = None
    splits: tuple[str, ...] = ("train", "val", "test")
    generator: str = "tip"
    follow_run_seed: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown missingness kind '{self.kind}' (known: {', '.join(KINDS)})")
        if self.generator not in (*GENERATORS, UNNESTED_GENERATOR):
            raise ConfigError(f"missingness generator must be one of {', '.join(GENERATORS)}, not '{self.generator}'")
        if self.seed == "run":  # the config's spelling of follow_run_seed with the default seed
            self.seed, self.follow_run_seed = None, True
        if self.seed is None:
            self.seed = DEFAULT_SEEDS.get(self.kind, DEFAULT_SEED)
        elif isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ConfigError(f"missingness seed must be an integer, got {self.seed!r}")
        if not 0.0 <= float(self.rate) <= 1.0:
            raise ConfigError(f"missingness rate must lie in [0, 1], got {self.rate}")
        if self.kind == "modality" and not self.drop:
            raise ConfigError("modality missingness needs 'drop': a modality name, 'both' or 'all'")
        self.splits = tuple(self.splits)

    @classmethod
    def parse(cls, text: str) -> "MissingnessSpec":
        """``rvm:0.3``, ``rfm:0.5@7`` (seed 7), ``rvm:0.5@run`` (the default seed, following the
        run's seed), ``modality:0.6:both``, ``modality:0.3:image@1``."""
        body, _, seed = text.partition("@")
        parts = body.split(":")
        if len(parts) < 2:
            raise ConfigError(f"cannot read missingness '{text}': expected KIND:RATE[:DROP][@SEED]")
        try:
            rate = float(parts[1])
        except ValueError:
            raise ConfigError(f"cannot read missingness '{text}': rate '{parts[1]}' is not a number") from None
        kwargs: dict[str, Any] = {"kind": parts[0], "rate": rate}
        if len(parts) > 2:
            kwargs["drop"] = parts[2]
        if seed == "run":
            kwargs["follow_run_seed"] = True
        elif seed:
            try:
                kwargs["seed"] = int(seed)
            except ValueError:
                raise ConfigError(f"cannot read missingness '{text}': seed '{seed}' is neither a number nor 'run'") from None
        return cls(**kwargs)


@dataclass
class SplitMasks:
    cell_missing: np.ndarray | None  # (rows, n_tabular) bool, True = synthetically missing
    keep: dict[str, np.ndarray]  # modality -> (rows,) bool, False = synthetically dropped


@dataclass
class MissingnessPlan:
    specs: list[MissingnessSpec] = field(default_factory=list)
    # fitted state: column ranking for mifm/lifm, learnt on the training split only
    ranking_: list[int] | None = None

    @property
    def needs_ranking(self) -> bool:
        return any(s.kind in ("mifm", "lifm") for s in self.specs)

    def fit(self, train_tabular: np.ndarray, train_target: np.ndarray, seed: int = 2022) -> "MissingnessPlan":
        if self.needs_ranking:
            self.ranking_ = importance_ranking(train_tabular, train_target, seed).tolist()
        return self

    def masked_columns(self, spec: MissingnessSpec, n_cols: int) -> np.ndarray:
        k = int(n_cols * spec.rate)
        if spec.kind == "rfm":
            return random_feature_columns(n_cols, spec.rate, spec.seed, spec.generator)
        if self.ranking_ is None:
            raise ConfigError(f"missingness '{spec.kind}' needs the plan fitted on the training split")
        order = np.asarray(self.ranking_)
        return np.sort(order[:k] if spec.kind == "mifm" else order[::-1][:k])

    def masks(self, split: str, n_rows: int, n_tabular: int, modalities: Sequence[str],
              types: dict[str, str] | None = None) -> SplitMasks:
        """The masks of ``split``. ``types`` (modality name -> type) lets a modality spec's
        ``drop`` name a type (``image``, ``text``: DCP's protocols) where one modality has it."""
        cells = np.zeros((n_rows, n_tabular), dtype=bool) if n_tabular else None
        keep = {m: np.ones(n_rows, dtype=bool) for m in modalities}
        for spec in self.specs:
            if split not in spec.splits:
                continue
            if spec.kind in TABULAR_KINDS:
                if cells is None:
                    raise ConfigError(f"missingness '{spec.kind}' needs tabular columns; the data has none")
                if spec.kind == "rvm":
                    seed = spec.seed + SPLIT_OFFSETS.get(split, 3)
                    cells |= random_value_mask(n_rows, n_tabular, spec.rate, seed, spec.generator)
                else:
                    cells[:, self.masked_columns(spec, n_tabular)] = True
            else:
                seed = spec.seed + SPLIT_OFFSETS.get(split, 3)
                drop = resolve_drop(spec.drop, list(modalities), types or {})
                for m, k in modality_keep(n_rows, list(modalities), spec.rate, drop, seed).items():
                    keep[m] &= k
        return SplitMasks(cells, keep)

    def to_dict(self) -> dict[str, Any]:
        return {"specs": [asdict(s) for s in self.specs], "ranking": self.ranking_}

    def for_run(self, run_seed: int) -> "MissingnessPlan":
        """The plan with each ``follow_run_seed`` spec's seed moved by the run's seed, written
        out as a plain seed so that the saved plan re-makes the same masks."""
        specs = [replace(s, seed=s.seed + RUN_SEED_STRIDE * int(run_seed), follow_run_seed=False) if s.follow_run_seed else s
                 for s in self.specs]
        return MissingnessPlan(specs, self.ranking_)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "MissingnessPlan":
        data = data or {}
        # a plan saved before generators were named drew its masks the unnested way
        specs = [MissingnessSpec(**{"generator": UNNESTED_GENERATOR, **s}) for s in data.get("specs", [])]
        return cls(specs, data.get("ranking"))

    @classmethod
    def from_config(cls, items: Sequence[str | dict] | None) -> "MissingnessPlan":
        specs = []
        for item in items or []:
            specs.append(MissingnessSpec.parse(item) if isinstance(item, str) else MissingnessSpec(**item))
        return cls(specs)
