"""Every file holomodal reads back from a run folder or a saved model goes through here.

A checkpoint is a zip holding a pickle, and unpickling can run code. So a checkpoint is read
only if (1) a static walk over its pickle's opcodes, which executes nothing, finds that it
imports nothing outside torch's weights-only allow-list, and (2) ``torch.load`` is then
called with ``weights_only=True`` given explicitly. The environment variable
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` only overrides ``torch.load`` when the caller leaves
``weights_only`` unset (torch 2.14 serialization.py), and the static check does not consult
torch at all: neither the environment nor a future change to torch's defaults can turn
these reads into a full unpickle.

A file that is truncated, not what its name says, or unsafe raises a :class:`DamagedFileError`
(``damaged file X: why``) or an :class:`UnsafeFileError`, never a library's own exception.
"""

from __future__ import annotations

import _compat_pickle
import json
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch

from holomodal.errors import DataError

# opcodes that push a str, so the names a STACK_GLOBAL takes can be followed statically
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}
# opcodes that reach objects through the copyreg extension registry: never in a torch.save file
_EXTENSIONS = {"EXT1", "EXT2", "EXT4"}
_DYNAMIC = "<a name computed while unpickling>"


class DamagedFileError(DataError):
    """A file holomodal wrote is truncated or damaged (a kill, a full disk, a copy gone wrong)."""

    def __init__(self, path: str | Path, why: str) -> None:
        self.path = Path(path)
        super().__init__(f"damaged file {self.path}: {why}")


class UnsafeFileError(DataError):
    """A checkpoint that would import or call something beyond tensors and plain containers."""


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _regular_file(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} '{path}' not found")
    if not path.is_file():  # a FIFO would block open() forever; a folder or device is no checkpoint
        raise DamagedFileError(path, f"not a regular file (a {what} must be a file)")


# ---- checkpoints (torch zip archives) -----------------------------------------------------------
def _python3_name(module: str, attr: str) -> str:
    """The name as the unpickler imports it: protocol-2 pickles use Python 2's module names
    (``__builtin__.exec`` is ``builtins.exec``), which it maps as pickle's fix_imports does."""
    module, attr = _compat_pickle.NAME_MAPPING.get((module, attr), (module, attr))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{attr}"


def pickle_globals(data: bytes) -> set[str]:
    """Every ``module.name`` the pickle ``data`` would import, found without running it; a
    name the pickle computes at load time is reported as ``<a name computed ...>``."""
    found: set[str] = set()
    stack: list[str | None] = []  # the str pushed by each recent opcode (None: not a str)
    memo: dict[Any, str | None] = {}
    memo_count = 0
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            found.add(_python3_name(module, attr))
            stack.append(None)
        elif name == "STACK_GLOBAL":
            module, attr = (stack[-2], stack[-1]) if len(stack) >= 2 else (None, None)
            found.add(_python3_name(module, attr) if isinstance(module, str) and isinstance(attr, str) else _DYNAMIC)
            stack.append(None)
        elif name in _EXTENSIONS:
            found.add(_DYNAMIC)
        elif name in _STRING_OPS:
            stack.append(arg if isinstance(arg, str) else arg.decode("latin-1") if isinstance(arg, bytes) else None)
        elif name in ("PROTO", "FRAME"):
            continue  # framing, not a push
        elif name == "MEMOIZE":
            memo[memo_count] = stack[-1] if stack else None
            memo_count += 1
        elif name in _MEMO_PUT:
            memo[arg] = stack[-1] if stack else None
        elif name in _MEMO_GET:
            stack.append(memo.get(arg))
        else:
            stack.append(None)
        del stack[:-2]  # STACK_GLOBAL only ever reads the two latest pushes
    return found


def allowed_globals() -> set[str]:
    """What torch's weights-only unpickler accepts: its defaults and the user's allow-list."""
    from torch import _weights_only_unpickler as wo

    return set(wo._get_allowed_globals()) | set(wo._get_user_allowed_globals())


def _archive_pickle(path: Path, what: str) -> bytes:
    """The ``data.pkl`` record of a torch zip archive, refusing archives torch and this check
    could read differently (several records of one name, several archives in one zip)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if len(names) != len(set(names)):
                raise DamagedFileError(path, "the archive holds two records of the same name")
            pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise DamagedFileError(path, f"not a {what} written by torch (no single data.pkl record)")
            return archive.read(pickles[0])
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DamagedFileError(path, f"not a readable {what} (truncated, or not written by torch): {_reason(exc)}") from None


def unsafe_imports(path: str | Path, what: str = "checkpoint") -> list[str]:
    """What the pickle of the torch archive ``path`` would import beyond the weights-only
    allow-list; reads the pickle record only, not the tensors."""
    path = Path(path)
    _regular_file(path, what)
    data = _archive_pickle(path, what)
    try:
        imported = pickle_globals(data)
    except (ValueError, EOFError, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise DamagedFileError(path, f"its pickle record is truncated or malformed: {_reason(exc)}") from None
    return sorted(imported - allowed_globals())


def check_checkpoint(path: str | Path, what: str = "checkpoint") -> None:
    """Refuse ``path`` unless it is a torch zip archive whose pickle imports only what the
    weights-only unpickler allows."""
    unsafe = unsafe_imports(path, what)
    if unsafe:
        raise UnsafeFileError(
            f"'{path}' is not a weights-only {what}: loading it would import {', '.join(unsafe[:5])}"
            f"{' ...' if len(unsafe) > 5 else ''}, which could run code. holomodal never writes such "
            "a file; it was changed or comes from elsewhere, so it is not loaded"
        )


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """A checkpoint's contents on the CPU, read weights-only whatever the environment says."""
    path = Path(path)
    check_checkpoint(path, what)
    try:
        with open(path, "rb") as fh:
            # the file object, not the path: torch would otherwise treat a *.safetensors name specially
            loaded = torch.load(fh, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(f"'{path}' is not a weights-only {what}: {_reason(exc)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DamagedFileError(path, f"cannot read it as a {what}: {_reason(exc)}") from None
    if not isinstance(loaded, dict):
        raise DamagedFileError(path, f"a {what} holds a mapping, this holds a {type(loaded).__name__}")
    return loaded


# ---- safetensors and JSON -------------------------------------------------------------------------
def checkpoint_record(path: Path, key: str, what: str) -> tuple[dict[str, Any], Any]:
    """(checkpoint, the JSON record holomodal stored under ``key``) of a pre-training checkpoint."""
    ckpt = load_checkpoint(path, f"{what} checkpoint")
    if key not in ckpt:
        raise DataError(f"'{path}' is not a holomodal {what} checkpoint")
    try:
        return ckpt, json.loads(ckpt[key])
    except (TypeError, ValueError) as exc:
        raise DamagedFileError(path, f"its {what} record is not valid JSON ({exc})") from None


def run_checkpoint_record(path: str | Path, key: str, what: str, method: str) -> tuple[Path, dict[str, Any], Any]:
    """(checkpoint file, checkpoint, record) of a pre-training run folder (its
    ``checkpoints/last.ckpt``) or checkpoint file made by ``holomodal pretrain method=<method>``."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "last.ckpt"
    if not p.is_file():
        raise DataError(f"no {what} checkpoint at '{p}' (give a 'holomodal pretrain ... method={method}' run folder)")
    ckpt, record = checkpoint_record(p, key, what)
    return p, ckpt, record


def checkpoint_weights(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(ckpt.get("state_dict"), dict):
        raise DamagedFileError(path, "it holds no weights ('state_dict')")
    return ckpt["state_dict"]


def load_safetensors(path: str | Path, what: str = "weights file") -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (a format that holds no code), on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    _regular_file(path, what)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DamagedFileError(path, f"not a readable safetensors file (truncated?): {_reason(exc)}") from None


def read_json(path: str | Path, what: str = "file") -> Any:
    path = Path(path)
    _regular_file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise DamagedFileError(path, f"not valid JSON (truncated?): {_reason(exc)}") from None


def require_keys(path: str | Path, record: Any, keys: Iterable[str]) -> None:
    """A JSON record must be an object holding ``keys``; else the file is damaged."""
    if not isinstance(record, dict):
        raise DamagedFileError(path, f"expected a JSON object, found {type(record).__name__}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise DamagedFileError(path, f"it lacks {', '.join(repr(k) for k in missing)}")
