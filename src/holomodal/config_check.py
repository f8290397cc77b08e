"""The merged configuration, checked before any data is read or any file is written.

Keys are checked against whatever reads them: the sections of ``default.yaml``,
``lightning.Trainer``'s arguments, the chosen optimiser's, and the constructors of the
chosen method, encoders, fusion and losses (their signatures, so a new option needs no
change here). A refusal names the dotted key, where it was set (config file, override,
defaults) and the closest valid names.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import typing
from typing import Any, Callable, Iterable, Mapping, NoReturn

import lightning as L
import torch
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.strategies import StrategyRegistry
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from holomodal.augment import PRESETS, ImageAugmentation
from holomodal.config import DEFAULT_SOURCE, config_sources, default_config
from holomodal.data import get_loader, list_datasets
from holomodal.encoders import ENCODERS
from holomodal.errors import ConfigError
from holomodal.fusion import FUSIONS
from holomodal.fusion.cross_attention import CrossAttentionFusion
from holomodal.losses import ImageTabularContrastiveLoss, MaskedTabularReconstructionLoss
from holomodal.methods import METHODS
from holomodal.methods.base import make_metrics, mlp_head
from holomodal.methods.late_fusion import LateFusion
from holomodal.methods.tip import DEFAULT_IMAGE_ENCODER, DEFAULT_TABULAR_ENCODER, TABULAR
from holomodal.missingness import MissingnessPlan, MissingnessSpec
from holomodal.pretraining import PRETRAINING
from holomodal.training import EARLY_STOPPING, KNOWN_LOGGERS, check_loggers

PYTHON_SOURCE = "the configuration given in Python"
# the optimisers holomodal.methods.base.build_optimizer makes, by name
OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}
# optim keys the methods' configure_optimizers read themselves, and the schedulers they know
OWN_OPTIM_KEYS = {"train": ("name", "scheduler", "warmup_epochs", "warmup_fraction"),
                  "pretrain": ("name", "scheduler", "warmup_epochs", "warmup_fraction")}
SCHEDULERS = {"train": (None, "none", "cosine", "warmup_cosine", "warmup_linear"), "pretrain": (None, "none", "warmup_cosine")}
RESERVED_OPTIM = {"params": "holomodal passes the model's parameters", "fused": "holomodal fuses Adam/AdamW itself, except where gradients are clipped"}
FUSED = ("adam", "adamw")  # build_optimizer fuses these unless the run clips gradients
RESERVED_TRAINER = {
    "logger": "holomodal makes the loggers: set run.loggers",
    "callbacks": "holomodal adds its own callbacks",
    "plugins": "holomodal sets its checkpoint writer",
    "default_root_dir": "the run folder is run.dir",
    "enable_model_summary": "holomodal sets it",
    "enable_checkpointing": "holomodal always checkpoints: --resume and the best-epoch model need it",
}
SEED_RANGE = (0, 2**32 - 1)  # what numpy, and so Lightning's seed_everything, accepts
# nested model options that are keyword options of one factory: (factory, fixed, what)
SUB_OPTIONS: dict[str, tuple[Callable[..., Any], tuple[str, ...], str]] = {
    "head": (mlp_head, ("in_dim", "out_dim"), "the head"),
    "interaction": (CrossAttentionFusion, ("input_dims", "query"), "tip's interaction module"),
    "itc": (ImageTabularContrastiveLoss, ("image_dim", "tabular_dim"), "the ITC loss"),
    "mtr": (MaskedTabularReconstructionLoss, ("dim", "cardinalities", "n_continuous"), "the MTR loss"),
}
AUGMENTATIONS = ("augment", "finetune_augment")
# the encoder a method builds for an entry of model.encoders that names none
IMPLIED_ENCODERS: dict[str, Callable[[str], str]] = {
    "tip": lambda modality: (DEFAULT_TABULAR_ENCODER if modality == TABULAR else DEFAULT_IMAGE_ENCODER)["name"],
}
_MISSING = object()


@dataclasses.dataclass
class Options:
    """The keyword options a factory takes from a configuration."""

    names: list[str]
    open: bool  # it also takes **kwargs
    fixed: tuple[str, ...]  # passed by holomodal, never by the configuration


def options_of(factory: Callable[..., Any], fixed: Iterable[str] = (), skip: int = 0) -> Options:
    """``factory``'s keyword options, less its first ``skip`` parameters and ``fixed``."""
    fixed = tuple(fixed)
    params = list(inspect.signature(factory).parameters.values())[skip:]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in params if p.kind in kinds and p.name not in fixed]
    return Options(names, any(p.kind == p.VAR_KEYWORD for p in params), fixed)


def checked_config(cfg: DictConfig | Mapping[str, Any], mode: str = "train") -> dict[str, Any]:
    """The configuration, resolved to plain data, once every key and every value that can be
    checked without the data is valid; ``mode`` is ``train`` or ``pretrain``. Top-level keys
    used only in ``${...}`` interpolations are left out: they live on in their uses."""
    sources, defaults = config_sources(cfg), OmegaConf.to_container(default_config())
    raw = resolved = dict(cfg)
    if isinstance(cfg, DictConfig):
        raw = OmegaConf.to_container(cfg, resolve=False)
        try:
            resolved = OmegaConf.to_container(cfg, resolve=True)
        except OmegaConfBaseException as exc:
            _Checker(raw, sources, defaults).fail(str(exc.full_key), f"cannot be resolved: {str(exc).splitlines()[0]}")
    variables = _Checker(resolved, sources, defaults).check(mode, _interpolated_names(raw))
    return {k: v for k, v in resolved.items() if k not in variables}


def _interpolated_names(value: Any) -> set[str]:
    """First names of the ``${name...}`` interpolations anywhere in ``value``."""
    if isinstance(value, dict):
        return set().union(*(_interpolated_names(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_interpolated_names(v) for v in value))
    return set(re.findall(r"\$\{\s*([A-Za-z_][\w-]*)", value)) if isinstance(value, str) else set()


def _lookup(tree: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return _MISSING
        tree = tree[key]
    return tree


def _hint(key: Any, valid: Iterable[str], related: Mapping[str, str] | None = None) -> str:
    """The closest valid names (``related`` maps dotted names elsewhere to their last part)."""
    valid = list(valid)
    choices = {name: name for name in valid}
    choices.update(related or {})
    matches = difflib.get_close_matches(str(key), set(choices.values()), n=3, cutoff=0.6)
    shown = [shown for m in matches for shown, name in choices.items() if name == m]
    if shown:
        return "did you mean " + " or ".join(f"'{s}'" for s in shown) + "?"
    return "valid: " + (", ".join(sorted(map(str, valid))) or "none")


class _Checker:
    def __init__(self, cfg: dict[str, Any], sources: Mapping[str, str], defaults: dict[str, Any]) -> None:
        self.cfg = cfg
        self.sources = sources
        self.defaults = defaults

    # ---- reporting -----------------------------------------------------------------------
    def origin(self, path: str) -> str:
        path = path.split("[")[0]
        if path in self.sources:
            return self.sources[path]
        # load_config notes every key a file or an override sets, nested ones included
        default = _lookup(self.defaults, path)
        return DEFAULT_SOURCE if default is not _MISSING and default == _lookup(self.cfg, path) else PYTHON_SOURCE

    def fail(self, path: str, message: str, unknown: bool = False) -> NoReturn:
        raise ConfigError(f"{'unknown config key' if unknown else 'config key'} '{path}' (from {self.origin(path)}): {message}")

    # ---- generic checks ------------------------------------------------------------------
    def section(self, path: str, value: Any, required: bool = False) -> dict[str, Any]:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping of keys, got {value!r}")
        return value

    def keys(
        self, path: str, section: Mapping[str, Any], valid: Options | Iterable[str], what: str,
        extra: Iterable[str] = (), reasons: Mapping[str, str] | None = None, related: Mapping[str, str] | None = None,
    ) -> None:
        opts = valid if isinstance(valid, Options) else Options(list(valid), False, ())
        names = [*extra, *opts.names]
        for key in section:
            sub = f"{path}.{key}" if path else str(key)
            if key in names:
                continue
            if key in opts.fixed or key in (reasons or {}):
                self.fail(sub, f"cannot be set here: {(reasons or {}).get(key, 'holomodal sets it itself')}")
            if not opts.open:
                self.fail(sub, f"{what} has no option '{key}'; {_hint(key, names, related)}", unknown=True)

    def choice(self, path: str, value: Any, allowed: Iterable[Any], what: str) -> None:
        allowed = list(allowed)
        if value not in allowed:
            self.fail(path, f"{value!r} is not a known {what}; {_hint(value, [str(a) for a in allowed if a is not None])}")

    def integer(self, path: str, value: Any, low: int, high: int | None = None, also: str = "") -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"from {low} to {high}"
            self.fail(path, f"must be a whole number {bound}{also}, got {value!r}")

    def strings(self, path: str, value: Any, allowed: Iterable[str] | None = None, what: str = "name") -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(path, f"must be a list of names, e.g. [a, b], got {value!r}")
        if allowed is not None:
            for i, item in enumerate(value):
                self.choice(f"{path}[{i}]", item, allowed, what)
        return value

    # ---- the sections --------------------------------------------------------------------
    def check(self, mode: str, variables: set[str]) -> set[str]:
        """Every check; returns the top-level keys that are interpolation variables."""
        if mode not in OWN_OPTIM_KEYS:
            raise ValueError(f"mode must be one of {list(OWN_OPTIM_KEYS)}, not {mode!r}")
        used = self.top_level(variables)
        self.data()
        self.method(mode)
        self.trainer()
        self.optim(mode)
        self.integer("batch_size", self.cfg.get("batch_size"), 1)
        self.integer("seed", self.cfg.get("seed"), *SEED_RANGE)
        self.missing()
        self.monitor()
        self.run(mode)
        self.pretrain()
        if not isinstance(self.cfg.get("baselines", False), bool):
            self.fail("baselines", f"must be true or false, got {self.cfg['baselines']!r}")
        return used

    def top_level(self, variables: set[str]) -> set[str]:
        # a misplaced section key (epochs=1) is matched against the keys of every section too
        nested = {k: list(v) for k, v in self.defaults.items() if isinstance(v, dict) and v}
        nested["trainer"] = options_of(L.Trainer, fixed=RESERVED_TRAINER).names
        nested["optim"] = [*OWN_OPTIM_KEYS["train"], *options_of(torch.optim.AdamW, fixed=RESERVED_OPTIM).names]
        related = {f"{section}.{key}": key for section, keys in nested.items() for key in keys}
        used = {key for key in self.cfg if key not in self.defaults and key in variables}
        self.keys("", {k: v for k, v in self.cfg.items() if k not in used}, list(self.defaults), "the configuration",
                  related=related)
        return used

    def data(self) -> None:
        data = self.section("data", self.cfg.get("data"), required=True)
        self.keys("data", data, list(self.defaults["data"]), "the data section")
        fraction = data.get("label_fraction")
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                     or not 0.0 < fraction <= 1.0):
            self.fail("data.label_fraction", f"must be a number above 0 and at most 1 (the share of training labels "
                                             f"kept), or null, got {fraction!r}")
        if data.get("unlabelled") is not None and not isinstance(data["unlabelled"], str):
            self.fail("data.unlabelled", f"must be the path of a table (CSV or parquet), got {data['unlabelled']!r}")
        if data.get("name") is None:
            return
        self.choice("data.name", data["name"], list_datasets(), "data set")
        # the loader is called as loader(root, **options)
        options = self.section("data.options", data.get("options"))
        self.keys("data.options", options, options_of(get_loader(data["name"]), skip=1), f"data set '{data['name']}'")

    def method(self, mode: str) -> None:
        name = self.cfg.get("method")
        self.choice("method", name, PRETRAINING.list() if mode == "pretrain" else METHODS.list(),
                    "pre-training method" if mode == "pretrain" else "method")
        if mode == "pretrain" and (name not in METHODS or getattr(PRETRAINING.get(name), "model_options", None)):
            # a pre-training method that lists its own options (or has no classifier of its
            # name) is checked against those
            self.keys("model", self.section("model", self.cfg.get("model")), list(PRETRAINING.get(name).model_options),
                      f"pre-training method '{name}'")
            return
        # one model section serves `pretrain` and `train`: the fine-tuning method's constructor
        # takes every pre-training option too
        self.method_options("model", METHODS.get(name), self.section("model", self.cfg.get("model")), f"method '{name}'", name)

    def method_options(self, path: str, method: type, options: dict[str, Any], what: str, name: str) -> None:
        self.keys(path, options, options_of(method, fixed=("context", "optim")), what,
                  reasons={"optim": "the optimiser is the top-level optim section", "context": "holomodal derives it from the data"})
        # the nested options mean the same in every method that takes them
        for key, value in options.items():
            sub = f"{path}.{key}"
            if value is None:
                continue
            if key == "members" and name == "ensemble":
                self.members(sub, value)
            elif key == "encoders":
                self.encoders(sub, value, name)
            elif key == "fusion":
                self.factory(sub, value, FUSIONS, ("input_dims",))
            elif key == "inter":  # i2m2's inter expert
                self.method_options(sub, LateFusion, self.section(sub, value), "i2m2's inter expert (late_fusion)", "late_fusion")
            elif key in AUGMENTATIONS:
                self.augmentation(sub, value)
            elif key in SUB_OPTIONS:
                factory, fixed, what = SUB_OPTIONS[key]
                self.keys(sub, self.section(sub, value), options_of(factory, fixed=fixed), what)

    def members(self, path: str, value: Any) -> None:
        """The ensemble's members: ``{method, model, name}`` mappings, each member's model
        options checked as that method's own."""
        if not isinstance(value, list) or not value:
            self.fail(path, f"must be a non-empty list of members, e.g. [{{method: late_fusion}}, {{method: gbdt}}], got {value!r}")
        for i, member in enumerate(value):
            sub = f"{path}[{i}]"
            member = self.section(sub, member, required=True)
            self.keys(sub, member, ["method", "model", "name"], "an ensemble member")
            if "method" not in member:
                self.fail(sub, f"names no method: add method: one of {', '.join(METHODS.list())}")
            allowed = [m for m in METHODS.list() if m != "ensemble"]
            self.choice(f"{sub}.method", member["method"], allowed, "method for an ensemble member")
            if member.get("name") is not None and (not isinstance(member["name"], str) or not re.fullmatch(r"[\w.-]+", member["name"])):
                self.fail(f"{sub}.name", f"must be a folder name (letters, digits, _ . -), got {member['name']!r}")
            method = member["method"]
            self.method_options(f"{sub}.model", METHODS.get(method), self.section(f"{sub}.model", member.get("model")),
                                f"method '{method}'", method)

    def encoders(self, path: str, value: Any, method: str) -> None:
        # keys are modality names or types; which exist is only known once the data is read
        for modality, enc in self.section(path, value).items():
            sub = f"{path}.{modality}"
            if not enc:
                continue  # the method's default encoder for that modality
            enc = self.section(sub, enc)
            name = enc.get("name") or (IMPLIED_ENCODERS[method](str(modality)) if method in IMPLIED_ENCODERS else None)
            if name is None:
                self.fail(sub, f"names no encoder: add name: one of {', '.join(ENCODERS.list())}")
            self.choice(f"{sub}.name", name, ENCODERS.list(), "encoder")
            # timm and clip_text pass other keywords on to timm.create_model / open_clip's text
            # config, which only building the model checks: those keys are let through here
            self.keys(sub, enc, options_of(ENCODERS.get(name), fixed=("input_spec",)), f"encoder '{name}'", extra=("name",),
                      reasons={"input_spec": "holomodal derives it from the data"})

    def factory(self, path: str, value: Any, registry: Any, fixed: tuple[str, ...]) -> None:
        section = self.section(path, value)
        if "name" not in section:
            self.fail(path, f"names no {registry.kind}: add name: one of {', '.join(registry.list())}")
        self.choice(f"{path}.name", section["name"], registry.list(), registry.kind)
        self.keys(path, section, options_of(registry.get(section["name"]), fixed=fixed), f"{registry.kind} '{section['name']}'",
                  extra=("name",))

    def augmentation(self, path: str, value: Any) -> None:
        section = {"preset": value} if isinstance(value, str) else self.section(path, value)
        self.choice(path if isinstance(value, str) else f"{path}.preset", section.get("preset", "natural"),
                    ["none", *PRESETS], "augmentation preset")
        self.keys(path, section, [f.name for f in dataclasses.fields(ImageAugmentation)], "image augmentation", extra=("preset",))

    def trainer(self) -> None:
        trainer = self.section("trainer", self.cfg.get("trainer"))
        self.keys("trainer", trainer, options_of(L.Trainer, fixed=RESERVED_TRAINER), "lightning.Trainer", reasons=RESERVED_TRAINER,
                  extra=(EARLY_STOPPING,))
        stopping = trainer.get(EARLY_STOPPING)
        if stopping is not None:
            path = f"trainer.{EARLY_STOPPING}"
            options = self.section(path, stopping)
            # monitor and mode follow the run's monitored metric
            self.keys(path, options, options_of(EarlyStopping, fixed=("monitor", "mode")), "lightning's EarlyStopping",
                      reasons={"monitor": "early stopping follows the top-level monitor", "mode": "it follows the monitored metric"})
            if "patience" in options:
                self.integer(f"{path}.patience", options["patience"], 1)
        epochs = trainer.get("max_epochs")
        if epochs is not None and epochs != -1:
            self.integer("trainer.max_epochs", epochs, 1, also=" (or -1: no limit)")
        allowed = {
            "accelerator": ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())],
            "strategy": ["auto", *StrategyRegistry.available_strategies()],
            "precision": ["auto", *_precisions()],
        }
        for key, names in allowed.items():
            value = trainer.get(key)
            # objects (an Accelerator, a Strategy) can come from Python; only names are checked
            if isinstance(value, (str, int)) and names[1:] and value not in names:
                self.choice(f"trainer.{key}", value, names, f"trainer {key}")

    def optim(self, mode: str) -> None:
        optim = self.section("optim", self.cfg.get("optim"))
        # without a name the method's default applies: Adam or AdamW, which share their options
        name = optim.get("name", "adamw")
        if not isinstance(name, str):
            self.fail("optim.name", f"must be an optimiser name ({', '.join(OPTIMIZERS)}), got {name!r}")
        self.choice("optim.name", name.lower(), OPTIMIZERS, "optimiser")
        cls = OPTIMIZERS[name.lower()]
        own = OWN_OPTIM_KEYS[mode]
        fixed = tuple(RESERVED_OPTIM) if name.lower() in FUSED else ("params",)
        self.keys("optim", optim, options_of(cls, fixed=fixed), f"optimiser '{name}' (torch.optim.{cls.__name__})",
                  extra=own, reasons=RESERVED_OPTIM)
        if "scheduler" in optim:
            self.choice("optim.scheduler", optim["scheduler"], SCHEDULERS[mode], f"scheduler for holomodal {mode}")
        if "warmup_epochs" in optim:
            self.integer("optim.warmup_epochs", optim["warmup_epochs"], 0)
        fraction = optim.get("warmup_fraction", 0.1)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            self.fail("optim.warmup_fraction", f"must be a number from 0 to below 1 (the share of steps warming up), got {fraction!r}")
        # the values too, on a stand-in parameter: adding one key at a time blames the right one
        given: dict[str, Any] = {}
        for key, value in optim.items():
            if key in own:
                continue
            given[key] = value
            try:
                cls([torch.nn.Parameter(torch.zeros(1))], **given)
            except (ValueError, TypeError, RuntimeError) as exc:
                self.fail(f"optim.{key}", f"torch.optim.{cls.__name__} refuses {key}={value!r}: {exc}")

    def missing(self) -> None:
        specs = self.cfg.get("missing")
        if specs is None:
            return
        if not isinstance(specs, list):
            self.fail("missing", f"must be a list of specs, e.g. missing=[rvm:0.3], got {specs!r}")
        for i, spec in enumerate(specs):
            path = f"missing[{i}]"
            if isinstance(spec, dict):
                self.keys(path, spec, [f.name for f in dataclasses.fields(MissingnessSpec)], "a missingness spec")
            elif not isinstance(spec, str):
                self.fail(path, f"must be KIND:RATE[:DROP][@SEED] or a mapping, got {spec!r}")
            try:
                MissingnessPlan.from_config([spec])
            except (ValueError, TypeError) as exc:  # ConfigError is a ValueError
                self.fail(path, str(exc))

    def monitor(self) -> None:
        # the task is only known from the data: any task's validation metric is accepted
        metrics = {name for task in ("binary", "multiclass", "multilabel") for name in make_metrics(task, 3)}
        self.choice("monitor", self.cfg.get("monitor"), ["auto", *(f"val/{m}" for m in sorted(metrics))],
                    "monitor metric (the best checkpoint maximises it)")

    def run(self, mode: str) -> None:
        run = self.section("run", self.cfg.get("run"), required=True)
        self.keys("run", run, list(self.defaults["run"]), "the run section")
        if run.get("dir") is not None and not isinstance(run["dir"], str):
            self.fail("run.dir", f"must be a folder path, got {run['dir']!r}")
        loggers = self.strings("run.loggers", run.get("loggers"), KNOWN_LOGGERS, "logger")
        if mode == "train":  # pre-training logs to csv and tensorboard only
            check_loggers(loggers)
        compile_ = run.get("compile")
        if not isinstance(compile_, (bool, type(None))):
            self.keys("run.compile", self.section("run.compile", compile_), options_of(torch.compile, fixed=("model",)),
                      "torch.compile")

    def pretrain(self) -> None:
        pretrain = self.section("pretrain", self.cfg.get("pretrain"))
        self.keys("pretrain", pretrain, list(self.defaults["pretrain"]), "the pretrain section")
        self.strings("pretrain.splits", pretrain.get("splits"))
        if not isinstance(pretrain.get("val_split"), (str, type(None))):
            self.fail("pretrain.val_split", f"must be a split name or null, got {pretrain['val_split']!r}")


def _precisions() -> list[Any]:
    """Lightning's precision names (a private type: an empty list skips the check)."""
    try:
        from lightning.fabric.connector import _PRECISION_INPUT
    except ImportError:
        return []
    return [v for part in typing.get_args(_PRECISION_INPUT) for v in typing.get_args(part)]
