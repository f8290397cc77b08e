"""The lines a person reads while a command runs, on screen and in the run folder.

Every line goes through the logger ``holomodal.console`` (:func:`say`); the CLI's
:func:`console_session` shows them (warnings and errors on stderr as ``warning: ...`` and
``error: ...``) and copies them into ``RUN/train.log`` once a training run names its
folder. It also keeps Lightning's notices off the screen: the hardware summary, adverts
and stop notices are replaced by holomodal's own lines
(:class:`holomodal.training.RunConsole`); ``--verbose`` lets them through again.

Outside a session (the Python API) the lines are ordinary log records; when nothing at
all is set up to show them they are printed, so that a script run without a terminal
still reports its epochs.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TextIO

CONSOLE = "holomodal.console"
LOG_FILE = "train.log"
LIBRARY = "holomodal"
# where Lightning says what hardware it found, advertises its cloud services, says why fit
# stopped: one logger for the pytorch half, one for fabric
LIGHTNING_NOTICES = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
# and the modules that log notices of their own at INFO: the GPUs each process sees, the
# distributed set-up, processes launched, checkpoints restored. Set on these loggers, the
# level holds whenever Lightning is imported (its packages reset their own level on import)
LIGHTNING_INFO = LIGHTNING_NOTICES + tuple(f"lightning.{name}" for name in (
    "pytorch.accelerators.cuda", "fabric.accelerators.cuda", "fabric.utilities.distributed", "fabric.utilities.seed",
    "fabric.strategies.launchers.subprocess_script", "pytorch.trainer.connectors.checkpoint_connector",
    "pytorch.trainer.connectors.signal_connector",
))
# warnings that say nothing a holomodal user can act on; each with the reason it is dropped
# Lightning 2.6 against newer torch: an internal deprecation inside Lightning itself
LEAFSPEC_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
NOISE = (
    LEAFSPEC_DEPRECATION,
    # holomodal logs per epoch, so Lightning's per-step logging interval does not matter
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # in-memory tensors: worker processes would only add start-up time
    r".*does not have many workers",
    # holomodal's methods put modules in eval mode on purpose (TIP's frozen backbone)
    r"Found \d+ module\(s\) in eval mode at the start of training",
)

_log = logging.getLogger(CONSOLE)


def say(text: str, *, screen: bool = True, run_dir: str | Path | None = None) -> None:
    """One line (or block) for the person running the command.

    ``screen=False`` keeps it off the screen (the run log still gets it), for what a
    progress bar already shows; ``run_dir`` names the run folder whose log the session
    starts writing (the lines said before it included)."""
    if not _log.hasHandlers():
        if screen:
            print(text, flush=True)
        return
    extra: dict[str, Any] = {"screen": screen}
    if run_dir is not None:
        extra["run_dir"] = str(run_dir)
    _log.info(text, extra=extra)


def warn(text: str) -> None:
    """A ``warning: ...`` line on stderr (and in the run log)."""
    if _log.hasHandlers():
        _log.warning(text)
    else:
        print(f"warning: {text}", file=sys.stderr)


def error(text: str) -> None:
    """An ``error: ...`` line on stderr (and in the run log, when the run had named its folder)."""
    if _log.hasHandlers():
        _log.error(text)
    else:
        print(f"error: {text}", file=sys.stderr)


def render(renderable: Any) -> str:
    """A rich renderable (a table) as plain text, as wide as the terminal, without colour codes:
    the same text fits the screen and the log file."""
    from rich.console import Console

    buffer = io.StringIO()
    width = shutil.get_terminal_size((100, 24)).columns
    Console(file=buffer, width=width, color_system=None, force_terminal=False, soft_wrap=False).print(renderable)
    return buffer.getvalue().rstrip("\n")


def _prefixed(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.levelno >= logging.ERROR:
        return f"error: {text}"
    if record.levelno >= logging.WARNING:
        return f"warning: {text}"
    return text


class ScreenHandler(logging.Handler):
    """stdout for plain lines, stderr for warnings and errors; the streams are looked up at
    every line, so that a redirected or captured ``sys.stdout`` is the one written to."""

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, "screen", True):
            return
        try:
            stream: TextIO = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(_prefixed(record) + "\n")
            # one line an epoch is only useful if it arrives when the epoch ends, also in a pipe
            stream.flush()
        except Exception:
            self.handleError(record)


class RunLog(logging.Handler):
    """The session's lines, appended to ``RUN/train.log``. The lines said before a run names
    its folder (the schema, the settings checked) are held back and written first."""

    def __init__(self, header: str) -> None:
        super().__init__()
        self.held: list[str] = [header]
        self.file: TextIO | None = None
        self.path: Path | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
            text = _prefixed(record)
            # a block (a table) starts on a line of its own, so that its columns stay aligned
            line = f"{stamp}\n{text}" if "\n" in text else f"{stamp}  {text}"
            run_dir = getattr(record, "run_dir", None)
            if run_dir is not None and (self.path is None or Path(run_dir) / LOG_FILE != self.path):
                self._open(Path(run_dir) / LOG_FILE)
            if self.file is None:
                self.held.append(line)
                return
            self.file.write(line + "\n")
            self.file.flush()
        except Exception:
            self.handleError(record)

    def _open(self, path: Path) -> None:
        if self.file is not None:
            self.file.close()
        self.path = path
        # appended: a resumed run's log keeps the lines of the runs before it
        self.file = open(path, "a", encoding="utf-8")
        for line in self.held:
            self.file.write(line + "\n")
        self.held = []
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        super().close()


def _origin(filename: str) -> str:
    """The package a warning comes from, from its file name (``torchmetrics``), or ''."""
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return Path(parts[parts.index(marker) + 1]).stem
    return ""


class WarningLines:
    """``warnings.showwarning`` for a session: each distinct warning once, as a ``warning:``
    line; one from another package names the package."""

    def __init__(self) -> None:
        self.seen: set[tuple[type, str]] = set()

    def __call__(self, message: Any, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
        text = str(message).strip()
        if (category, text) in self.seen:
            return
        self.seen.add((category, text))
        origin = "" if category.__module__.split(".")[0] == LIBRARY else _origin(filename)
        warn(f"{text} [{origin}]" if origin else text)


@contextmanager
def _saved_levels(names: tuple[str, ...]) -> Iterator[None]:
    saved = [(lg, lg.level, lg.propagate) for lg in map(logging.getLogger, names)]
    try:
        yield
    finally:
        for lg, level, propagate in saved:
            lg.setLevel(level)
            lg.propagate = propagate


def interactive() -> bool:
    """Whether stdout is watched live (a terminal, a notebook), where a progress bar can redraw
    itself; in a file or a pipe it would break into fragments."""
    return sys.stdout.isatty() or "ipykernel" in sys.modules


@contextmanager
def console_session(command: str, *, verbose: bool = False) -> Iterator[None]:
    """The output of one CLI command: holomodal's lines on screen and in the run log,
    Lightning's notices quiet (unless ``verbose``), each warning once."""
    library, console = logging.getLogger(LIBRARY), logging.getLogger(CONSOLE)
    header = f"{time.strftime('%Y-%m-%d %H:%M:%S')}  $ holomodal {command}  (pid {os.getpid()})"
    handlers = [ScreenHandler(), RunLog(header)]
    with _saved_levels((LIBRARY, CONSOLE, "lightning", *LIGHTNING_INFO)), warnings.catch_warnings():
        for handler in handlers:
            library.addHandler(handler)
        # the root handler the CLI sets up would repeat every line
        library.propagate = False
        library.setLevel(logging.INFO if verbose else logging.WARNING)
        console.setLevel(logging.INFO)
        for name in LIGHTNING_INFO:
            logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
        # Lightning has a handler of its own on 'lightning'; passing its records on to the
        # root handler as well printed each of them twice
        logging.getLogger("lightning").propagate = False
        for pattern in NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        if not verbose:
            warnings.showwarning = WarningLines()
        try:
            yield
        finally:
            for handler in handlers:
                library.removeHandler(handler)
                handler.close()
