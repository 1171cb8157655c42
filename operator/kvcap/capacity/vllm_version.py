"""What changes in vLLM's memory accounting from version to version.

Every switch cites where the behaviour changed; `../shared/notes/vllm-facts.md` has the long form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from kvcap.api.errors import InvalidArgument

DEFAULT_VERSION = "0.11.0"


@dataclass(frozen=True, slots=True)
class VllmProfile:
    version: tuple[int, int, int]
    engine: str  # "V0" | "V1"
    default_gpu_memory_utilization: float
    hybrid_allocator: bool  # sliding-window / Mamba layers get their own KV groups
    subtracts_cudagraph_memory: bool
    device_batch_defaults: bool  # max_num_seqs / max_num_batched_tokens depend on the GPU
    profiler_era: str  # "v0" | "v1-early" | "v1" — which memory-profiling formula applies

    @property
    def label(self) -> str:
        return ".".join(str(p) for p in self.version)


def parse_version(text: str | None) -> tuple[int, int, int]:
    raw = (text or DEFAULT_VERSION).strip().lstrip("v")
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", raw)
    if not match:
        raise InvalidArgument(f"--vllm-version '{text}' must look like '0.11.0'")
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


@cache
def profile(text: str | None = None) -> VllmProfile:
    v = parse_version(text)
    return VllmProfile(
        version=v,
        # V1 became the default engine in v0.8.0 (VLLM_USE_V1=1 default); V0 was removed in v0.11.
        engine="V1" if v >= (0, 8, 0) else "V0",
        # PR #38284 (v0.21.0) enabled CUDA-graph memory profiling by default and raised 0.9 -> 0.92.
        default_gpu_memory_utilization=0.92 if v >= (0, 21, 0) else 0.9,
        # Hybrid KV cache manager (PR #17996 "Hybrid allocator") shipped in v0.9.2 / v0.10.0.
        hybrid_allocator=v >= (0, 10, 0),
        subtracts_cudagraph_memory=v >= (0, 21, 0),
        # arg_utils.py `get_batch_defaults`: device-dependent defaults since v0.10.
        device_batch_defaults=v >= (0, 10, 0),
        profiler_era="v0" if v < (0, 8, 0) else ("v1-early" if v < (0, 11, 0) else "v1"),
    )
