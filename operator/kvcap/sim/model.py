"""Plain data shared by the simulator's parts (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from kvcap.capacity.latency import StepModel
from kvcap.capacity.plan_types import PoolPlan
from kvcap.sim.engine import EngineConfig


@dataclass(frozen=True, slots=True)
class PoolSetup:
    """One pool as planned: which requests it takes and what one replica is."""

    name: str
    min_context: int  # requests longer than this (prompt + output) come here
    max_model_len: int
    gpu_product: str
    tensor_parallel_size: int
    gpus_per_replica: int
    planned_replicas: int
    kv_tokens_per_replica: int
    engine: EngineConfig
    model: StepModel
    startup_s: float  # pod creation -> Ready
    mean_prompt: float = 0.0  # of the trace's requests routed here
    mean_output: float = 0.0
    plan: PoolPlan | None = None  # the planner's pool (the operator's autoscaler reads it)


@dataclass(frozen=True, slots=True)
class PodView:
    """One pod as the last Prometheus scrape saw it (rates over `rate_window_s`)."""

    name: str
    ready: bool
    kv_usage: float
    kv_capacity_tokens: int
    running: float
    waiting: float
    waiting_capacity: float  # vllm:num_requests_waiting_by_reason{reason="capacity"}
    preemption_rate: float
    prefix_hit_rate: float
    request_rate: float
    sample_time: float
    # Highest per-scrape-interval rate over `peak_window_s`, as the operator queries it:
    # max_over_time(irate(vllm:prompt_tokens_total[2m])[10m:15s]) (kvcap/autoscale/promql.py)
    peak_prompt_token_rate: float = 0.0
    peak_generation_token_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class Slo:
    """A request meets its SLO when TTFT <= ttft_s + ttft_per_1k_prompt_s x prompt / 1000 and
    its mean TPOT <= tpot_s. Rejected and unfinished requests miss it."""

    ttft_s: float = 1.0
    ttft_per_1k_prompt_s: float = 0.05
    tpot_s: float = 0.1

    def ttft_limit(self, prompt: int) -> float:
        return self.ttft_s + self.ttft_per_1k_prompt_s * prompt / 1000.0

    def to_dict(self) -> dict[str, float | str]:
        return {"ttft_s": self.ttft_s, "ttft_per_1k_prompt_s": self.ttft_per_1k_prompt_s,
                "tpot_s": self.tpot_s,
                "rule": "TTFT <= ttft_s + ttft_per_1k_prompt_s x prompt/1000 and TPOT <= tpot_s"}


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    scrape_interval_s: float = 15.0  # Prometheus scrape interval (kube-prometheus default 30 s)
    min_replicas: int = 1
    max_replicas: int = 64
    target_kv_utilization_percent: int = 80
    scale_down_delay_s: float = 300.0
    gpu_budget: int | None = None
    drain_s: float = 900.0  # keep simulating this long after the last arrival
    # rate(...[2m]), as the operator queries (kvcap/autoscale/prometheus.py RATE_WINDOW)
    rate_window_s: float = 120.0
    # max_over_time(irate(...)[10m:15s]) of the token rates (kvcap/autoscale/promql.py PEAK_RANGE)
    peak_window_s: float = 600.0
