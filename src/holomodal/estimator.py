"""The estimator-style Python API; the CLI is a thin layer over it.

>>> clf = Classifier(schema, method="late_fusion", trainer={"max_epochs": 5})
>>> clf.fit(train_df, val_df)
>>> proba = clf.predict_proba(test_df)
>>> clf.evaluate(test_df)
>>> clf.save("model/"); Classifier.load("model/")

Hyper-parameters are stored by ``__init__`` only; the fitted state lives in attributes
ending in ``_`` (``preprocessor_``, ``model_``, ``plan_``, ``run_dir_``).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from lightning.pytorch.plugins.io import TorchCheckpointIO

from holomodal.batch import Batch
from holomodal.compilation import compile_callbacks
from holomodal.errors import ConfigError, DataError, RunFolderError
from holomodal.loading import make_loader
from holomodal.methods import METHODS, ClassificationMethod, ModelContext, create_method
from holomodal.methods.base import compute_metrics
from holomodal.missingness import MissingnessPlan
from holomodal.preprocessing import Preprocessor
from holomodal.runs import check_run_dir, default_run_dir, prepare_run_dir, write_json, write_text
from holomodal.schema import Schema, Task

FORMAT_VERSION = 1
RUN_DIR_ENV = "HOLOMODAL_RUN_DIR"
log = logging.getLogger("holomodal")

DEFAULT_TRAINER = {
    "max_epochs": 10, "accelerator": "auto", "devices": "auto", "strategy": "auto", "num_nodes": 1,
    "precision": "auto", "gradient_clip_val": None, "deterministic": False, "log_every_n_steps": 10,
    "limit_train_batches": None, "enable_progress_bar": True,
}


class EpochSeed(Callback):
    """Re-seeds every epoch from (seed, epoch), so dropout and augmentation in an epoch do not
    depend on whether the run was resumed before it."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        L.seed_everything(self.seed * 1_000_003 + trainer.current_epoch, verbose=False)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        # a resumed run draws from the global generator between epoch start and its first step
        # (Lightning's restart, the loader's base seed) where a fresh run does not: seeding
        # every step from (seed, epoch, batch) keeps its dropout masks those of a fresh run
        state = np.random.SeedSequence([self.seed, trainer.current_epoch, batch_idx]).generate_state(1)[0]
        L.seed_everything(int(state), verbose=False)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the target's folder, then renamed over the
    target: ``os.replace`` is atomic within one file system, so a process killed at any
    moment leaves the previous checkpoint or the new one, never a truncated file that
    ``--resume`` would choke on."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # the pid keeps two writers (e.g. a stale process) from sharing one temporary file
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class _TestStepDelay(Callback):
    """Test hook only: sleeps after every training batch, so that a test can kill a run in
    the middle of an epoch. Enabled by the environment variable HOLOMODAL_TEST_STEP_DELAY
    (seconds); never set in normal use."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(self.seconds)


KNOWN_LOGGERS = ("csv", "tensorboard", "mlflow")


def _check_loggers(names: Sequence[str]) -> None:
    """Fail before the run folder is touched when a logger cannot be made."""
    for name in names:
        if name not in KNOWN_LOGGERS:
            raise ConfigError(f"unknown logger '{name}' in run.loggers (known: {', '.join(KNOWN_LOGGERS)})")
        # mlflow is optional: holomodal never installs it, so say which package is missing
        if name == "mlflow" and importlib.util.find_spec("mlflow") is None:
            raise ConfigError(
                "run.loggers includes 'mlflow' but the Python package 'mlflow' is not installed: "
                "`pip install mlflow`, or remove mlflow from run.loggers"
            )
        if name == "mlflow" and not os.environ.get("MLFLOW_TRACKING_URI") and importlib.util.find_spec("sqlalchemy") is None:
            raise ConfigError(
                "run.loggers includes 'mlflow' without MLFLOW_TRACKING_URI, so it logs to a database in the run "
                "folder, which needs the package 'sqlalchemy' (`pip install mlflow`, not mlflow-skinny), "
                "or set MLFLOW_TRACKING_URI to a tracking server"
            )


def _read_log(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() and path.stat().st_size else None


def _merge_log(path: Path, earlier: pd.DataFrame) -> None:
    """Put the epochs logged before a resume back in front of the resumed run's log; rows of
    the interrupted epoch are dropped, as the resumed run logged that epoch again."""
    later = _read_log(path)
    if later is None or "epoch" not in later or "epoch" not in earlier:
        return
    kept = earlier[earlier["epoch"] < later["epoch"].min()]
    write_text(path, pd.concat([kept, later], ignore_index=True).to_csv(index=False))


def _auto_precision() -> str:
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


class Classifier:
    def __init__(
        self,
        schema: Schema,
        method: str = "late_fusion",
        model: dict[str, Any] | None = None,
        optim: dict[str, Any] | None = None,
        batch_size: int = 64,
        missing: Sequence[str | dict] = (),
        seed: int = 0,
        trainer: dict[str, Any] | None = None,
        monitor: str = "auto",
        run_dir: str | Path | None = None,
        loggers: Sequence[str] = ("csv", "tensorboard"),
        data_name: str | None = None,
        compile: bool | dict[str, Any] = False,
    ) -> None:
        self.schema = schema
        self.method = method
        self.model = dict(model or {})
        self.optim = dict(optim or {})
        self.batch_size = batch_size
        self.missing = list(missing)
        self.seed = seed
        self.trainer = {**DEFAULT_TRAINER, **(trainer or {})}
        self.monitor = monitor
        self.run_dir = run_dir
        self.loggers = list(loggers)
        self.data_name = data_name
        self.compile = compile

    # ---- configuration -----------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        return {
            "method": self.method, "model": self.model, "optim": self.optim, "batch_size": self.batch_size,
            "missing": self.missing, "seed": self.seed, "trainer": self.trainer, "monitor": self.monitor,
            "loggers": self.loggers, "data_name": self.data_name, "compile": self.compile,
        }

    @property
    def monitor_metric(self) -> str:
        if self.monitor != "auto":
            return self.monitor
        return {Task.BINARY: "val/auroc", Task.MULTICLASS: "val/accuracy", Task.MULTILABEL: "val/f1_macro"}[self.schema.task]

    # ---- encoding ----------------------------------------------------------------------
    def _encode(self, df: pd.DataFrame, split: str, plan: MissingnessPlan | None, with_target: bool = True) -> tuple[Batch, dict[str, Any]]:
        batch, summary = self.preprocessor_.transform(df, with_target=with_target)
        if plan is not None and plan.specs:
            n_tab = 0 if batch.cell_missing is None else batch.cell_missing.shape[1]
            masks = plan.masks(split, len(batch), n_tab, list(batch.present))
            cells = None if masks.cell_missing is None else torch.from_numpy(masks.cell_missing)
            batch = batch.with_masks(cells, {m: torch.from_numpy(k) for m, k in masks.keep.items()})
            summary["synthetic"] = {
                "missing_cells": 0 if cells is None else int(cells.sum()),
                "dropped_modalities": {m: int((~k).sum()) for m, k in masks.keep.items()},
            }
        return batch, summary

    def _context(self) -> ModelContext:
        pre = self.preprocessor_
        types = {m: self.schema.modality_type(m).value if m != "tabular" else "tabular" for m in pre.processors}
        return ModelContext(pre.input_specs, types, pre.num_classes, self.schema.task.value, list(pre.classes_))

    def _build_model(self) -> ClassificationMethod:
        return create_method(self.method, self._context(), optim=self.optim, **self.model)

    # ---- fit ---------------------------------------------------------------------------
    def fit(
        self, train: pd.DataFrame, val: pd.DataFrame | None = None, *, resume: bool = False,
        record: dict[str, Any] | None = None,
    ) -> "Classifier":
        """Fit on ``train`` (model selection on ``val``). ``record`` maps file names to
        data written into the run folder (YAML for ``.yaml``, else JSON)."""
        # everything that can fail on the user's data runs before the run folder is touched
        _check_loggers(self.loggers)
        self.schema.validate(train, allow_extra=True)
        if val is not None:
            self.schema.validate(val, allow_extra=True)
        # under DDP every process runs fit(); only global rank 0 owns the run folder, and the
        # processes it launches inherit the folder's name through the environment
        rank = int(getattr(rank_zero_only, "rank", 0))
        if self.run_dir:
            run_dir = Path(self.run_dir)
        elif rank != 0 and RUN_DIR_ENV in os.environ:
            run_dir = Path(os.environ[RUN_DIR_ENV])
        else:
            run_dir = default_run_dir(self.data_name, self.method)
        if rank == 0:
            check_run_dir(run_dir, resume=resume)
        L.seed_everything(self.seed, workers=True, verbose=False)
        # a resumed run reuses the preprocessing its checkpoint was trained with, rather than
        # trusting a refit (on other library versions, say) to give the same encoding
        saved = Path(self.run_dir) / "preprocessor.json" if resume and self.run_dir else None
        if saved is not None and saved.exists():
            self.preprocessor_ = Preprocessor.from_state(json.loads(saved.read_text()))
        else:
            self.preprocessor_ = Preprocessor(self.schema).fit(train)
        # a method starting from pre-trained weights must see the data encoded as in pre-training
        adopt = getattr(METHODS.get(self.method), "adopt_pretraining", None)
        if adopt is not None:
            self.model = adopt(self.preprocessor_, self.model)
        self.plan_ = MissingnessPlan.from_config(self.missing)
        if self.plan_.needs_ranking:
            labels = self.preprocessor_.encode_labels(train[self.schema.label.name]).numpy()
            self.plan_.fit(self.preprocessor_.tabular_matrix(train), labels)
        train_batch, train_summary = self._encode(train, "train", self.plan_)
        val_batch, val_summary = (None, None) if val is None else self._encode(val, "val", self.plan_)
        self.model_ = self._build_model()

        if rank != 0:
            self.run_dir_ = run_dir
        else:
            self.run_dir_ = prepare_run_dir(run_dir, resume=resume)
            os.environ[RUN_DIR_ENV] = str(self.run_dir_)
            self._write_run_record(record, train_summary, val_summary, resume)

        # Lightning's CSV logger deletes an existing metrics.csv: keep the resumed run's history
        earlier_log = _read_log(self.run_dir_ / "metrics.csv") if resume else None
        trainer = self._make_trainer(has_val=val_batch is not None)
        train_loader = make_loader(train_batch, self.batch_size, shuffle=True, seed=self.seed, drop_last=True)
        val_loader = None if val_batch is None else make_loader(val_batch, self.batch_size * 2, shuffle=False)
        ckpt = str(self.run_dir_ / "checkpoints" / "last.ckpt") if resume else None
        trainer.fit(self.model_, train_loader, val_loader, ckpt_path=ckpt)
        if earlier_log is not None and rank == 0:
            _merge_log(self.run_dir_ / "metrics.csv", earlier_log)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            self.model_.load_state_dict(state)
        self.model_.eval()
        self.best_checkpoint_ = best
        return self

    def _write_run_record(self, record: dict[str, Any] | None, train_summary: dict, val_summary: dict | None, resume: bool) -> None:
        for name, content in (record or {}).items():
            if resume and (self.run_dir_ / name).exists():
                continue  # the run's original record stays as written
            if name.endswith(".yaml"):
                from omegaconf import OmegaConf

                write_text(self.run_dir_ / name, OmegaConf.to_yaml(OmegaConf.create(content)))
            else:
                write_json(self.run_dir_ / name, content)
        write_json(self.run_dir_ / "schema.json", self.schema.to_dict())
        if not (resume and (self.run_dir_ / "preprocessor.json").exists()):
            write_json(self.run_dir_ / "preprocessor.json", self.preprocessor_.state_dict())
        write_json(self.run_dir_ / "missingness.json", self.plan_.to_dict())
        write_json(self.run_dir_ / "data_summary.json", {"train": train_summary, "val": val_summary})

    def _make_trainer(self, has_val: bool):
        from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
        from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

        # the CSV log shares the run folder with the run's record on purpose (its history is
        # merged back on resume), so Lightning's "folder is not empty" notice is noise here
        warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
        cfg = {k: v for k, v in self.trainer.items() if v is not None}
        if cfg.get("precision") == "auto":
            cfg["precision"] = _auto_precision()
        _check_loggers(self.loggers)
        loggers = []
        for name in self.loggers:
            if name == "csv":
                loggers.append(CSVLogger(self.run_dir_, name="", version=""))
            elif name == "tensorboard":
                loggers.append(TensorBoardLogger(self.run_dir_, name="tensorboard", version=""))
            elif name == "mlflow":
                # MLFLOW_TRACKING_URI (a server) wins; else a database in the run folder, as
                # mlflow 3 refuses its old ./mlruns file store
                uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(self.run_dir_ / 'mlflow.db').resolve()}"
                loggers.append(MLFlowLogger(
                    experiment_name=self.data_name or "holomodal", run_name=self.run_dir_.name, tracking_uri=uri,
                    artifact_location=(self.run_dir_ / "mlartifacts").resolve().as_uri(),
                ))
        callbacks = [
            *compile_callbacks(self.compile),
            EpochSeed(self.seed),
            ModelCheckpoint(
                dirpath=self.run_dir_ / "checkpoints",
                filename="best",
                monitor=self.monitor_metric if has_val else None,
                mode="max",
                save_last=True,
                enable_version_counter=False,
            )
        ]
        if cfg.get("enable_progress_bar", True):
            callbacks.append(RichProgressBar(leave=True))
        if os.environ.get("HOLOMODAL_TEST_STEP_DELAY"):
            callbacks.append(_TestStepDelay(float(os.environ["HOLOMODAL_TEST_STEP_DELAY"])))
        return L.Trainer(
            default_root_dir=self.run_dir_, logger=loggers or False, callbacks=callbacks,
            plugins=[AtomicCheckpointIO()], enable_model_summary=False, **cfg,
        )

    # ---- inference ---------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise DataError("this Classifier is not fitted yet: call fit() or Classifier.load()")

    @torch.inference_mode()
    def _probabilities(self, batch: Batch) -> np.ndarray:
        model = self.model_.eval()
        device = next(model.parameters()).device
        out = [model.probabilities(model(part.to(device))).float().cpu() for part in make_loader(batch, 512, shuffle=False)]
        return torch.cat(out).numpy()

    def predict_proba(self, df: pd.DataFrame, missing: Sequence[str | dict] | None = None, split: str = "test") -> np.ndarray:
        """Class probabilities (rows x classes); rows may have missing cells and files."""
        self._check_fitted()
        plan = self._plan_for(missing)
        batch, _ = self._encode(df, split, plan, with_target=False)
        return self._probabilities(batch)

    def predict(self, df: pd.DataFrame, missing: Sequence[str | dict] | None = None) -> np.ndarray:
        proba = self.predict_proba(df, missing)
        if self.schema.task == Task.MULTILABEL:
            return (proba >= 0.5).astype(int)
        return np.asarray(self.preprocessor_.classes_)[proba.argmax(axis=1)]

    def _plan_for(self, missing: Sequence[str | dict] | None) -> MissingnessPlan | None:
        if missing is None:
            return None
        plan = MissingnessPlan.from_config(missing)
        plan.ranking_ = self.plan_.ranking_
        if plan.needs_ranking and plan.ranking_ is None:
            raise DataError("most/least-important feature masking needs the ranking fitted with the model: "
                            "train with an mifm/lifm spec, or evaluate rvm/rfm/modality instead")
        return plan

    def evaluate(self, df: pd.DataFrame, missing: Sequence[str | dict] | None = None, split: str = "test") -> dict[str, float]:
        """Metrics (torchmetrics) on a labelled table, optionally under synthetic missingness."""
        self._check_fitted()
        batch, _ = self._encode(df, split, self._plan_for(missing))
        probs = torch.from_numpy(self._probabilities(batch))
        return compute_metrics(self.schema.task.value, self.preprocessor_.num_classes, probs, batch.target)

    # ---- persistence -------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """A folder with JSON (config, preprocessing, masks' plan) and safetensors weights."""
        from safetensors.torch import save_file

        self._check_fitted()
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise RunFolderError(f"will not overwrite '{path}': it already holds files")
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "context": self._context().to_dict(),
            "preprocessor": self.preprocessor_.state_dict(),
            "missingness": self.plan_.to_dict(),
        }
        write_json(path / "predictor.json", meta)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}
        save_file(state, str(path / "model.safetensors"))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Classifier":
        from safetensors.torch import load_file

        path = Path(path)
        meta_file = path / "predictor.json"
        if not meta_file.exists():
            raise DataError(f"no saved model at '{path}': '{meta_file.name}' is missing")
        meta = json.loads(meta_file.read_text())
        pre = Preprocessor.from_state(meta["preprocessor"])
        params = copy.deepcopy(meta["params"])
        clf = cls(pre.schema, **params)
        clf.preprocessor_ = pre
        clf.plan_ = MissingnessPlan.from_dict(meta["missingness"])
        clf.model_ = clf._build_model()
        clf.model_.load_state_dict(load_file(str(path / "model.safetensors")))
        clf.model_.eval()
        return clf

