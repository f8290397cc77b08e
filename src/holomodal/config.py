"""Configuration: YAML files merged in order, then dotted ``key=value`` overrides (OmegaConf)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from holomodal.errors import ConfigError


def default_config() -> DictConfig:
    text = resources.files("holomodal").joinpath("configs/default.yaml").read_text()
    return OmegaConf.create(text)


def config_path(name: str) -> Path:
    """A config file by path, or by name among the bundled experiment configs."""
    path = Path(name)
    if path.exists():
        return path
    bundled = Path(str(resources.files("holomodal").joinpath(f"configs/experiments/{name}")))
    for candidate in (bundled, bundled.with_suffix(".yaml")):
        if candidate.exists():
            return candidate
    raise ConfigError(f"config file '{name}' not found (looked at {path.resolve()} and {bundled})")


def load_config(files: Sequence[str] = (), overrides: Sequence[str] = ()) -> DictConfig:
    cfg = default_config()
    try:
        for name in files:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(config_path(name)))
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override '{item}' is not of the form key=value")
            key, value = item.split("=", 1)
            OmegaConf.update(cfg, key, OmegaConf.create({"v": _parse_value(value)})["v"], force_add=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    return cfg


def _parse_value(text: str) -> Any:
    # YAML typing for overrides: 3 -> int, 0.1 -> float, [a, b] -> list, null -> None
    return OmegaConf.create(f"v: {text}")["v"] if text.strip() else ""


def to_container(cfg: DictConfig | dict) -> dict[str, Any]:
    if isinstance(cfg, dict):
        return cfg
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
