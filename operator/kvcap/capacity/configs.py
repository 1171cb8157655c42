"""Resolve MODEL (a catalog id, a config.json path, a directory, or a fetched config) into a ModelArch.

Pure capacity layer: no network. A Hub fetch happens in the shell (`kvcap.clients.hfhub`) and its
result comes in as `config`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from kvcap.api.errors import InvalidModelConfig, ModelNotFound
from kvcap.capacity import catalog
from kvcap.capacity.arch import ModelArch, parse_config


def read_config_file(path: Path) -> dict[str, Any]:
    if path.is_dir():
        candidate = path / "config.json"
        if not candidate.is_file():
            raise ModelNotFound(f"directory '{path}' holds no config.json")
        path = candidate
    try:
        text = path.read_text()
    except OSError as err:
        raise ModelNotFound(f"cannot read '{path}': {err.strerror}") from err
    return parse_config_text(text, f"'{path}'")


def parse_config_text(text: str, where: str) -> dict[str, Any]:
    """Parse config.json text (a file, a ConfigMap key); InvalidModelConfig says where and why."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidModelConfig(
            f"{where} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from err
    if not isinstance(config, dict):
        raise InvalidModelConfig(f"{where} must hold a JSON object (a Hugging Face config.json)")
    return config


@lru_cache(maxsize=256)
def _catalog_arch(model_id: str) -> ModelArch:
    entry = catalog.get_model(model_id)
    return parse_config(entry.config, name=entry.id, num_parameters=entry.num_parameters,
                        num_active_parameters=entry.num_active_parameters)


def looks_like_path(name: str) -> bool:
    """A config.json path or a directory, as opposed to a catalog or Hub id."""
    return name.endswith(".json") or name.startswith((".", "/", "~")) or Path(name).expanduser().is_dir()


def load_model(name: str, *, config: dict[str, Any] | None = None) -> ModelArch:
    """Resolution order: an explicit `config` dict (e.g. fetched from the Hub), a local path, the catalog."""
    if config is not None:
        entry = catalog.find_model(name)
        params = entry.num_parameters if entry else None
        return parse_config(config, name=name, num_parameters=params)
    path = Path(name).expanduser()
    if looks_like_path(name):
        if not path.exists():
            raise ModelNotFound(f"'{name}' does not exist (expected a config.json file or a directory "
                                f"holding one)")
        return parse_config(read_config_file(path), name=str(path))
    if catalog.find_model(name) is not None:
        return _catalog_arch(name)
    catalog.get_model(name)  # raises ModelNotFound with the closest ids
    raise AssertionError("unreachable")
