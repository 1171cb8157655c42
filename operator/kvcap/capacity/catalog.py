"""Built-in model and GPU catalogs (data files under `kvcap/capacity/data/`, each entry citing its source)."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from kvcap.api.errors import ModelNotFound, UnknownGpu

DATA = Path(__file__).parent / "data"
GIB = 1 << 30


@dataclass(frozen=True)
class CatalogModel:
    id: str
    aliases: tuple[str, ...]
    source: str
    num_parameters: int | None
    num_active_parameters: int | None
    config: dict[str, Any]


@dataclass(frozen=True)
class Gpu:
    """One GPU product. `memory_bytes` is what the CUDA runtime reports as total memory."""

    name: str
    aliases: tuple[str, ...]
    vendor: str
    memory_bytes: int
    bandwidth_gbps: float
    bf16_tflops: float
    fp8: bool
    compute_capability: str | None = None

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB

    @property
    def product_labels(self) -> tuple[str, ...]:
        """`nvidia.com/gpu.product` values GPU Feature Discovery puts on nodes with this GPU."""
        labels = [a for a in self.aliases
                  if " " not in a and a.startswith(("NVIDIA-", "Tesla-", "AMD-", "Quadro-"))]
        return tuple(labels) or (self.name,)


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


@cache
def _models() -> dict[str, CatalogModel]:
    by_key: dict[str, CatalogModel] = {}
    for path in sorted((DATA / "models").glob("*.json")):
        raw = json.loads(path.read_text())
        model = CatalogModel(
            id=raw["id"],
            aliases=tuple(raw.get("aliases") or ()),
            source=raw.get("source", ""),
            num_parameters=raw.get("num_parameters"),
            num_active_parameters=raw.get("num_active_parameters"),
            config=raw["config"],
        )
        for key in (model.id, *model.aliases):
            by_key.setdefault(_norm(key), model)
    for entry in yaml.safe_load((DATA / "derived.yaml").read_text()) or []:
        base = by_key[_norm(entry["base"])]
        # An entry whose overrides change the shapes says so with `num_parameters` (null = derive the
        # count from the resulting config); otherwise the base's count is the derivative's.
        derived = CatalogModel(
            id=entry["id"], aliases=tuple(entry.get("aliases") or ()),
            source=f"{entry['source']}; config of {base.id}: {base.source}",
            num_parameters=entry["num_parameters"] if "num_parameters" in entry
            else base.num_parameters,
            num_active_parameters=entry["num_active_parameters"] if "num_active_parameters" in entry
            else base.num_active_parameters,
            config={**base.config, **(entry.get("overrides") or {})},
        )
        for key in (derived.id, *derived.aliases):
            by_key.setdefault(_norm(key), derived)
    return by_key


def model_ids() -> list[str]:
    return sorted({m.id for m in _models().values()})


def find_model(name: str) -> CatalogModel | None:
    """Exact (case-insensitive) match on HF id or alias; also accepts the id without its org."""
    models = _models()
    key = _norm(name)
    if key in models:
        return models[key]
    bare = [m for m in models.values() if _norm(m.id.split("/", 1)[-1]) == key]
    return bare[0] if len(bare) == 1 else None


def closest_models(name: str, n: int = 3) -> list[str]:
    ids = model_ids()
    lowered = {i.lower(): i for i in ids}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.3)
    if len(hits) < n:
        tail = name.lower().split("/")[-1]
        short = {i.lower().split("/")[-1]: i.lower() for i in ids}
        for h in difflib.get_close_matches(tail, list(short), n=n, cutoff=0.3):
            if short[h] not in hits:
                hits.append(short[h])
    return [lowered[h] for h in hits[:n]]


def get_model(name: str) -> CatalogModel:
    model = find_model(name)
    if model is None:
        near = closest_models(name)
        hint = f"closest known ids: {', '.join(near)}; " if near else ""
        raise ModelNotFound(
            f"model '{name}' is not in the kvcap catalog ({hint}pass a path to its config.json or a "
            f"directory holding one, or let kvcap fetch it from the Hugging Face Hub with --hf-hub; "
            f"`kvcap models` lists the catalog)"
        )
    return model


@cache
def _gpus() -> tuple[dict[str, Gpu], tuple[Gpu, ...]]:
    raw = yaml.safe_load((DATA / "gpus.yaml").read_text())
    by_key: dict[str, Gpu] = {}
    ordered = []
    for entry in raw:
        gpu = Gpu(
            name=entry["name"],
            aliases=tuple(entry.get("aliases") or ()),
            vendor=entry.get("vendor", "nvidia"),
            memory_bytes=int(entry["memory_bytes"]),
            bandwidth_gbps=float(entry.get("bandwidth_gbps") or 0),
            bf16_tflops=float(entry.get("bf16_tflops") or 0),
            fp8=bool(entry.get("fp8", False)),
            compute_capability=str(entry["compute_capability"]) if entry.get("compute_capability")
            else None,
        )
        ordered.append(gpu)
        for key in (gpu.name, *gpu.aliases):
            by_key.setdefault(_norm(key), gpu)
    return by_key, tuple(ordered)


def all_gpus() -> tuple[Gpu, ...]:
    return _gpus()[1]


def find_gpu(name: str) -> Gpu | None:
    return _gpus()[0].get(_norm(name))


def get_gpu(name: str, memory_gib: float | None = None) -> Gpu:
    """A catalog GPU by name/alias/product label, or a custom one when `memory_gib` is given."""
    gpu = find_gpu(name) if name else None
    if gpu is not None:
        return gpu if memory_gib is None else replace(gpu, memory_bytes=int(memory_gib * GIB))
    if memory_gib is not None:
        return Gpu(name or "custom", (), "nvidia", int(memory_gib * GIB), 0.0, 0.0, True)
    names = [g.name for g in all_gpus()]
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.3)
    raise UnknownGpu(
        f"GPU '{name}' is not in the kvcap catalog"
        + (f" (closest: {', '.join(near)})" if near else "")
        + f"; known: {', '.join(names)}; or describe it with --gpu-memory-gib"
    )
