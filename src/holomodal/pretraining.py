"""Self-supervised pre-training runs (TIP): the estimator-style API and the config entry point.

>>> pre = Pretrainer(bundle.schema, model={"losses": ["itc", "itm", "mtr"]}, trainer={"max_epochs": 500})
>>> pre.fit(unlabelled_and_train_rows, val_rows)        # labels are never read
>>> clf = Classifier(bundle.schema, method="tip", model={"checkpoint": str(pre.run_dir_)})

A pre-training run folder holds ``config.yaml``, ``schema.json``, ``preprocessor.json``,
``metrics.csv`` and ``checkpoints/last.ckpt``; the checkpoint alone is enough to fine-tune
(it carries the architecture and the preprocessing state besides the weights).

Only the image and tabular columns take part: text and other modalities are left out of
the schema before anything is fitted, and rows without an image are dropped (TIP pairs
every table with an image).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import pandas as pd
import torch

from holomodal.batch import Batch
from holomodal.compilation import compile_callbacks
from holomodal.config import to_container
from holomodal.errors import ConfigError, DataError
from holomodal.loading import make_loader
from holomodal.preprocessing import Preprocessor
from holomodal.runs import check_run_dir, default_run_dir, prepare_run_dir, write_json, write_text
from holomodal.schema import Column, Modality, Schema

log = logging.getLogger("holomodal")

PRETRAINING_METHODS = ("tip",)
DEFAULT_SPLITS = ("train", "unlabelled")


def pretraining_schema(schema: Schema, image: str | None = None) -> Schema:
    """The schema restricted to the tabular columns, one image column and the label."""
    images = [c.name for c in schema.of(Modality.IMAGE)]
    if image is None:
        if len(images) != 1:
            raise ConfigError(f"pre-training needs one image column, the schema has {images or 'none'}: set model.image_modality")
        image = images[0]
    elif image not in images:
        raise ConfigError(f"'{image}' is not an image column of the schema (images: {images})")
    if not schema.tabular:
        raise ConfigError("pre-training needs tabular columns; the schema has none")
    keep = [c for c in schema.columns if c.name == image or c.modality in (Modality.CATEGORICAL, Modality.CONTINUOUS, Modality.LABEL)]
    return Schema([Column(c.name, c.modality, dict(c.options)) for c in keep], on_unreadable=schema.on_unreadable)


def fit_without_labels(schema: Schema, frame: pd.DataFrame) -> Preprocessor:
    """A preprocessor fitted on rows whose labels may be missing: labels are never read."""
    schema.validate(frame, require_label=False, allow_extra=True)
    pre = Preprocessor(schema)
    for proc in pre.processors.values():
        proc.fit(frame)
    pre.classes_ = [str(c) for c in schema.label.options.get("classes") or []]
    return pre


def rows_with_image(batch: Batch, image: str) -> Batch:
    keep = torch.nonzero(batch.present[image]).flatten()
    return batch.select(keep)


class Pretrainer:
    """Pre-trains a TIP backbone on image-table pairs; no labels needed.

    Args mirror :class:`holomodal.estimator.Classifier`: ``model`` holds the ``tip`` model
    options (encoders, interaction, losses, itc, mtr, augment, corruption_rate), ``optim``
    the optimiser (TIP: Adam 3e-4, warm-up + cosine), ``trainer`` the Lightning options.
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
        if method not in PRETRAINING_METHODS:
            raise ConfigError(f"pre-training is implemented for {list(PRETRAINING_METHODS)}, not '{method}'")
        from holomodal.estimator import DEFAULT_TRAINER

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

    def _encode(self, frame: pd.DataFrame) -> Batch:
        batch, _ = self.preprocessor_.transform(frame, with_target=False)
        return rows_with_image(batch, self.image_)

    def fit(self, frame: pd.DataFrame, val: pd.DataFrame | None = None, *, record: dict[str, Any] | None = None) -> "Pretrainer":
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

        from holomodal.estimator import AtomicCheckpointIO, EpochSeed, _auto_precision, _check_loggers
        from holomodal.methods.tip import TIPPretraining

        _check_loggers(self.loggers)
        schema = pretraining_schema(self.schema, self.model.get("image_modality"))
        self.image_ = next(c.name for c in schema.of(Modality.IMAGE))
        run_dir = Path(self.run_dir) if self.run_dir else default_run_dir(self.data_name, f"{self.method}-pretrain")
        check_run_dir(run_dir, resume=False)
        L.seed_everything(self.seed, workers=True, verbose=False)
        self.preprocessor_ = fit_without_labels(schema, frame)
        train_batch = self._encode(frame)
        val_batch = self._encode(val) if val is not None else None
        if len(train_batch) < 2:
            raise DataError(f"pre-training needs at least two rows with an image, found {len(train_batch)}")
        pre = self.preprocessor_
        types = {m: "tabular" if m == "tabular" else schema.modality_type(m).value for m in pre.processors}
        self.module_ = TIPPretraining(pre.input_specs, types, model=self.model, optim=self.optim, preprocessor=pre.state_dict())

        self.run_dir_ = prepare_run_dir(run_dir, resume=False)
        for name, content in (record or {}).items():
            if name.endswith(".yaml"):
                from omegaconf import OmegaConf

                write_text(self.run_dir_ / name, OmegaConf.to_yaml(OmegaConf.create(content)))
            else:
                write_json(self.run_dir_ / name, content)
        write_json(self.run_dir_ / "schema.json", schema.to_dict())
        write_json(self.run_dir_ / "preprocessor.json", pre.state_dict())
        write_json(self.run_dir_ / "data_summary.json", {"train_rows": len(train_batch), "val_rows": 0 if val_batch is None else len(val_batch)})

        cfg = {k: v for k, v in self.trainer.items() if v is not None}
        if cfg.get("precision") == "auto":
            cfg["precision"] = _auto_precision()
        loggers: list[Any] = []
        if "csv" in self.loggers:
            loggers.append(CSVLogger(self.run_dir_, name="", version=""))
        if "tensorboard" in self.loggers:
            loggers.append(TensorBoardLogger(self.run_dir_, name="tensorboard", version=""))
        checkpoint = ModelCheckpoint(dirpath=self.run_dir_ / "checkpoints", filename="epoch{epoch:03d}", save_last=True,
                                     save_top_k=0, enable_version_counter=False)
        trainer = L.Trainer(
            default_root_dir=self.run_dir_, logger=loggers or False, callbacks=[*compile_callbacks(self.compile), EpochSeed(self.seed), checkpoint],
            plugins=[AtomicCheckpointIO()], enable_model_summary=False, **cfg,
        )
        # the matching loss needs two pairs per batch, hence drop_last
        train_loader = make_loader(train_batch, self.batch_size, shuffle=True, seed=self.seed, drop_last=True)
        val_loader = None if val_batch is None or len(val_batch) < 2 else make_loader(val_batch, self.batch_size * 2, shuffle=False)
        start = time.perf_counter()
        trainer.fit(self.module_, train_loader, val_loader)
        self.fit_seconds_ = time.perf_counter() - start
        self.checkpoint_ = self.run_dir_ / "checkpoints" / "last.ckpt"
        self.metrics_ = {k: float(v) for k, v in trainer.callback_metrics.items()}
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
    from holomodal.experiment import _read_table, read_schema

    if not data_cfg.get("train") or not data_cfg.get("schema"):
        raise ConfigError("set data.name to a bundled data set, or data.train (and data.schema) to your own files")
    frame = _read_table(data_cfg["train"])
    val = _read_table(data_cfg["val"]) if data_cfg.get("val") else None
    return Path(data_cfg["train"]).stem, read_schema(data_cfg["schema"]), frame, val


def run_pretraining(cfg: Any) -> dict[str, Any]:
    """Pre-train from a configuration; returns the run folder, checkpoint and last losses."""
    cfg = to_container(cfg)
    name, schema, frame, val = pretraining_frames(cfg)
    pre = Pretrainer(
        schema, method=cfg.get("method", "tip"), model=cfg.get("model") or {}, optim=cfg.get("optim") or {},
        batch_size=cfg["batch_size"], seed=cfg["seed"], trainer=cfg.get("trainer") or {}, run_dir=cfg["run"]["dir"],
        loggers=[n for n in (cfg["run"].get("loggers") or ["csv"]) if n in ("csv", "tensorboard")], data_name=name,
        compile=cfg["run"].get("compile") or False,
    )
    pre.fit(frame, val, record={"config.yaml": cfg})
    return {"run_dir": str(pre.run_dir_), "checkpoint": str(pre.checkpoint_), "fit_seconds": pre.fit_seconds_, "metrics": pre.metrics_}
