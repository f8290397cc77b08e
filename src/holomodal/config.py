"""Configuration: YAML files merged in order, then dotted ``key=value`` overrides (OmegaConf).

:func:`load_config` also remembers where every key came from (a file, an override, the
defaults), so that :mod:`holomodal.config_check` can say so when it refuses one.
"""

from __future__ import annotations

import weakref
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from holomodal.errors import ConfigError

DEFAULT_SOURCE = "the defaults (default.yaml)"
# id(config) -> {dotted key: source}; an entry lives as long as its config object
_SOURCES: dict[int, dict[str, str]] = {}


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
    sources: dict[str, str] = {}
    for name in files:
        path = config_path(name)
        layer = _read_file(path)
        _note_sources(sources, "", OmegaConf.to_container(layer, resolve=False), f"config file '{path}'")
        cfg = _merge(cfg, layer, f"config file '{path}'")
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form key=value")
        value = _parse_value(text, item)
        try:
            OmegaConf.update(cfg, key.strip(), value, force_add=True)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"override '{item}': {exc}") from None
        _note_sources(sources, key.strip(), value, f"command-line override '{item}'")
    _SOURCES[id(cfg)] = sources
    weakref.finalize(cfg, _SOURCES.pop, id(cfg), None)
    return cfg


def config_sources(cfg: Any) -> dict[str, str]:
    """Where each dotted key of a config from :func:`load_config` was set (files and
    overrides only; keys left at their default are absent)."""
    return dict(_SOURCES.get(id(cfg), {}))


def _read_file(path: Path) -> DictConfig:
    try:
        # OmegaConf's YAML reading, as before: it also reads 1e-4 as a number
        layer = OmegaConf.create(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file '{path}': {exc}") from None
    except (yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    if not isinstance(layer, DictConfig):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys, not a list")
    return layer


def _merge(cfg: DictConfig, layer: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, layer)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _note_sources(sources: dict[str, str], prefix: str, value: Any, source: str) -> None:
    if prefix:
        sources[prefix] = source
    if isinstance(value, dict):
        for key, sub in value.items():
            _note_sources(sources, f"{prefix}.{key}" if prefix else str(key), sub, source)


def _parse_value(text: str, item: str) -> Any:
    # YAML typing for overrides: 3 -> int, 0.1 -> float, [a, b] -> list, null -> None;
    # ${...} interpolations stay unresolved until the whole config is
    if not text.strip():
        return ""
    try:
        return OmegaConf.to_container(OmegaConf.create(f"v: {text}"), resolve=False)["v"]  # type: ignore[index]
    except (yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError(f"override '{item}': cannot read the value '{text}': {exc}") from None


def to_container(cfg: DictConfig | dict) -> dict[str, Any]:
    if isinstance(cfg, dict):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
