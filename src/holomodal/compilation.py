"""Optional ``torch.compile`` of the encoders and fusion modules (``run.compile: true``).

Only the modules' entry points are compiled, in place, on the instance: ``forward`` and,
where a module has it, ``forward_tokens`` (TIP calls that one directly, so compiling
``__call__`` alone would miss it). Parameters and state-dict keys stay as they are, so a
compiled run writes the same checkpoints and saved models as an eager one and either can
resume or load the other's. The method's own step (losses, masks, sampling) stays eager:
it is cheap next to the encoders and holds the data-dependent control flow that would
make the compiler split graphs.
"""

from __future__ import annotations

from typing import Any, Iterator

import lightning as L
import torch
from torch import nn

ENTRY_POINTS = ("forward", "forward_tokens")


def compile_targets(root: nn.Module) -> Iterator[nn.Module]:
    """The outermost encoders and fusion modules inside ``root``."""
    from holomodal.encoders.base import Encoder
    from holomodal.fusion import FUSIONS

    fusion_types = tuple(t for t in (FUSIONS.get(n) for n in FUSIONS.list()) if isinstance(t, type))
    kinds = (Encoder, *fusion_types)
    stack = list(root.children())
    while stack:
        module = stack.pop(0)
        if isinstance(module, kinds):
            yield module
        else:
            stack.extend(module.children())


def compile_modules(root: nn.Module, **options: Any) -> list[str]:
    """Compile the entry points of every target in place; returns their class names."""
    names = []
    for module in compile_targets(root):
        if getattr(module, "_holomodal_compiled", False):
            continue
        for entry in ENTRY_POINTS:
            if hasattr(module, entry):
                setattr(module, entry, torch.compile(getattr(module, entry), **options))
        module._holomodal_compiled = True
        names.append(type(module).__name__)
    return names


class CompileModules(L.Callback):
    """Compiles a method's encoders and fusion modules when fitting starts.

    ``options`` go to ``torch.compile`` (``mode``, ``dynamic``, ...)."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.compiled: list[str] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.compiled = compile_modules(pl_module, **self.options)


def compile_callbacks(setting: bool | dict[str, Any] | None) -> list[L.Callback]:
    """The callback list for a ``run.compile`` setting: false/None, true, or torch.compile options."""
    if not setting:
        return []
    return [CompileModules(**(setting if isinstance(setting, dict) else {}))]
