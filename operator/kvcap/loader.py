"""Resolve MODEL (a catalog id, a config.json path, a directory, or a Hub id) into a ModelArch."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from kvcap import catalog
from kvcap.arch import ModelArch, parse_config
from kvcap.errors import InvalidModelConfig, ModelNotFound
from kvcap.hfhub import fetch_config


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


def load_model(name: str, *, config: dict[str, Any] | None = None, hub: bool = False,
               token: str | None = None, revision: str | None = None,
               endpoint: str | None = None) -> ModelArch:
    """Resolution order: an explicit `config` dict, a local path, the catalog, then (if `hub`) the Hub."""
    if config is not None:
        entry = catalog.find_model(name)
        params = entry.num_parameters if entry else None
        return parse_config(config, name=name, num_parameters=params)
    path = Path(name).expanduser()
    looks_like_path = name.endswith(".json") or name.startswith((".", "/", "~")) or path.is_dir()
    if looks_like_path:
        if not path.exists():
            raise ModelNotFound(f"'{name}' does not exist (expected a config.json file or a directory "
                                f"holding one)")
        return parse_config(read_config_file(path), name=str(path))
    if catalog.find_model(name) is not None:
        return _catalog_arch(name)
    if hub:
        return parse_config(fetch_config(name, token=token, revision=revision, endpoint=endpoint),
                            name=name)
    catalog.get_model(name)  # raises ModelNotFound with the closest ids
    raise AssertionError("unreachable")
