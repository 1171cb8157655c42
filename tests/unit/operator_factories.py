"""Hand-made planner results and specs for the operator's unit tests (the planner is not needed)."""

from __future__ import annotations

import dataclasses
from typing import Any

from kvcap.api.models import ModelDeploymentSpec
from kvcap.capacity.plan_types import CapacityPlan, PoolPlan
from kvcap.controller.render import Owner

OWNER = Owner(name="llama", namespace="team-a", uid="uid-1")
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ARGS = (MODEL, "--tensor-parallel-size", "1", "--max-model-len", "8192", "--port", "8000")


def make_spec(**overrides: Any) -> ModelDeploymentSpec:
    doc: dict[str, Any] = {
        "model": {"name": MODEL},
        "workload": {"maxContextTokens": 32768, "targetConcurrency": 64},
    }
    for key, value in overrides.items():
        doc[key] = value
    return ModelDeploymentSpec.model_validate(doc)


def make_pool(**overrides: Any) -> PoolPlan:
    pool = PoolPlan(
        name="default", gpu_product="H100-80GB", gpu_labels=("NVIDIA-H100-80GB-HBM3",),
        tensor_parallel_size=1, pipeline_parallel_size=1, replicas=2, gpus_per_replica=1,
        max_model_len=8192, min_context_tokens=0, max_num_seqs=128, kv_tokens_per_replica=400_000,
        kv_bytes_per_gpu=53_000_000_000, gpu_memory_utilization=0.9, concurrency_per_replica=48.8,
        target_concurrency=64, headroom_percent=10.0, vllm_args=ARGS,
    )
    return dataclasses.replace(pool, **overrides)


def make_plan(*pools: PoolPlan) -> CapacityPlan:
    pools = pools or (make_pool(),)
    return CapacityPlan(
        feasible=True, reason="PlanFits", message="2 x 1 H100-80GB", model=MODEL,
        total_gpus=sum(p.total_gpus for p in pools), lower_bound_gpus=1, pools=tuple(pools),
        split_decision="one pool",
    )


