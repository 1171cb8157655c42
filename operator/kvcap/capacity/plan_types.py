"""Result types of the planner (pure data; shared by the CLI, the renderer and the operator)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PoolPlan:
    """One vLLM pool: identical replicas serving one range of request lengths."""

    name: str  # "default" | "long"
    gpu_product: str  # catalog name, e.g. "H100-80GB"
    gpu_labels: tuple[str, ...]  # `nvidia.com/gpu.product` values that select this product
    tensor_parallel_size: int
    pipeline_parallel_size: int
    replicas: int
    gpus_per_replica: int
    max_model_len: int
    min_context_tokens: int  # shortest request routed here (0 for the default pool)
    max_num_seqs: int
    kv_tokens_per_replica: int
    kv_bytes_per_gpu: int  # KV cache budget per GPU (what --kv-cache-memory-bytes would be)
    gpu_memory_utilization: float
    concurrency_per_replica: float  # requests of the sizing length one replica holds
    target_concurrency: int  # requests this pool must hold at once
    headroom_percent: float  # KV left free at target concurrency
    vllm_args: tuple[str, ...]
    notes: tuple[str, ...] = ()
    # Only with `workload.latencyObjectives`: what limits requests per replica ("kv",
    # "max_num_seqs", "ttft", "tpot") and the latency predicted at the planned concurrency.
    binding_constraint: str | None = None
    predicted_ttft_ms: float | None = None
    predicted_tpot_ms: float | None = None
    # Seconds of one replica's step time per prompt and per generated token (`latency.token_costs`
    # at the autoscaling target), priced when the plan is made and pinned with it, so the
    # autoscaler's compute floor has them for every model the planner could read (Hub and
    # ConfigMap models too, whose config.json the operator does not keep). None: not priced.
    prefill_seconds_per_token: float | None = None
    decode_seconds_per_token: float | None = None

    @property
    def total_gpus(self) -> int:
        return self.replicas * self.gpus_per_replica

    def to_dict(self) -> dict[str, Any]:
        out = self._base_dict()
        if self.binding_constraint is not None:
            out["binding_constraint"] = self.binding_constraint
            out["predicted_ttft_ms"] = round(self.predicted_ttft_ms or 0.0, 1)
            out["predicted_tpot_ms"] = round(self.predicted_tpot_ms or 0.0, 2)
        if self.prefill_seconds_per_token is not None:
            out["prefill_seconds_per_token"] = self.prefill_seconds_per_token
            out["decode_seconds_per_token"] = self.decode_seconds_per_token
        return out

    def _base_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "gpu_product": self.gpu_product,
            "gpu_labels": list(self.gpu_labels),
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "replicas": self.replicas,
            "gpus_per_replica": self.gpus_per_replica,
            "total_gpus": self.total_gpus,
            "max_model_len": self.max_model_len,
            "min_context_tokens": self.min_context_tokens,
            "max_num_seqs": self.max_num_seqs,
            "kv_tokens_per_replica": self.kv_tokens_per_replica,
            "kv_bytes_per_gpu": self.kv_bytes_per_gpu,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "concurrency_per_replica": round(self.concurrency_per_replica, 2),
            "target_concurrency": self.target_concurrency,
            "headroom_percent": round(self.headroom_percent, 1),
            "vllm_args": list(self.vllm_args),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Alternative:
    """A runner-up plan and why it lost."""

    summary: str
    total_gpus: int
    why_not: str

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "total_gpus": self.total_gpus, "why_not": self.why_not}


@dataclass(frozen=True)
class CapacityPlan:
    """What the planner decided. `feasible` False carries `reason`/`message` and the nearest fix."""

    feasible: bool
    reason: str  # CamelCase machine reason ("PlanFits", "InsufficientGpuMemory", ...)
    message: str  # one human sentence
    model: str
    total_gpus: int = 0
    lower_bound_gpus: int = 0
    pools: tuple[PoolPlan, ...] = ()
    split_decision: str = ""  # why the plan has one or two pools
    alternatives: tuple[Alternative, ...] = ()
    warnings: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feasible": self.feasible,
            "reason": self.message if not self.feasible else self.reason,
            "reason_code": self.reason,
            "message": self.message,
            "model": self.model,
            "total_gpus": self.total_gpus,
            "lower_bound_gpus": self.lower_bound_gpus,
            "split_decision": self.split_decision,
            "pools": [p.to_dict() for p in self.pools],
            "alternatives": [a.to_dict() for a in self.alternatives],
            "warnings": list(self.warnings),
            **self.extra,
        }
