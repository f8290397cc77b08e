"""The estimator-style Python API; the CLI is a thin layer over it.

>>> clf = Classifier(schema, method="late_fusion", trainer={"max_epochs": 5})
>>> clf.fit(train_df, val_df)
>>> proba = clf.predict_proba(test_df)
>>> clf.evaluate(test_df)
>>> clf.save("model/"); Classifier.load("model/")

Hyper-parameters are stored by ``__init__`` only; the fitted state lives in attributes
ending in ``_`` (``preprocessor_``, ``model_``, ``plan_``, ``run_dir_``).

Deep methods train with a Lightning trainer; ``gbdt``, ``linear`` and ``ensemble`` fit in
one step on the whole encoded split (``fits_directly``) and write the same run folder,
without checkpoints or training curves.

Lightning is imported by training only: :meth:`Classifier.load` rebuilds the method as a
plain torch module and predicts with it in inference mode, batch by batch.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import torch

from holomodal.batch import Batch
from holomodal.errors import DataError, HolomodalError, RunFolderError
from holomodal.loading import make_loader, semi_supervised_loader
from holomodal.methods import METHODS, ModelContext, create_method
from holomodal.methods.base import compute_metrics
from holomodal.methods.classical.base import raw_texts
from holomodal.methods.semi_supervised.base import HIDDEN_TARGET, is_semi_supervised
from holomodal.missingness import MissingnessPlan
from holomodal.preprocessing import Preprocessor
from holomodal.runs import (
    check_run_dir, install_folder, jsonable, process_run_dir, resume_checkpoint, share_run_dir, take_run_dir,
    stale_staging, staging_folder, write_bytes_durably, writing,
)
from holomodal.safe_load import (
    DamagedFileError, check_checkpoint, load_checkpoint, load_safetensors, read_json, require_keys,
)
from holomodal.schema import Modality, Schema, Task, row_list
from holomodal.trainer_defaults import DEFAULT_TRAINER

if TYPE_CHECKING:
    import lightning as L

FORMAT_VERSION = 1
# supervised runs stop once the monitored metric has not improved for this many validation
# rounds (TIP's setting); trainer.early_stopping: null turns it off
DEFAULT_EARLY_STOPPING = {"patience": 10, "min_delta": 0.0002}
# metrics for which smaller is better; every other monitored metric is maximised
LOWER_IS_BETTER = ("rmse", "mae", "loss")
MODEL_DIR = "model"
MEMBERS_DIR = "members"  # an ensemble's members' run folders, inside its own
EXPERTS_DIR = "experts"  # the run folders of the experts a method fits before its own run (I2M2's), inside its own
log = logging.getLogger("holomodal")



def _rebuild_error(path: Path, exc: BaseException) -> DamagedFileError:
    text = str(exc).strip().splitlines()
    return DamagedFileError(path, f"cannot rebuild the model it describes ({type(exc).__name__}: {text[0] if text else ''})")


def use_fast_inference_layout(model: torch.nn.Module) -> None:
    """Convolutional timm backbones of a model rebuilt to predict run in NHWC: a quarter fewer
    CPU-seconds for ResNet-10-T at 128 px on a CPU, probabilities within 1e-7 of NCHW's."""
    from holomodal.encoders.timm_image import TimmImageEncoder

    for module in model.modules():
        if isinstance(module, TimmImageEncoder) and not module.channels_last and module.convolutional:
            module.use_channels_last()


def without_pretrained(options: Any) -> Any:
    """``options`` with every ``pretrained`` setting, at any depth, turned off."""
    if isinstance(options, dict):
        return {k: (False if k == "pretrained" and v not in (None, False) else without_pretrained(v)) for k, v in options.items()}
    if isinstance(options, list):
        return [without_pretrained(v) for v in options]
    return options


class TextKeepingPreprocessor(Preprocessor):
    """A :class:`Preprocessor` that keeps the raw text of the last table it encoded.

    The linear baseline reads raw text, which the token ids of a batch only hold the first
    ``max_length`` tokens of; code that is handed a batch alone (a robustness sweep, say)
    finds the text here, checked against the batch's own token ids."""

    _kept: tuple[dict[str, list[str]], dict[str, torch.Tensor]] | None = None

    def transform(self, df: pd.DataFrame, *, with_target: bool = True,
                  split: str | None = None) -> tuple[Batch, dict[str, Any]]:
        batch, summary = super().transform(df, with_target=with_target, split=split)
        texts = raw_texts(self.schema, df)
        self._kept = (texts, {c: batch.inputs[c]["input_ids"] for c in texts}) if texts else None
        return batch, summary

    def texts_for(self, batch: Batch) -> dict[str, list[str]]:
        """The raw text of ``batch``'s rows, from the table encoded last; a :class:`DataError`
        when that table is not the one ``batch`` comes from."""
        stale = DataError("this model reads raw text, and the batch is not from the table encoded last: "
                          "encode the table again (or pass its text: texts=raw_texts(schema, table))")
        if not self.schema.of(Modality.TEXT):
            return {}
        if self._kept is None:
            raise stale
        texts, ids = self._kept
        rows = (torch.arange(len(batch)) if batch.row is None else batch.row).cpu()
        out = {}
        for column, kept in texts.items():
            if column not in batch.inputs or (len(rows) and int(rows.max()) >= len(kept)):
                raise stale
            present = batch.present[column].cpu()
            if not torch.equal(batch.inputs[column]["input_ids"].cpu()[present], ids[column][rows][present]):
                raise stale
            out[column] = [kept[i] for i in rows.tolist()]
        return out


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
        self.trainer = {**DEFAULT_TRAINER, "early_stopping": dict(DEFAULT_EARLY_STOPPING), **(trainer or {})}
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
        return {Task.BINARY: "val/auroc", Task.MULTICLASS: "val/accuracy", Task.MULTILABEL: "val/f1_macro",
                Task.REGRESSION: "val/rmse"}[self.schema.task]

    @property
    def fits_directly(self) -> bool:
        """The method fits in one step without a Lightning trainer (classical, ensemble)."""
        return bool(getattr(METHODS.get(self.method), "fits_directly", False))

    @property
    def semi_supervised(self) -> bool:
        """The method also learns from unlabelled rows (stil, fixmatch, ...)."""
        return is_semi_supervised(METHODS.get(self.method))

    @property
    def monitor_mode(self) -> str:
        return "min" if self.monitor_metric.rsplit("/", 1)[-1].endswith(LOWER_IS_BETTER) else "max"

    # ---- encoding ----------------------------------------------------------------------
    def _encode(self, df: pd.DataFrame, split: str, plan: MissingnessPlan | None, with_target: bool = True) -> tuple[Batch, dict[str, Any]]:
        batch, summary = self.preprocessor_.transform(df, with_target=with_target, split=split)
        if plan is not None and plan.specs:
            n_tab = 0 if batch.cell_missing is None else batch.cell_missing.shape[1]
            types = {m: "tabular" if m == "tabular" else self.schema.modality_type(m).value for m in batch.present}
            masks = plan.masks(split, len(batch), n_tab, list(batch.present), types)
            if with_target:  # recorded with the run: every method trained on this split sees these rows dropped
                self.drawn_masks_ = {**getattr(self, "drawn_masks_", {}),
                                     split: {m: np.flatnonzero(~k).tolist() for m, k in masks.keep.items() if (~k).any()}}
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
        rows = getattr(self, "train_rows_", None)
        scale = tuple(pre.label_scale) if self.schema.task == Task.REGRESSION else None
        return ModelContext(pre.input_specs, types, pre.num_classes, self.schema.task.value, list(pre.classes_),
                            train_rows=rows, label_scale=scale, unlabelled_rows=getattr(self, "unlabelled_rows_", None))

    def _build_model(self, trainable: bool = True) -> Any:
        """The method's model; ``trainable``: in its LightningModule form, else (to predict)
        the plain torch module."""
        if self.fits_directly:  # no optimiser; the seed seeds the estimator
            return create_method(self.method, self._context(), trainable=False, **{"seed": self.seed, **self.model})
        return create_method(self.method, self._context(), trainable=trainable, optim=self.optim, **self.model)

    # ---- fit ---------------------------------------------------------------------------
    def fit(
        self, train: pd.DataFrame, val: pd.DataFrame | None = None, *, resume: bool = False,
        record: dict[str, Any] | None = None, members: dict[str, "Classifier"] | None = None,
        unlabeled: pd.DataFrame | None = None,
    ) -> "Classifier":
        """Fit on ``train`` (model selection on ``val``). ``record`` maps file names to
        data written into the run folder (YAML for ``.yaml``, else JSON).

        ``resume`` continues the run in ``run_dir`` from ``checkpoints/last.ckpt`` (or
        ``best.ckpt`` when there is no ``last.ckpt``): an interrupted run, or a finished one
        given a larger ``trainer.max_epochs``.

        Classical methods (``gbdt``, ``linear``) fit in one step, without a trainer. The
        ``ensemble`` fits its members (``model.members``) as runs of their own in
        ``RUN/members/<name>/``, or takes ``members``: classifiers already fitted on this
        ``train``, by name; then it weighs them on ``val``, which it needs.

        A method with ``expert_fits`` (``i2m2`` with ``init: pretrained_experts``) has its
        experts fitted first, each as a run of its own in ``RUN/experts/<name>/``, and starts
        its own run from their best weights; a resumed run skips them, its checkpoint holding
        those weights.

        Semi-supervised methods (``stil``, ``fixmatch``, ...) also learn from unlabelled
        rows: the rows of ``train`` whose label is empty, and the table ``unlabeled``. A label
        that ``unlabeled`` does hold is hidden from training and only measures how often the
        pseudo-labels are right (``pseudo/accuracy`` in the training log), as in a
        ``data.label_fraction`` run."""
        import lightning as L

        from holomodal.training import check_loggers, merge_log, read_log, run_fit, saved_preprocessor, update_records

        # everything that can fail on the user's data runs before the run folder is touched
        if self.fits_directly and resume:
            raise RunFolderError(f"method '{self.method}' fits in one step, with nothing to resume: train it again")
        if self.method == "ensemble" and val is None:
            raise DataError("method 'ensemble' weighs its members on a validation split: give val (data.val, "
                            "or data.val_fraction)")
        if members is not None and self.method != "ensemble":
            raise ValueError("members= is for method 'ensemble'")
        check_loggers(self.loggers)
        train, unlabelled = self._split_unlabelled(train, unlabeled)
        self.schema.validate(train, allow_extra=True)
        if val is not None:
            self.schema.validate(val, allow_extra=True)
        Preprocessor(self.schema).check_labels(train, val=val)
        # under DDP every process runs fit(); only global rank 0 owns the run folder, and the
        # processes it launches inherit the folder's name through the environment
        rank, run_dir = process_run_dir(self.run_dir, self.data_name, self.method)
        if rank == 0:
            if resume and resume_checkpoint(run_dir) is None and (run_dir / EXPERTS_DIR).is_dir():
                raise RunFolderError(f"cannot resume '{run_dir}': it stopped while fitting its experts (in "
                                     f"'{run_dir / EXPERTS_DIR}'), before its own run wrote a checkpoint; "
                                     "train again in a new run folder")
            check_run_dir(run_dir, resume=resume)
        start_from = self._resume_checkpoint(run_dir) if resume else None
        L.seed_everything(self.seed, workers=True, verbose=False)
        saved = run_dir / "preprocessor.json"
        if resume and saved.exists():
            self.preprocessor_ = saved_preprocessor(saved, TextKeepingPreprocessor)
        else:
            self.preprocessor_ = TextKeepingPreprocessor(self.schema).fit(train, unlabelled=unlabelled)
        # a method starting from pre-trained weights must see the data encoded as in pre-training
        adopt = getattr(METHODS.get(self.method), "adopt_pretraining", None)
        if adopt is not None:
            self.model = adopt(self.preprocessor_, self.model)
        self.train_rows_ = len(train)
        self.unlabelled_rows_ = None if unlabelled is None else len(unlabelled)
        # the defaults the method fills in (its encoders, chosen by modality and data size) are
        # written out, so that the run's record and the saved model say what was built
        if members is not None:  # the record names the members as a fresh ensemble would fit them
            self.model = {**self.model, "members": [{"name": n, "method": m.method, "model": m.model} for n, m in members.items()]}
        self.model = METHODS.get(self.method).resolve_options(self._context(), self.model)
        self.plan_ = MissingnessPlan.from_config(self.missing).for_run(self.seed)
        if self.plan_.needs_ranking:
            labels = self.preprocessor_.encode_labels(train[self.schema.label.name]).numpy()
            self.plan_.fit(self.preprocessor_.tabular_matrix(train), labels)
        train_batch, train_summary = self._encode(train, "train", self.plan_)
        val_batch, val_summary = (None, None) if val is None else self._encode(val, "val", self.plan_)
        unlabelled_batch = None
        if unlabelled is not None:
            unlabelled_batch, train_summary["unlabelled"] = self._encode_unlabelled(unlabelled)
        self.model_ = self._build_model()

        self.run_dir_, claim = take_run_dir(rank, run_dir, resume=resume)
        pending: dict[str, str] = {}
        if claim is not None:
            self.claim_ = claim
            pending = self._write_run_record(record, train_summary, val_summary, resume)

        if self.fits_directly:
            self._fit_directly(train, val, train_batch, val_batch, members)
            update_records(self.run_dir_, pending)
            self.best_checkpoint_ = ""
            self._finish_run(val)
            return self
        if start_from is None:  # a resumed run's checkpoint holds the experts' weights already
            self._fit_experts(train, val, rank)
        # Lightning's CSV logger deletes an existing metrics.csv: keep the resumed run's history
        earlier_log = read_log(self.run_dir_ / "metrics.csv") if resume and rank == 0 else None
        trainer = self._make_trainer(has_val=val_batch is not None)
        if unlabelled_batch is not None:
            train_loader = semi_supervised_loader(train_batch, unlabelled_batch, self.batch_size,
                                                  ratio=self.model_.unlabelled_ratio, seed=self.seed)
        else:
            train_loader = make_loader(train_batch, self.batch_size, shuffle=True, seed=self.seed, drop_last=True)
        val_loader = None if val_batch is None else make_loader(val_batch, self.batch_size * 2, shuffle=False)
        run_fit(trainer, self.model_, train_loader, val_loader, self.run_dir_, start_from)
        if rank == 0:
            if earlier_log is not None:
                merge_log(self.run_dir_ / "metrics.csv", earlier_log)
            update_records(self.run_dir_, pending)
        # the best epoch's weights, from the fixed file name: a run folder that was moved
        # before a resume still finds them (the checkpoint callback remembers the old path)
        best = self.run_dir_ / "checkpoints" / "best.ckpt"
        if best.exists():
            self.model_.load_state_dict(self._checkpoint_weights(best))
        self.model_.eval()
        # what a method measures on the training rows with its final weights (DyMo's subset statistics)
        after_fit = getattr(self.model_, "after_fit", None)
        if after_fit is not None:
            after_fit(train_batch)
        self.best_checkpoint_ = str(best) if best.exists() else ""
        if rank == 0:
            self._finish_run(val)
        return self

    def _split_unlabelled(self, train: pd.DataFrame, unlabeled: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """(labelled training rows, unlabelled rows or None): a semi-supervised method takes
        the rows of ``train`` with an empty label and the ``unlabeled`` table; another method
        refuses ``unlabeled``, and meets an empty label as the error it is."""
        label = self.schema.label.name
        if not self.semi_supervised:
            if unlabeled is not None:
                raise DataError(f"method '{self.method}' learns from labelled rows only: unlabelled rows are for the "
                                "semi-supervised methods (stil, fixmatch, simmatch, comatch, freematch, mmatch, cotraining)")
            return train, None
        parts = []
        if label in train.columns:
            empty = train[label].isna().to_numpy()
            if empty.any():
                parts.append(train[empty].drop(columns=[label]))
                train = train[~empty].reset_index(drop=True)
        if unlabeled is not None:
            if not isinstance(unlabeled, pd.DataFrame):
                raise DataError(f"unlabeled must be a table (pandas DataFrame), got {type(unlabeled).__name__}")
            self.schema.validate(unlabeled, require_label=False, allow_extra=True)
            parts.append(unlabeled)
        if not len(train):
            raise DataError(f"label column '{label}': no training row has a label; a semi-supervised method needs a few")
        if not parts or not sum(len(p) for p in parts):
            if getattr(METHODS.get(self.method), "needs_unlabelled", True):
                raise DataError(f"method '{self.method}' learns from unlabelled rows too, and there are none: leave the "
                                f"label of unlabelled rows empty, pass fit(..., unlabeled=table), or set data.label_fraction")
            return train, None
        return train, pd.concat(parts, ignore_index=True)

    def _encode_unlabelled(self, unlabelled: pd.DataFrame) -> tuple[Batch, dict[str, Any]]:
        """The unlabelled rows encoded as training rows (the training split's synthetic
        missingness applies to them), their hidden labels, where a table holds some, beside
        them (-1 where unknown or a class the labelled rows lack)."""
        batch, summary = self._encode(unlabelled, "train", self.plan_, with_target=False)
        label = self.schema.label.name
        hidden = torch.full((len(unlabelled),), -1, dtype=torch.long)
        if label in unlabelled.columns:
            values = unlabelled[label]
            known = np.flatnonzero(values.notna().to_numpy())
            try:  # class names, or codes where the schema lists the classes
                hidden[known] = self.preprocessor_.encode_labels(values.iloc[known])
            except DataError:  # some class the labelled rows lack: those rows stay unknown
                for i in known:
                    try:
                        hidden[i] = int(self.preprocessor_.encode_labels(values.iloc[i : i + 1])[0])
                    except DataError:
                        pass
            summary["hidden_labels"] = int((hidden >= 0).sum())
        batch.extras[HIDDEN_TARGET] = hidden
        return batch, summary

    def _fit_experts(self, train: pd.DataFrame, val: pd.DataFrame | None, rank: int) -> None:
        """Fit the runs a method asks for before its own (``expert_fits``: I2M2's
        ``pretrained_experts``), each a classifier of its own in ``RUN/experts/<name>/`` with
        its best validation epoch kept, and load those weights into the method's sub-modules."""
        expert_fits = getattr(self.model_, "expert_fits", None)
        if expert_fits is None:
            return
        from holomodal.console import say

        for name, (method, options, optim, epochs, target) in expert_fits().items():
            folder = self.run_dir_ / EXPERTS_DIR / name
            if rank == 0:
                say(f"phase: expert '{name}' trained alone ({method}, {epochs} epoch(s), its own run in {folder})")
            params = {**self.get_params(), "method": method, "model": options, "optim": optim,
                      "trainer": {**self.trainer, "max_epochs": epochs}}
            expert = Classifier(self.schema, **params, run_dir=folder)
            expert.fit(train, val)
            share_run_dir(self.run_dir_)  # the expert's fit named its own folder there
            target.load_state_dict(expert.model_.state_dict(), strict=True)

    def _fit_directly(self, train: pd.DataFrame, val: pd.DataFrame | None, train_batch: Batch,
                      val_batch: Batch | None, members: dict[str, "Classifier"] | None) -> None:
        if self.method != "ensemble":
            self.model_.fit(train_batch, raw_texts(self.schema, train))
            return
        if members is None:
            members = {}
            for name, spec in zip(self.model_.names, self.model_.specs):
                params = {**self.get_params(), "method": spec["method"], "model": dict(spec.get("model") or {})}
                child = Classifier(self.schema, **params, run_dir=self.run_dir_ / MEMBERS_DIR / name)
                members[name] = child.fit(train, val)
                share_run_dir(self.run_dir_)  # the member's fit named its own folder there
        mine = json.dumps(self.preprocessor_.state_dict(), sort_keys=True, default=jsonable)
        for name, member in members.items():
            if json.dumps(member.preprocessor_.state_dict(), sort_keys=True, default=jsonable) != mine:
                raise DataError(f"ensemble member '{name}' ({member.method}) encodes the data differently from the "
                                "ensemble (trained on another table, or encoded as in its pre-training): members "
                                "must be fitted on the ensemble's training table")
        self.model_.set_members(members)
        self.model_.fit_weights(val_batch, raw_texts(self.schema, val), self._selection_score())

    def _selection_score(self) -> Any:
        """The monitored metric as a score to maximise, for choosing ensemble weights."""
        name = self.monitor_metric.rsplit("/", 1)[-1]
        sign = -1.0 if self.monitor_mode == "min" else 1.0
        task, n = self.schema.task.value, self.preprocessor_.num_classes

        def score(probs: np.ndarray, target: np.ndarray) -> float:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # undefined on validation: NaN, which selection skips
                values = compute_metrics(task, n, torch.from_numpy(np.asarray(probs, np.float32)), torch.from_numpy(target))
            if name not in values:
                raise DataError(f"monitor '{self.monitor_metric}' is not a {task} metric (known: {sorted(values)})")
            return sign * values[name]

        return score

    def _finish_run(self, val: pd.DataFrame | None) -> None:
        """What a finished run folder holds besides its record, for a run made in Python as for
        one made by ``holomodal train``: the validation metrics, the model, the curves."""
        from holomodal.plots import plot_pseudo_labels, plot_training_curves
        from holomodal.runs import write_json, write_text

        metrics = self.evaluate(val, missing=self.missing or None, split="val") if val is not None else None
        results: dict[str, Any] = {"best_checkpoint": self.best_checkpoint_}
        if metrics is not None:
            results["val"] = metrics
            if metrics.undefined:
                results["undefined"] = {"val": metrics.undefined}
        if self.method == "ensemble":  # each pattern's validation scores, members and ensemble
            results["ensemble"] = self.model_.ensemble_.to_dict()["validation_scores"]
        write_json(self.run_dir_ / "metrics.json", results)
        # holomodal train adds the test split to these rather than scoring validation again
        self.run_results_ = results
        rows = [] if metrics is None else [{"split": "val", **metrics}]
        write_text(self.run_dir_ / "results.csv", pd.DataFrame(rows).to_csv(index=False))
        self.save(self.run_dir_ / MODEL_DIR)
        plot_training_curves(self.run_dir_ / "metrics.csv", self.run_dir_ / "training_curves.png")
        plot_pseudo_labels(self.run_dir_ / "metrics.csv", self.run_dir_ / "pseudo_labels.png")

    def config_record(self) -> dict[str, Any]:
        """The run's settings as a configuration file holds them (``config.yaml`` of a run
        made in Python); the data section carries the schema, as the tables are the caller's."""
        params = self.get_params()
        run = {"dir": str(getattr(self, "run_dir_", self.run_dir) or ""), "loggers": params.pop("loggers"),
               "compile": params.pop("compile")}
        params.pop("data_name")
        return {"data": {"schema": self.schema.to_dict(), "label": self.schema.label.name}, **params, "run": run}

    @staticmethod
    def _resume_checkpoint(run_dir: Path) -> Path:
        start_from = resume_checkpoint(run_dir)
        if start_from is None:
            raise RunFolderError(f"cannot resume: no checkpoint at '{run_dir / 'checkpoints' / 'last.ckpt'}' (nor best.ckpt)")
        best = start_from.with_name("best.ckpt")
        try:
            check_checkpoint(start_from)  # damaged or foreign: refused before any work
        except DamagedFileError as exc:
            if start_from != best and best.exists():
                raise DamagedFileError(exc.path, f"{str(exc).split(': ', 1)[1]}; the run also holds '{best}': "
                                                 "delete the damaged file to resume from that one") from None
            raise
        return start_from

    @staticmethod
    def _checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
        ckpt = load_checkpoint(path)
        state = ckpt.get("state_dict")
        if not isinstance(state, dict):
            raise DamagedFileError(path, "it holds no model weights ('state_dict')")
        return state

    def _write_run_record(self, record: dict[str, Any] | None, train_summary: dict, val_summary: dict | None,
                          resume: bool) -> dict[str, str]:
        from holomodal.training import write_records

        if record is None:
            record = {"config.yaml": self.config_record()}
        elif isinstance(record.get("config.yaml"), dict):
            record = {**record, "config.yaml": {**record["config.yaml"], "model": self.model}}
        pending = write_records(self.run_dir_, record, resume=resume)
        records = {"schema.json": self.schema.to_dict(), "missingness.json": self.plan_.to_dict(),
                   "data_summary.json": {"train": train_summary, "val": val_summary}}
        if getattr(self, "drawn_masks_", None):
            # by split and modality, the row positions (in the split's table) whose modality was dropped
            records["missing_masks.json"] = self.drawn_masks_
        if not (resume and (self.run_dir_ / "preprocessor.json").exists()):
            records["preprocessor.json"] = self.preprocessor_.state_dict()
        write_records(self.run_dir_, records, resume=False)
        return pending

    def _make_trainer(self, has_val: bool) -> L.Trainer:
        from holomodal import training

        monitor = self.monitor_metric if has_val else None
        return training.build_trainer(
            self.run_dir_, self.trainer, seed=self.seed, loggers=self.loggers, experiment=self.data_name,
            compile=self.compile, monitor=monitor, mode=self.monitor_mode,
            checkpoint={"filename": "best", "monitor": monitor, "mode": self.monitor_mode},
        )

    # ---- inference ---------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise DataError("this Classifier is not fitted yet: call fit() or Classifier.load()")

    @torch.inference_mode()
    def _probabilities(self, batch: Batch, texts: dict[str, list[str]] | None = None,
                       selection: Any = None) -> np.ndarray:
        """Class probabilities (or standardised values) of an encoded ``batch``. ``texts``: the
        raw text of its rows, which a classical model reads; by default the text of the table
        the preprocessor encoded last, when ``batch`` comes from it. ``selection``: a
        :class:`~holomodal.selection.inference.ModalitySelection` that chooses each row's
        modalities (and records its choices)."""
        if selection is not None:
            probs = selection.probabilities(self.model_, batch).float().numpy()
        elif self.fits_directly:
            if texts is None and getattr(self.model_, "uses_text", False):
                texts = self.preprocessor_.texts_for(batch)
            probs = self.model_.probabilities(batch, texts).float().numpy()
        else:
            model = self.model_.eval()
            device = next(model.parameters()).device
            out = [model.probabilities(model(part.to(device))).float().cpu() for part in make_loader(batch, 512, shuffle=False)]
            probs = torch.cat(out).numpy()
        # inputs are validated, so this means diverged weights: no prediction or metric is made of it
        bad = ~np.isfinite(probs).all(axis=1)
        if bad.any():
            raise DataError(f"the model gave non-finite probabilities for the row(s) at position(s) "
                            f"{row_list(np.flatnonzero(bad))}: its weights hold NaN or inf (a diverged training run)")
        return probs

    def selection(self, strategy: str = "dymo", recoverer: Any = "nearest", train: pd.DataFrame | None = None, *,
                  calibration: str = "logratio", temperature: float = 0.1) -> Any:
        """A :class:`~holomodal.selection.inference.ModalitySelection` for :meth:`predict`
        (``select=``): ``strategy`` ``dymo`` (DyMo's per-sample choice of recovered
        modalities), ``discard`` (observed modalities only) or ``recover_all``. ``recoverer``:
        a fitted recoverer, or the name of one to fit on ``train`` (the training table):
        ``nearest``, ``iterative``, ``tip:<pre-training run>``, ``mopoe``. Needs a model of
        method ``dynamic``."""
        from holomodal.selection.inference import ModalitySelection, build_recoverer, check_selectable

        self._check_fitted()
        check_selectable(self.model_)
        if strategy == "discard":
            recoverer = None
        elif isinstance(recoverer, str):
            if train is None:
                raise DataError(f"selection '{strategy}' fits the recoverer '{recoverer}' on the training rows: "
                                "pass train=<the training table>")
            train_batch, _ = self._encode(train, "train", None)
            recoverer = build_recoverer(recoverer, self.model_, self.preprocessor_.input_specs, train_batch)
        return ModalitySelection(recoverer, strategy, calibration, temperature)

    def _selection_for(self, select: Any, options: dict[str, Any]) -> Any:
        if select is None:
            if options:
                raise DataError(f"{', '.join(sorted(options))} only apply with select=...")
            return None
        return self.selection(select, **options) if isinstance(select, str) else select

    def predict_proba(self, df: pd.DataFrame, missing: Sequence[str | dict] | None = None, split: str = "test",
                      select: Any = None, **selection_options: Any) -> np.ndarray:
        """Class probabilities (rows x classes); rows may have missing cells and files.
        ``select``: ``dymo``, ``discard``, ``recover_all`` or a :meth:`selection` (with
        ``recoverer=`` and ``train=`` for a name); its per-row choices are then in
        ``selection_records_``."""
        self._check_fitted()
        selection = self._selection_for(select, selection_options)
        plan = self._plan_for(missing)
        batch, _ = self._encode(df, split, plan, with_target=False)
        probs = self._probabilities(batch, selection=selection)
        if selection is not None:
            self.selection_records_ = selection.records
        return probs

    def predict(self, df: pd.DataFrame, missing: Sequence[str | dict] | None = None, select: Any = None,
                **selection_options: Any) -> np.ndarray:
        proba = self.predict_proba(df, missing, select=select, **selection_options)
        if self.schema.task == Task.REGRESSION:
            return self.preprocessor_.decode_values(proba[:, 0])
        if self.schema.task == Task.MULTILABEL:
            return (proba >= 0.5).astype(int)
        return np.asarray(self.preprocessor_.classes_)[proba.argmax(axis=1)]

    def _plan_for(self, missing: Sequence[str | dict] | None) -> MissingnessPlan | None:
        if missing is None:
            return None
        plan = MissingnessPlan.from_config(missing).for_run(self.seed)
        plan.ranking_ = self.plan_.ranking_
        if plan.needs_ranking and plan.ranking_ is None:
            raise DataError("most/least-important feature masking needs the ranking fitted with the model: "
                            "train with an mifm/lifm spec, or evaluate rvm/rfm/modality instead")
        return plan

    def evaluate(self, df: pd.DataFrame, missing: Sequence[str | dict] | None = None, split: str = "test",
                 select: Any = None, **selection_options: Any) -> dict[str, float]:
        """Metrics (torchmetrics) on a labelled table, optionally under synthetic missingness
        and with a modality ``select``-ion as in :meth:`predict_proba`.

        A metric the table's labels cannot define (AUROC with one class present, say) is NaN,
        its reason in the result's ``undefined`` mapping and an ``UndefinedMetricWarning``."""
        self._check_fitted()
        selection = self._selection_for(select, selection_options)
        batch, _ = self._encode(df, split, self._plan_for(missing))
        probs = torch.from_numpy(self._probabilities(batch, selection=selection))
        if selection is not None:
            self.selection_records_ = selection.records
        target = batch.target
        if self.schema.task == Task.REGRESSION:  # errors in the label's own units
            probs = torch.from_numpy(np.asarray(self.preprocessor_.decode_values(probs[:, 0].numpy()), np.float32)[:, None])
            target = torch.from_numpy(np.asarray(self.preprocessor_.decode_values(target.numpy()), np.float32).reshape(target.shape))
        return compute_metrics(self.schema.task.value, self.preprocessor_.num_classes, probs, target,
                               class_names=self.preprocessor_.classes_)

    # ---- persistence -------------------------------------------------------------------
    def _own_model_dir(self, path: Path) -> bool:
        """``path`` is the model folder of the run this object trained (and holds the claim of)."""
        run = getattr(self, "run_dir_", None)
        return run is not None and path.resolve() == (Path(run) / MODEL_DIR).resolve()

    def save(self, path: str | Path) -> Path:
        """A folder with JSON (config, preprocessing, masks' plan) and safetensors weights.

        Written whole into a temporary folder beside ``path``, flushed to the disk and renamed
        into place, so a kill or a full disk never leaves a partial model. A folder that holds
        files is not overwritten, except the ``model/`` of the run this object trained, which
        is replaced (a resume re-makes a damaged one)."""
        from safetensors.torch import save_file

        self._check_fitted()
        path = Path(path)
        own = self._own_model_dir(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())) and not own:
            raise RunFolderError(f"will not overwrite '{path}': it already holds files")
        meta = {
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "context": self._context().to_dict(),
            "preprocessor": self.preprocessor_.state_dict(),
            "missingness": self.plan_.to_dict(),
        }
        text = json.dumps(meta, indent=2, default=jsonable).encode()
        state = None if self.fits_directly else {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}
        if own:  # what a killed save of this run left behind
            for stale in stale_staging(path):
                shutil.rmtree(stale, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            intact = f"the model saved before in '{path}' is unchanged"
        elif own:
            intact = (f"no model/ was written; the run's checkpoints are intact, and "
                      f"`holomodal train --resume {path.parent}` makes model/ from them")
        else:
            intact = f"nothing was written to '{path}'"
        tmp = None
        try:
            with writing(path, intact):
                tmp = staging_folder(path)
                write_bytes_durably(tmp / "predictor.json", text)
                if state is None:  # classical: JSON + safetensors (+ skops); ensemble: JSON + members
                    self.model_.save(tmp)
                else:
                    save_file(state, str(tmp / "model.safetensors"))
                install_folder(tmp, path)
        except BaseException:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Classifier":
        """A model saved by :meth:`save`; reads JSON and safetensors only (no pickle), and for
        ``gbdt`` skops' format with a fixed list of trusted types."""
        path = Path(path)
        meta_file = path / "predictor.json"
        if not meta_file.exists():
            interrupted = stale_staging(path)
            hint = (f"; a save into it was interrupted: `holomodal train --resume {path.parent}` makes it again"
                    if interrupted else "")
            raise DataError(f"no saved model at '{path}': '{meta_file.name}' is missing{hint}")
        meta = read_json(meta_file, "saved model description")
        require_keys(meta_file, meta, ("format_version", "params", "preprocessor", "missingness"))
        if not isinstance(meta["format_version"], int) or meta["format_version"] > FORMAT_VERSION:
            raise DataError(f"'{meta_file}' is format {meta['format_version']!r}; this holomodal reads format "
                            f"{FORMAT_VERSION} and older: upgrade holomodal")
        try:
            pre = TextKeepingPreprocessor.from_state(meta["preprocessor"])
            params = copy.deepcopy(meta["params"])
            # the saved weights replace any pretrained ones: never look for them (or download them)
            params["model"] = without_pretrained(params.get("model") or {})
            clf = cls(pre.schema, **params)
            clf.preprocessor_ = pre
            clf.train_rows_ = (meta.get("context") or {}).get("train_rows")
            clf.unlabelled_rows_ = (meta.get("context") or {}).get("unlabelled_rows")
            clf.plan_ = MissingnessPlan.from_dict(meta["missingness"])
            clf.model_ = clf._build_model(trainable=False)
        except HolomodalError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise _rebuild_error(meta_file, exc) from None
        if clf.fits_directly:
            clf.model_.load(path)
            return clf
        weights_file = path / "model.safetensors"
        weights = load_safetensors(weights_file, "model weights file")
        try:
            clf.model_.load_state_dict(weights)
        except RuntimeError as exc:
            lines = str(exc).strip().splitlines()
            why = lines[1].strip() if len(lines) > 1 else lines[0] if lines else ""
            raise DamagedFileError(weights_file, f"its tensors do not fit the model '{meta_file.name}' describes ({why})") from None
        use_fast_inference_layout(clf.model_)
        clf.model_.eval()
        return clf
