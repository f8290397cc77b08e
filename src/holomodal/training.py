"""What every training run shares, supervised (:class:`~holomodal.estimator.Classifier`) or
self-supervised (:class:`~holomodal.pretraining.Pretrainer`): the Lightning Trainer and its
loggers, callbacks, checkpoint writer and reader, per-epoch seeding, precision, and the
run folder's records (``metrics.csv`` kept across a resume, the record files).

:func:`build_trainer` is the one place a ``lightning.Trainer`` is made; :func:`run_fit` the
one place ``Trainer.fit`` runs.
"""

from __future__ import annotations

import importlib.util
import io
import json
import contextlib
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from holomodal.compilation import compile_callbacks
from holomodal.console import LEAFSPEC_DEPRECATION, LIGHTNING_NOTICES, NOISE, interactive, say
from holomodal.errors import ConfigError, HolomodalError
from holomodal.runs import CHECKPOINTS, disk_full, is_disk_full, jsonable, write_text
from holomodal.safe_load import load_checkpoint, unsafe_imports
from holomodal.trainer_defaults import DEFAULT_TRAINER, EARLY_STOPPING, KNOWN_LOGGERS

log = logging.getLogger("holomodal")


class EpochSeed(Callback):
    """Re-seeds every epoch from (seed, epoch), so dropout and augmentation in an epoch do not
    depend on whether the run was resumed before it."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # modulo numpy's seed range: any valid run seed stays valid (unchanged below 4295)
        L.seed_everything((self.seed * 1_000_003 + trainer.current_epoch) % 2**32, verbose=False)

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
    ``--resume`` would choke on. Read back weights-only, whatever Lightning or the
    environment asks for (:mod:`holomodal.safe_load`)."""

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
            # what cannot be read weights-only could not be resumed: fail now, not at the resume
            unsafe = unsafe_imports(tmp)
            if unsafe:
                raise TypeError(f"the checkpoint would hold objects a weights-only load refuses ({', '.join(unsafe)}): "
                                "store plain types (str, int, float, lists, dicts, tensors) in checkpoint state")
            os.replace(tmp, path)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if is_disk_full(exc) and not isinstance(exc, HolomodalError):
                kept = f"'{path}' keeps the checkpoint of an earlier epoch" if path.exists() else "no checkpoint of that name exists yet"
                raise disk_full(path, kept) from None
            raise

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        # weights_only=False from a caller is not honoured: no holomodal checkpoint needs it
        return load_checkpoint(path, "checkpoint")


class RunCheckpoint(ModelCheckpoint):
    """A checkpoint callback that keeps its record when the run folder has moved.

    Lightning restores the best score and paths only when the checkpoint folder is the
    one recorded; in a run folder that was moved or copied before ``--resume`` it would
    forget the best score and replace ``best.ckpt`` with a worse epoch. The folder here is
    always ``<run>/checkpoints``, so the recorded paths are moved along with it."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and os.path.realpath(old) != os.path.realpath(new):
            def moved(p: Any) -> Any:
                return os.path.join(new, os.path.basename(p)) if isinstance(p, str) and os.path.dirname(p) == old else p

            state_dict = {
                **state_dict, "dirpath": new,
                **{k: moved(state_dict.get(k)) for k in ("best_model_path", "kth_best_model_path", "last_model_path")
                   if k in state_dict},
                "best_k_models": {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()},
            }
        super().load_state_dict(state_dict)


class LastCheckpoint(RunCheckpoint):
    """``checkpoints/last.ckpt``, written at the end of every epoch.

    Lightning 2.6's ``save_last=True`` writes ``last.ckpt`` only in an epoch that also wrote
    a top-k checkpoint (and at the end of training), so after an epoch that did not improve
    the monitored metric ``last.ckpt`` would hold an older epoch: a resume would then repeat
    epochs, and a finished run would look unfinished. This callback has no monitor and saves
    every epoch instead."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(dirpath=run_dir / CHECKPOINTS, filename="last", monitor=None, save_top_k=1,
                         save_last=False, enable_version_counter=False)

    @property
    def state_key(self) -> str:  # distinct from a best-checkpoint callback that has no monitor either
        return "holomodal.LastCheckpoint"


class RunConsole(Callback):
    """The run as lines a person reads (:func:`holomodal.console.say`): where it runs, one
    line an epoch (train loss, the monitored metric, seconds), a line when the method's
    training phase changes (a module's ``phase_name``), and why it stopped.

    ``screen=False`` when a progress bar shows the epochs: the lines then go only to the
    run log. Silent in processes other than global rank 0."""

    def __init__(self, run_dir: Path, monitor: str | None = None, mode: str = "max", screen: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.monitor = monitor
        self.mode = mode
        self.screen = screen
        self.phase: str | None = None
        self.best: tuple[float, int | None] | None = None
        self.epoch_start = 0.0
        self.sanity_filters: Any = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # setup, not on_fit_start: a resumed checkpoint is restored in between, and an error
        # there belongs in the run's log too
        if stage != "fit" or not trainer.is_global_zero:
            return
        where = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
        devices = f"{trainer.num_devices} {where} device{'s' if trainer.num_devices > 1 else ''}"
        if trainer.num_nodes > 1:
            devices += f" on each of {trainer.num_nodes} nodes"
        say(f"run folder: {self.run_dir}; training on {devices}, precision {trainer.precision}", run_dir=self.run_dir)

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the check scores a couple of validation batches that may lack a class: torchmetrics'
        # complaint about it concerns a score nobody sees
        self.sanity_filters = warnings.catch_warnings()
        self.sanity_filters.__enter__()
        warnings.filterwarnings("ignore", message="No (positive|negative) samples in targets")

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end_sanity_filters()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._end_sanity_filters()

    def _end_sanity_filters(self) -> None:
        if self.sanity_filters is not None:
            self.sanity_filters.__exit__(None, None, None)
            self.sanity_filters = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and trainer.current_epoch > 0:
            say(f"resumed from {trainer.ckpt_path} after epoch {trainer.current_epoch}")
            best = getattr(trainer.checkpoint_callback, "best_model_score", None)
            if best is not None and self.monitor:
                self.best = (float(best), None)  # an epoch before the resume

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_start = time.perf_counter()
        phase = getattr(pl_module, "phase_name", None)
        if phase and phase != self.phase and trainer.is_global_zero:
            say(f"phase: {phase} (from epoch {trainer.current_epoch + 1})")
        self.phase = phase or self.phase

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = ["train/loss", self.monitor or "val/loss"]
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        parts += [f"{name} {float(metrics[name]):.4f}" for name in dict.fromkeys(shown) if name in metrics]
        score = float(metrics[self.monitor]) if self.monitor in metrics else math.nan
        if math.isfinite(score):
            if self.best is None or (score > self.best[0] if self.mode == "max" else score < self.best[0]):
                self.best = (score, trainer.current_epoch + 1)
                parts[-1] += " (best)"
        parts.append(f"{time.perf_counter() - self.epoch_start:.1f} s")
        say("  ".join(parts), screen=self.screen)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from lightning.pytorch.callbacks import EarlyStopping, Timer

        done = trainer.current_epoch  # epochs completed
        why = f"{done} of {trainer.max_epochs} epoch(s)"
        for cb in trainer.callbacks:
            if isinstance(cb, EarlyStopping) and cb.stopped_epoch:
                why = (f"stopped early after epoch {cb.stopped_epoch + 1}: {cb.monitor} did not improve for "
                       f"{cb.patience} epoch(s)")
            elif isinstance(cb, Timer) and (cb.time_remaining() or 0) <= 0 and done < (trainer.max_epochs or 0):
                why = f"stopped after epoch {done}: trainer.max_time reached"
        best = ""
        if self.best is not None and self.monitor:
            when = f"epoch {self.best[1]}" if self.best[1] else "an epoch before the resume"
            best = f"; best {self.monitor} {self.best[0]:.4f} at {when}"
        say(f"training done: {why}{best}")


class StepDelayHook(Callback):
    """Test hook only: sleeps after every training batch, so that a test can kill a run in
    the middle of an epoch. Enabled by the environment variable HOLOMODAL_TEST_STEP_DELAY
    (seconds); never set in normal use."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(self.seconds)


def check_loggers(names: Sequence[str]) -> None:
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


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless cloud" not in record.getMessage()


def quiet_adverts() -> None:
    """Lightning's adverts for its cloud services dropped, for the Python API too (the CLI
    quiets all of Lightning's notices)."""
    for name in LIGHTNING_NOTICES:
        notices = logging.getLogger(name)
        if not any(isinstance(f, _NoAdverts) for f in notices.filters):
            notices.addFilter(_NoAdverts())


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products in hardware (AVX512-BF16 or AMX):
    elsewhere bf16 autocast converts back and forth and runs slower than fp32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def auto_precision(accelerator: str | None = "auto") -> str:
    """``precision: auto``: bf16 mixed precision on a GPU that supports it and on a CPU with
    native bf16 (:func:`cpu_has_native_bf16`), fp32 elsewhere. On such CPUs bf16 matched fp32's
    final metrics within the seed spread (benchmarks/precision.py) at 1.1-1.4x shorter fits."""
    on_gpu = accelerator in (None, "auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    if accelerator in (None, "auto", "cpu") and cpu_has_native_bf16():
        return "bf16-mixed"
    return "32-true"


def make_loggers(names: Sequence[str], run_dir: Path, experiment: str | None = None) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

    check_loggers(names)
    loggers: list[Any] = []
    for name in names:
        if name == "csv":
            loggers.append(CSVLogger(run_dir, name="", version=""))
        elif name == "tensorboard":
            loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
        elif name == "mlflow":
            # MLFLOW_TRACKING_URI (a server) wins; else a database in the run folder, as
            # mlflow 3 refuses its old ./mlruns file store
            uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
            loggers.append(MLFlowLogger(
                experiment_name=experiment or "holomodal", run_name=run_dir.name, tracking_uri=uri,
                artifact_location=(run_dir / "mlartifacts").resolve().as_uri(),
            ))
    return loggers


def trainer_options(trainer: dict[str, Any]) -> dict[str, Any]:
    """The ``lightning.Trainer`` keyword arguments of a run's ``trainer`` settings."""
    cfg = {k: v for k, v in trainer.items() if v is not None and k != EARLY_STOPPING}
    if cfg.get("precision") == "auto":
        cfg["precision"] = auto_precision(cfg.get("accelerator", "auto"))
    return cfg


def build_trainer(
    run_dir: Path,
    trainer: dict[str, Any],
    *,
    seed: int,
    loggers: Sequence[str] = ("csv",),
    checkpoint: dict[str, Any] | None = None,
    experiment: str | None = None,
    compile: bool | dict[str, Any] = False,
    monitor: str | None = None,
    mode: str = "max",
    callbacks: Sequence[Callback] = (),
) -> L.Trainer:
    """The Trainer of a run in ``run_dir``.

    Args:
        trainer: Lightning options (``DEFAULT_TRAINER`` keys and any other ``Trainer``
            argument; ``max_time`` is Lightning's time limit), plus ``early_stopping``:
            options of Lightning's ``EarlyStopping`` on ``monitor`` (null: off).
        checkpoint: ``ModelCheckpoint`` options of a further checkpoint, such as the best
            epoch's, or None; the folder is always ``run_dir/checkpoints``, and
            ``last.ckpt`` is always written at the end of every epoch.
        monitor, mode: the metric model selection and early stopping follow.
        callbacks: the caller's own callbacks, run after holomodal's.
    """
    from lightning.pytorch.callbacks import EarlyStopping, RichProgressBar

    # the CSV log shares the run folder with the run's record on purpose (its history is
    # merged back on resume), and a resume finds its checkpoint folder full: both notices are noise
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    # Lightning's own use of a torch API newer torch deprecates: nothing a user can act on
    warnings.filterwarnings("ignore", message=LEAFSPEC_DEPRECATION)
    cfg = trainer_options(trainer)
    # a bar only where it can redraw itself; elsewhere RunConsole's line an epoch says the same
    bar = bool(cfg.get("enable_progress_bar", True)) and interactive()
    cfg["enable_progress_bar"] = bar
    quiet_adverts()
    stack: list[Callback] = [*compile_callbacks(compile), EpochSeed(seed)]
    if checkpoint is not None:  # first, so that it is Trainer.checkpoint_callback
        stack.append(RunCheckpoint(dirpath=run_dir / CHECKPOINTS, enable_version_counter=False,
                                   **{"save_last": False, **checkpoint}))
    stack.append(LastCheckpoint(run_dir))
    stopping = trainer.get(EARLY_STOPPING)
    if stopping and monitor:
        stack.append(EarlyStopping(monitor=monitor, mode=mode, **dict(stopping)))
    if bar:
        stack.append(RichProgressBar(leave=True))
    stack.append(RunConsole(run_dir, monitor=monitor, mode=mode, screen=not bar))
    if os.environ.get("HOLOMODAL_TEST_STEP_DELAY"):
        stack.append(StepDelayHook(float(os.environ["HOLOMODAL_TEST_STEP_DELAY"])))
    stack.extend(callbacks)
    with lightning_notices_off():  # the device lines
        return L.Trainer(
            default_root_dir=run_dir, logger=make_loggers(loggers, run_dir, experiment) or False, callbacks=stack,
            plugins=[AtomicCheckpointIO()], enable_model_summary=False, **cfg,
        )


LIGHTNING_NOTICE_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


@contextlib.contextmanager
def lightning_notices_off() -> Iterator[None]:
    """Lightning's own notices (devices, "Trainer.fit stopped", restoring a checkpoint) repeat
    what :class:`RunConsole` says: they are off for the duration, unless someone set those
    loggers' levels (``holomodal -v`` does); so are the warnings nobody can act on."""
    unset = [lg for lg in map(logging.getLogger, LIGHTNING_NOTICE_LOGGERS) if lg.level == logging.NOTSET]
    for lg in unset:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for pattern in NOISE:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for lg in unset:
            lg.setLevel(logging.NOTSET)


def run_fit(trainer: L.Trainer, module: L.LightningModule, train_loader: Any, val_loader: Any,
            run_dir: Path, ckpt_path: Path | None = None) -> None:
    """``trainer.fit``, with a full disk and a checkpoint that does not fit the model turned
    into errors that say what happened and what is intact."""
    try:
        with lightning_notices_off():
            trainer.fit(module, train_loader, val_loader, ckpt_path=None if ckpt_path is None else str(ckpt_path))
    except Exception as exc:
        if isinstance(exc, HolomodalError):
            raise
        if is_disk_full(exc):
            where = getattr(exc, "filename", None) or run_dir
            raise disk_full(where, f"the checkpoints in '{run_dir / CHECKPOINTS}' are intact: free space, then "
                                   f"resume with `holomodal train --resume {run_dir}`") from None
        if isinstance(exc, RuntimeError) and ckpt_path is not None and "Error(s) in loading state_dict" in str(exc):
            lines = str(exc).strip().splitlines()
            raise ConfigError(
                f"the checkpoint '{ckpt_path}' does not fit the model this configuration builds "
                f"({lines[1].strip() if len(lines) > 1 else lines[0]}): resume with the run's own settings"
            ) from None
        raise


# ---- run-folder records --------------------------------------------------------------------------
def saved_preprocessor(path: Path, kind: Any) -> Any:
    """The preprocessing a run recorded in ``path``, rebuilt as ``kind`` (a Preprocessor class):
    a resumed run reuses it rather than trusting a refit (on other library versions, say) to
    give the same encoding."""
    from holomodal.safe_load import DamagedFileError, read_json

    state = read_json(path, "preprocessing record")
    try:
        return kind.from_state(state)
    except HolomodalError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise DamagedFileError(path, f"cannot rebuild the preprocessing ({type(exc).__name__}: {exc})") from None


def read_log(path: Path) -> pd.DataFrame | None:
    """A run's ``metrics.csv``; a last line cut short by a kill is dropped, an unreadable
    log is left out of the resumed run's history with a warning."""
    if not path.exists() or not path.stat().st_size:
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError):
        pass
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    try:
        return pd.read_csv(io.StringIO("\n".join(lines[:-1])))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        log.warning("the training log '%s' is unreadable (%s); the resumed run's log starts afresh", path, exc)
        return None


def merge_log(path: Path, earlier: pd.DataFrame) -> None:
    """Put the epochs logged before a resume back in front of the resumed run's log; rows of
    the interrupted epoch are dropped, as the resumed run logged that epoch again. Lightning's
    CSV logger deletes the log when it starts, so a resume that trained no further epoch
    writes the earlier log back as it was."""
    later = read_log(path)
    if later is None or "epoch" not in later or "epoch" not in earlier:
        if later is None:
            write_text(path, earlier.to_csv(index=False))
        return
    kept = earlier[earlier["epoch"] < later["epoch"].min()]
    write_text(path, pd.concat([kept, later], ignore_index=True).to_csv(index=False))


def record_text(name: str, content: Any) -> str:
    if name.endswith(".yaml"):
        from omegaconf import OmegaConf

        return OmegaConf.to_yaml(OmegaConf.create(content))
    return json.dumps(content, indent=2, default=jsonable)


def write_records(run_dir: Path, record: dict[str, Any] | None, *, resume: bool) -> dict[str, str]:
    """Write the record files (YAML for ``.yaml``, else JSON). On a resume a record that
    exists is not touched here: the changed ones are returned, to be written by
    :func:`update_records` once the resumed training has succeeded (a resume that fails, say
    on settings that do not fit the checkpoint, leaves the run's record as it was)."""
    pending: dict[str, str] = {}
    for name, content in (record or {}).items():
        text = record_text(name, content)
        target = run_dir / name
        if resume and target.exists():
            if target.read_text(encoding="utf-8", errors="replace") != text:
                pending[name] = text
            continue
        write_text(target, text)
    return pending


def update_records(run_dir: Path, pending: dict[str, str]) -> None:
    for name, text in pending.items():
        # e.g. a larger trainer.max_epochs: the record says what the model was trained with
        log.info("resumed run: '%s' updated to the settings of the resume", run_dir / name)
        write_text(run_dir / name, text)


__all__ = [
    "DEFAULT_TRAINER", "KNOWN_LOGGERS", "AtomicCheckpointIO", "EpochSeed", "LastCheckpoint", "RunCheckpoint",
    "RunConsole", "auto_precision", "build_trainer", "cpu_has_native_bf16",
    "check_loggers", "make_loggers", "merge_log", "read_log", "run_fit", "update_records", "write_records",
]
