"""Self-supervised pre-training runs: the estimator-style API, the config entry point, and
the registry of pre-training methods (TIP; CLIP for the prompt methods).

>>> pre = Pretrainer(bundle.schema, model={"losses": ["itc", "itm", "mtr"]}, trainer={"max_epochs": 500})
>>> pre.fit(unlabelled_and_train_rows, val_rows)        # labels are never read
>>> clf = Classifier(bundle.schema, method="tip", model={"checkpoint": str(pre.run_dir_)})

A pre-training run folder holds ``config.yaml``, ``schema.json``, ``preprocessor.json``,
``metrics.csv`` and ``checkpoints/last.ckpt``; the checkpoint alone is enough to fine-tune
(it carries the architecture and the preprocessing state besides the weights).

A method is registered with :func:`register_pretraining` as a :class:`PretrainingMethod`:
which columns and rows take part, and the LightningModule that trains. The Trainer, its
checkpoints, seeding and logs are the same as supervised training's
(:mod:`holomodal.training`). TIP keeps the image and tabular columns (text and other
modalities are left out of the schema before anything is fitted) and drops rows without any
image (TIP pairs every table with an image; with several image columns, with at least one).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import pandas as pd
import torch

from holomodal._registry import Registry
from holomodal.batch import Batch
from holomodal.config import to_container
from holomodal.errors import ConfigError, DataError, HolomodalError
from holomodal.loading import make_loader
from holomodal.methods.base import lightning_class
from holomodal.preprocessing import Preprocessor
from holomodal.runs import (
    check_run_dir, process_run_dir, resume_checkpoint, take_run_dir, write_json,
)
from holomodal.safe_load import check_checkpoint
from holomodal.schema import Column, Modality, Schema
from holomodal.training import (
    DEFAULT_TRAINER, build_trainer, check_loggers, merge_log, read_log, run_fit, saved_preprocessor, update_records,
    write_records,
)

log = logging.getLogger("holomodal")

PRETRAINING = Registry("pre-training method")
register_pretraining = PRETRAINING.register
list_pretraining = PRETRAINING.list
DEFAULT_SPLITS = ("train", "unlabelled")


def pretraining_schema(schema: Schema, image: str | Sequence[str] | None = None) -> Schema:
    """The schema restricted to the tabular columns, the image columns ``image`` names (one
    name or a list; default every image column) and the label."""
    images = [c.name for c in schema.of(Modality.IMAGE)]
    if not images:
        raise ConfigError("pre-training needs an image column; the schema has none")
    chosen = images if image is None else [image] if isinstance(image, str) else list(image)
    unknown = [name for name in chosen if name not in images]
    if unknown:
        raise ConfigError(f"{unknown} are not image columns of the schema (images: {images})")
    if not schema.tabular:
        raise ConfigError("pre-training needs tabular columns; the schema has none")
    keep = [c for c in schema.columns if c.name in chosen or c.modality in (Modality.CATEGORICAL, Modality.CONTINUOUS, Modality.LABEL)]
    return dataclasses.replace(schema, columns=[Column(c.name, c.modality, dict(c.options)) for c in keep])


def fit_without_labels(schema: Schema, frame: pd.DataFrame) -> Preprocessor:
    """A preprocessor fitted on rows whose labels may be missing: labels are never read."""
    schema.validate(frame, require_label=False, allow_extra=True)
    pre = Preprocessor(schema)
    for proc in pre.processors.values():
        proc.fit(frame)
    pre.classes_ = [str(c) for c in schema.label.options.get("classes") or []]
    return pre


def rows_with_image(batch: Batch, images: Sequence[str]) -> Batch:
    """The rows with at least one of ``images`` present."""
    present = torch.stack([batch.present[m] for m in images]).any(dim=0)
    return batch.select(torch.nonzero(present).flatten())


class PretrainingMethod:
    """A pre-training method as the :class:`Pretrainer` sees it. Registered by name::

        @register_pretraining("mine")
        class Mine(PretrainingMethod):
            def build(self, preprocessor, schema, model, optim): return MyModule(...)

    Override :meth:`restrict` and :meth:`select` for methods that use only some columns
    or rows, :meth:`prepare`, :meth:`encode` and :meth:`loader` for methods that regroup the
    rows (MedST's studies over time), and ``checkpoint`` for other checkpoint names."""

    # ModelCheckpoint options of a checkpoint besides last.ckpt (which fine-tuning starts
    # from, written every epoch), or None
    checkpoint: dict[str, Any] | None = None
    min_rows = 2  # rows a batch needs (contrastive and matching losses need two pairs)

    def restrict(self, schema: Schema, model: dict[str, Any]) -> Schema:
        """The schema of the columns that take part."""
        return schema

    def prepare(self, frame: pd.DataFrame, schema: Schema, model: dict[str, Any]) -> tuple[pd.DataFrame, Schema]:
        """The rows and schema pre-training sees (methods that regroup rows, such as
        studies over time, override this)."""
        return frame, self.restrict(schema, model)

    def select(self, batch: Batch, schema: Schema) -> Batch:
        """The encoded rows that take part."""
        return batch

    def encode(self, preprocessor: Preprocessor, frame: pd.DataFrame, schema: Schema) -> Batch:
        batch, _ = preprocessor.transform(frame, with_target=False)
        return self.select(batch, schema)

    def loader(self, batch: Batch, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False) -> Any:
        return make_loader(batch, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)

    def build(self, preprocessor: Preprocessor, schema: Schema, model: dict[str, Any],
              optim: dict[str, Any]) -> L.LightningModule:
        raise NotImplementedError


@register_pretraining("tip")
class TIPPretrainingMethod(PretrainingMethod):
    """TIP: image-table pairs, every image column (or those ``model.image_modality`` names)
    as views of one image; see :class:`holomodal.methods.tip.TIPPretraining`."""

    def restrict(self, schema: Schema, model: dict[str, Any]) -> Schema:
        return pretraining_schema(schema, model.get("image_modality"))

    def select(self, batch: Batch, schema: Schema) -> Batch:
        return rows_with_image(batch, [c.name for c in schema.of(Modality.IMAGE)])

    def build(self, preprocessor: Preprocessor, schema: Schema, model: dict[str, Any],
              optim: dict[str, Any]) -> L.LightningModule:
        from holomodal.methods.tip import TIPPretraining

        types = {m: "tabular" if m == "tabular" else schema.modality_type(m).value for m in preprocessor.processors}
        return lightning_class(TIPPretraining)(preprocessor.input_specs, types, model=model, optim=optim, preprocessor=preprocessor.state_dict())


@register_pretraining("clip")
class CLIPPretrainingMethod(PretrainingMethod):
    """CLIP on image-text pairs: one image and one text column (``model.image`` /
    ``model.text`` name them when there are several), the rows holding both, the backbone
    ``model.backbone`` (default the tiny CLIP, random); see
    :class:`holomodal.methods.pretraining.clip.CLIPPretraining`."""

    model_options = ("backbone", "image", "text")

    def _columns(self, schema: Schema, model: dict[str, Any]) -> tuple[str, str]:
        from holomodal.backbones.clip import image_text_columns

        types = {c.name: c.modality.value for c in schema.columns if c.modality in (Modality.IMAGE, Modality.TEXT)}
        return image_text_columns(types, model.get("image"), model.get("text"), "clip")

    def restrict(self, schema: Schema, model: dict[str, Any]) -> Schema:
        from holomodal.backbones.clip import clip_columns, resolve_backbone

        unknown = sorted(set(model) - set(self.model_options))
        if unknown:
            raise ConfigError(f"clip pre-training has no model option(s) {unknown} ({', '.join(self.model_options)})")
        image, text = self._columns(schema, model)
        keep = [c for c in schema.columns if c.name in (image, text) or c.modality == Modality.LABEL]
        pairs = dataclasses.replace(schema, columns=[Column(c.name, c.modality, dict(c.options)) for c in keep])
        return clip_columns(pairs, resolve_backbone(model.get("backbone")), image, text)

    def select(self, batch: Batch, schema: Schema) -> Batch:
        both = torch.stack([batch.present[c.name] for c in schema.columns if c.name in batch.present]).all(dim=0)
        return batch.select(torch.nonzero(both).flatten())

    def build(self, preprocessor: Preprocessor, schema: Schema, model: dict[str, Any],
              optim: dict[str, Any]) -> L.LightningModule:
        from holomodal.backbones.clip import resolve_backbone
        from holomodal.methods.pretraining.clip import CLIPPretraining

        image, text = self._columns(schema, model)
        return lightning_class(CLIPPretraining)(resolve_backbone(model.get("backbone")), image, text, preprocessor.input_specs,
                               optim=optim, preprocessor=preprocessor.state_dict())


@register_pretraining("medst")
class MedSTPretrainingMethod(PretrainingMethod):
    """MedST on studies over time: the schema's group, time and view columns turn image rows
    into studies (:mod:`holomodal.studies`: frontal image, its study's lateral, the report);
    the studies with a frontal image and a report take part, a batch is ``batch_size`` of a
    patient's time-ordered sequences; see
    :class:`holomodal.methods.pretraining.medst.MedSTPretraining`."""

    model_options = ("image", "text", "embed_dim", "hidden_dim", "loss_weights", "temperatures", "sequence_length",
                     "bidirectional", "image_column", "text_column")

    def __init__(self) -> None:
        self.sequence_length = 4

    def prepare(self, frame: pd.DataFrame, schema: Schema, model: dict[str, Any]) -> tuple[pd.DataFrame, Schema]:
        from holomodal.studies import build_studies

        unknown = sorted(set(model) - set(self.model_options))
        if unknown:
            raise ConfigError(f"medst pre-training has no model option(s) {unknown} ({', '.join(self.model_options)})")
        self.sequence_length = int(model.get("sequence_length", 4))
        studies = build_studies(frame, schema, image=model.get("image_column"), text=model.get("text_column"),
                                length=self.sequence_length)
        log.info("studies: %s", studies.summary)
        return studies.frame, studies.schema

    def _columns(self, schema: Schema) -> tuple[str, str, str]:
        from holomodal.studies import lateral_name

        lateral = lateral_name(schema)
        frontal = next(c.name for c in schema.of(Modality.IMAGE) if c.name != lateral)
        return frontal, lateral, schema.of(Modality.TEXT)[0].name

    def encode(self, preprocessor: Preprocessor, frame: pd.DataFrame, schema: Schema) -> Batch:
        from holomodal.studies import GROUP_CODE, STUDY_CODE, TIME_VALUE

        batch, _ = preprocessor.transform(frame, with_target=False)
        for key in (GROUP_CODE, STUDY_CODE):
            batch.extras[key] = torch.tensor(frame[key].to_numpy(), dtype=torch.long)
        batch.extras[TIME_VALUE] = torch.tensor(frame[TIME_VALUE].to_numpy(), dtype=torch.float64)
        frontal, _, text = self._columns(schema)
        pairs = batch.present[frontal] & batch.present[text]  # every MedST loss pairs an image with its report
        return batch.select(torch.nonzero(pairs).flatten())

    def loader(self, batch: Batch, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False) -> Any:
        from holomodal.loading import sequence_loader
        from holomodal.studies import study_sequences

        table = pd.DataFrame({k: v.numpy() for k, v in batch.extras.items() if v.ndim == 1})
        sequences = study_sequences(table, self.sequence_length)
        return sequence_loader(batch, sequences, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)

    def build(self, preprocessor: Preprocessor, schema: Schema, model: dict[str, Any],
              optim: dict[str, Any]) -> L.LightningModule:
        from holomodal.methods.pretraining.medst import MedSTPretraining

        frontal, lateral, text = self._columns(schema)
        options = {k: v for k, v in model.items() if k not in ("image_column", "text_column")}
        return lightning_class(MedSTPretraining)(preprocessor.input_specs, frontal, lateral, text, model=options, optim=optim,
                                preprocessor=preprocessor.state_dict())


# the registered names when this module was imported; PRETRAINING.list() is always current
PRETRAINING_METHODS = tuple(PRETRAINING.list())


class Pretrainer:
    """Pre-trains with a registered pre-training method (``tip``); no labels needed.

    Args mirror :class:`holomodal.estimator.Classifier`: ``method`` a name registered with
    :func:`register_pretraining`, ``model`` its options (TIP: encoders, interaction, losses,
    itc, mtr, augment, corruption_rate), ``optim`` the optimiser (TIP: Adam 3e-4, warm-up +
    cosine), ``trainer`` the Lightning options.
    """

    def __init__(
        self,
        schema: Schema,
        method: str = "tip",
        model: dict[str, Any] | None = None,
        optim: dict[str, Any] | None = None,
        batch_size: int = 128,
        seed: int = 0,
        trainer: dict[str, Any] | None = None,
        run_dir: str | Path | None = None,
        loggers: Sequence[str] = ("csv",),
        data_name: str | None = None,
        compile: bool | dict[str, Any] = False,
    ) -> None:
        self.method_spec = PRETRAINING.create(method)  # an unknown name lists the known ones
        self.schema = schema
        self.method = method
        self.model = dict(model or {})
        self.optim = dict(optim or {})
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.trainer = {**DEFAULT_TRAINER, **(trainer or {})}
        self.run_dir = run_dir
        self.loggers = list(loggers)
        self.data_name = data_name
        self.compile = compile

    def _encode(self, frame: pd.DataFrame, schema: Schema) -> Batch:
        return self.method_spec.encode(self.preprocessor_, frame, schema)

    def fit(self, frame: pd.DataFrame, val: pd.DataFrame | None = None, *, record: dict[str, Any] | None = None,
            resume: bool = False) -> "Pretrainer":
        """Pre-train on ``frame`` (losses also logged on ``val``). ``resume`` continues the
        run in ``run_dir`` from its last checkpoint (more epochs with a larger
        ``trainer.max_epochs``), with the preprocessing that run fitted."""
        check_loggers(self.loggers)
        spec = self.method_spec
        frame, schema = spec.prepare(frame, self.schema, self.model)
        if val is not None:
            val, _ = spec.prepare(val, self.schema, self.model)
        rank, run_dir = process_run_dir(self.run_dir, self.data_name, f"{self.method}-pretrain")
        if rank == 0:
            check_run_dir(run_dir, resume=resume)
        start_from = resume_checkpoint(run_dir) if resume else None
        if start_from is not None:
            check_checkpoint(start_from)  # damaged or foreign: refused before any work
        L.seed_everything(self.seed, workers=True, verbose=False)
        saved = run_dir / "preprocessor.json"
        if resume and saved.exists():
            self.preprocessor_ = saved_preprocessor(saved, Preprocessor)
        else:
            self.preprocessor_ = fit_without_labels(schema, frame)
        train_batch = self._encode(frame, schema)
        val_batch = self._encode(val, schema) if val is not None else None
        if len(train_batch) < spec.min_rows:
            raise DataError(f"pre-training needs at least {spec.min_rows} rows with every modality it uses, found {len(train_batch)}")
        pre = self.preprocessor_
        self.module_ = spec.build(pre, schema, self.model, self.optim)

        self.run_dir_, claim = take_run_dir(rank, run_dir, resume=resume)
        pending: dict[str, str] = {}
        if claim is not None:
            self.claim_ = claim
            pending = write_records(self.run_dir_, record, resume=resume)
            records = {"schema.json": schema.to_dict(),
                       "data_summary.json": {"train_rows": len(train_batch), "val_rows": 0 if val_batch is None else len(val_batch)}}
            if not (resume and saved.exists()):
                records["preprocessor.json"] = pre.state_dict()
            write_records(self.run_dir_, records, resume=False)

        earlier_log = read_log(self.run_dir_ / "metrics.csv") if resume else None
        trainer = build_trainer(self.run_dir_, self.trainer, seed=self.seed, loggers=self.loggers, experiment=self.data_name,
                                compile=self.compile, checkpoint=None if spec.checkpoint is None else dict(spec.checkpoint))
        # the matching loss needs two pairs per batch, hence drop_last
        train_loader = spec.loader(train_batch, self.batch_size, shuffle=True, seed=self.seed, drop_last=True)
        val_loader = None if val_batch is None or len(val_batch) < spec.min_rows else spec.loader(val_batch, self.batch_size * 2, shuffle=False)
        start = time.perf_counter()
        run_fit(trainer, self.module_, train_loader, val_loader, self.run_dir_, start_from)
        self.fit_seconds_ = time.perf_counter() - start
        self.checkpoint_ = self.run_dir_ / "checkpoints" / "last.ckpt"
        self.metrics_ = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if rank != 0:
            return self
        if earlier_log is not None:
            merge_log(self.run_dir_ / "metrics.csv", earlier_log)
        update_records(self.run_dir_, pending)
        write_json(self.run_dir_ / "metrics.json", {"fit_seconds": self.fit_seconds_, "last_epoch": self.metrics_})
        return self


def pretraining_frames(cfg: dict[str, Any]) -> tuple[str, Schema, pd.DataFrame, pd.DataFrame | None]:
    """(data name, schema, pre-training rows, validation rows) from a config's ``data`` and
    ``pretrain`` sections: ``pretrain.splits`` of a bundled data set (default train and
    unlabelled: held-out rows never enter pre-training), or ``data.train`` / ``data.val``."""
    data_cfg, pre_cfg = cfg["data"], cfg.get("pretrain") or {}
    if data_cfg.get("name"):
        from holomodal.data import load_dataset

        bundle = load_dataset(data_cfg["name"], root=data_cfg.get("root"), **(data_cfg.get("options") or {}))
        names = [s for s in (pre_cfg.get("splits") or DEFAULT_SPLITS) if s in bundle.splits]
        if not names:
            raise ConfigError(f"none of pretrain.splits {pre_cfg.get('splits')} is a split of '{bundle.name}' ({list(bundle.splits)})")
        frame = pd.concat([bundle.split(s) for s in names], ignore_index=True)
        val_name = pre_cfg.get("val_split", "val")
        val = bundle.split(val_name) if val_name and val_name in bundle.splits else None
        return bundle.name, bundle.schema, frame, val
    from holomodal.experiment import read_schema
    from holomodal.prediction import read_frame

    if not data_cfg.get("train") or not data_cfg.get("schema"):
        raise ConfigError("set data.name to a bundled data set, or data.train (and data.schema) to your own files")
    frame = read_frame(data_cfg["train"])
    val = read_frame(data_cfg["val"]) if data_cfg.get("val") else None
    return Path(data_cfg["train"]).stem, read_schema(data_cfg["schema"]), frame, val


def run_pretraining(cfg: Any, *, resume: bool = False) -> dict[str, Any]:
    """Pre-train from a configuration; returns the run folder, checkpoint and last losses.
    The configuration is checked first (again, harmlessly, when the CLI already did)."""
    from holomodal.config_check import checked_config

    cfg = checked_config(to_container(cfg), "pretrain")
    name, schema, frame, val = pretraining_frames(cfg)
    pre = Pretrainer(
        schema, method=cfg.get("method", "tip"), model=cfg.get("model") or {}, optim=cfg.get("optim") or {},
        batch_size=cfg["batch_size"], seed=cfg["seed"], trainer=cfg.get("trainer") or {}, run_dir=cfg["run"]["dir"],
        loggers=[n for n in (cfg["run"].get("loggers") or ["csv"]) if n in ("csv", "tensorboard")], data_name=name,
        compile=cfg["run"].get("compile") or False,
    )
    pre.fit(frame, val, record={"config.yaml": cfg}, resume=resume)
    return {"run_dir": str(pre.run_dir_), "checkpoint": str(pre.checkpoint_), "fit_seconds": pre.fit_seconds_, "metrics": pre.metrics_}
