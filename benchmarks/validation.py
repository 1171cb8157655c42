"""Load benchmarks/data/vllm_launches.yaml into (model, GPU, flags, observed) cases.

Shared by benchmarks/estimator_accuracy.py, benchmarks/calibrate_overheads.py and the unit tests that
check kvcap against real vLLM startup logs.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from kvcap.api.errors import KvcapError  # noqa: E402
from kvcap.capacity import catalog  # noqa: E402
from kvcap.capacity.arch import ModelArch  # noqa: E402
from kvcap.capacity.catalog import GIB, Gpu  # noqa: E402
from kvcap.capacity.configs import load_model  # noqa: E402
from kvcap.capacity.memory import ServeArgs  # noqa: E402

LAUNCHES = ROOT / "benchmarks" / "data" / "vllm_launches.yaml"


@dataclass(frozen=True)
class Case:
    id: str
    source: str
    arch: ModelArch
    gpu: Gpu | None  # None: the log does not say which GPU / how much memory
    args: ServeArgs
    observed: dict[str, Any]
    version_known: bool  # a version is recorded (read from the log, or inferred: see version_inferred)
    raw: dict[str, Any]
    version_inferred: bool = False
    source_id: str = ""  # one id per independent source (a thread, a campaign): leave-one-source-out

    @property
    def refused(self) -> bool:
        return bool(self.observed.get("refused")) and "OutOfMemory" not in str(
            self.observed.get("error") or "")


def _gpu(entry: dict[str, Any]) -> Gpu | None:
    total = entry.get("gpu_total_gib")
    name = str(entry.get("gpu") or "")
    found = None
    for key in (name, name.replace("NVIDIA ", ""), name.replace(" ", "-")):
        if key:
            found = catalog.find_gpu(key)
            if found:
                break
    if total:
        base = found or Gpu(name or "custom", (), "nvidia", 0, 0.0, 0.0, True)
        return Gpu(base.name, base.aliases, base.vendor, int(float(total) * GIB), base.bandwidth_gbps,
                   base.bf16_tflops, base.fp8, base.compute_capability)
    return found


def source_key(entry: dict[str, Any]) -> str:
    """The independent source a launch comes from, when the entry has no `source_id`: the issue or
    pull-request thread, or the repository for files in a repository."""
    url = str(entry.get("source") or "")
    m = re.match(r"https?://github\.com/([^/]+/[^/]+)/(issues|pull|discussions)/(\d+)", url)
    if m:
        return f"{m.group(1)}#{m.group(3)}"
    m = re.match(r"https?://(?:github\.com|raw\.githubusercontent\.com)/([^/]+/[^/]+)", url)
    if m:
        return m.group(1)
    return url.split("?")[0] or str(entry.get("id"))


def load_cases() -> tuple[list[Case], list[tuple[str, str]]]:
    """(usable cases, [(id, why skipped)])."""
    entries = yaml.safe_load(LAUNCHES.read_text())
    cases, skipped = [], []
    for e in entries:
        try:
            arch = load_model(e["model"])
        except KvcapError as err:
            skipped.append((e["id"], f"model not in catalog: {err.message[:80]}"))
            continue
        a = e.get("args") or {}
        version = e.get("vllm_version")
        kv_dtype = a.get("kv_cache_dtype") or "auto"
        args = ServeArgs(
            tensor_parallel_size=int(a.get("tensor_parallel_size") or 1),
            pipeline_parallel_size=int(a.get("pipeline_parallel_size") or 1),
            gpu_memory_utilization=a.get("gpu_memory_utilization"),
            max_model_len=a.get("max_model_len") or (e["observed"] or {}).get(
                "max_concurrency_tokens_per_request"),
            max_num_seqs=a.get("max_num_seqs"),
            max_num_batched_tokens=a.get("max_num_batched_tokens"),
            kv_cache_dtype=str(kv_dtype),
            block_size=a.get("block_size"),
            quantization=a.get("quantization"),
            kv_cache_memory_bytes=a.get("kv_cache_memory_bytes"),
            vllm_version=str(version) if version else None,
            enforce_eager=bool(a.get("enforce_eager")),
            disable_hybrid_kv_cache_manager="--disable-hybrid-kv-cache-manager" in (a.get("other") or []),
            dtype=str(a.get("dtype") or "auto"),
        )
        inferred = bool(e.get("vllm_version_inferred")) or "vllm_version" in (e.get("inferred") or [])
        cases.append(Case(e["id"], e.get("source", ""), arch, _gpu(e), args, e.get("observed") or {},
                          bool(version), e, inferred, str(e.get("source_id") or source_key(e))))
    return cases, skipped
