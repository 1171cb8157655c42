"""Scaling policies the simulator compares (pure).

* `kvcap`       the operator's KV-headroom policy: `kvcap.autoscale.policy.decide`, imported and
                called as the operator calls it (not a copy), state round-tripped through
                `PoolState.to_dict()/from_dict()` as the operator keeps it in status.
* `hpa-rps`     a HorizontalPodAutoscaler on requests per second per pod (a Pods metric with an
                AverageValue target), the common first attempt.
* `keda-queue`  KEDA's Prometheus scaler on `vllm:num_requests_waiting` (AverageValue, threshold per
                replica; KEDA polls every 30 s by default and hands the metric to an HPA).
* `kv-percent`  an HPA on the mean `vllm:kv_cache_usage_perc` with target 0.8, as llm-d's and
                AIBrix's samples configure it.
* `static`      fixed replicas sized for the peak of the trace (the clairvoyant's largest need).
* `clairvoyant` knows the future demand: it asks for exactly what the next start-up time will need
                (a lower bound on GPU-hours for a policy that must meet the same demand).

The HPA-based ones follow the Kubernetes HPA algorithm (pkg/controller/podautoscaler): desired =
ceil(current x metric / target), skipped within a 10 % tolerance, scale-down stabilized over the
largest recommendation of the last 300 s, scale-up limited to max(4 pods, 100 %) per 15 s period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from kvcap.autoscale import policy as kv
from kvcap.sim.model import PodView, PoolSetup

HPA_TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance default
HPA_DOWN_WINDOW_S = 300.0  # behavior.scaleDown.stabilizationWindowSeconds default
HPA_SYNC_S = 15.0  # --horizontal-pod-autoscaler-sync-period default
KEDA_POLL_S = 30.0  # ScaledObject pollingInterval default


class Policy(Protocol):
    name: str
    interval_s: float

    def initial(self, pool: int, setup: PoolSetup) -> int: ...

    def desired(self, pool: int, setup: PoolSetup, now: float, replicas: int,
                pods: list[PodView]) -> int: ...


@dataclass
class Bounds:
    min_replicas: int
    max_replicas: int

    def clamp(self, n: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, n))


@dataclass
class _Hpa:
    """The Kubernetes HPA algorithm around one metric (subclasses give the metric)."""

    bounds: Bounds
    target: float
    name: str = "hpa"
    interval_s: float = HPA_SYNC_S
    history: dict[int, list[tuple[float, int]]] = field(default_factory=dict)

    def initial(self, pool: int, setup: PoolSetup) -> int:
        return self.bounds.clamp(setup.planned_replicas)

    def ratio(self, pods: list[PodView], replicas: int) -> float | None:
        raise NotImplementedError

    def desired(self, pool: int, setup: PoolSetup, now: float, replicas: int,
                pods: list[PodView]) -> int:
        ready = [p for p in pods if p.ready]
        if not ready:
            return replicas
        r = self.ratio(ready, replicas)
        if r is None:
            return replicas
        if abs(r - 1.0) <= HPA_TOLERANCE:
            want = replicas
        else:
            want = math.ceil(len(ready) * r - 1e-9)
            if r > 1.0:
                want = max(want, replicas)  # not-ready pods never lower a scale-up
        want = self.bounds.clamp(want)
        hist = [(t, n) for t, n in self.history.get(pool, []) if now - t < HPA_DOWN_WINDOW_S]
        hist.append((now, want))
        self.history[pool] = hist
        if want < replicas:
            want = min(replicas, max(n for _, n in hist))  # scale-down stabilization
        if want > replicas:
            want = min(want, max(replicas + 4, 2 * replicas))
        return self.bounds.clamp(want)


@dataclass
class HpaRps(_Hpa):
    name: str = "hpa-rps"

    def ratio(self, pods: list[PodView], replicas: int) -> float | None:
        rates = [p.request_rate for p in pods if math.isfinite(p.request_rate)]
        if not rates:
            return None
        return (sum(rates) / len(rates)) / self.target


@dataclass
class KedaQueue(_Hpa):
    name: str = "keda-queue"
    interval_s: float = KEDA_POLL_S

    def ratio(self, pods: list[PodView], replicas: int) -> float | None:
        return (sum(p.waiting for p in pods) / len(pods)) / self.target


@dataclass
class KvPercent(_Hpa):
    name: str = "kv-percent"

    def ratio(self, pods: list[PodView], replicas: int) -> float | None:
        return (sum(p.kv_usage for p in pods) / len(pods)) / self.target


@dataclass
class Static:
    peak: dict[int, int]
    name: str = "static"
    interval_s: float = 3600.0

    def initial(self, pool: int, setup: PoolSetup) -> int:
        return self.peak[pool]

    def desired(self, pool: int, setup: PoolSetup, now: float, replicas: int,
                pods: list[PodView]) -> int:
        return self.peak[pool]


@dataclass
class Clairvoyant:
    """`need[pool]` holds the replicas needed per `bin_s` bin of the trace (from the future)."""

    need: dict[int, list[int]]
    bin_s: float
    bounds: Bounds
    name: str = "clairvoyant"
    interval_s: float = HPA_SYNC_S

    def _need_over(self, pool: int, t0: float, t1: float) -> int:
        bins = self.need[pool]
        a, b = int(t0 // self.bin_s), int(t1 // self.bin_s)
        window = bins[max(0, a):max(a + 1, b + 1)]
        return max(window) if window else (bins[-1] if bins else 1)

    def initial(self, pool: int, setup: PoolSetup) -> int:
        return self.bounds.clamp(self._need_over(pool, 0.0, setup.startup_s + self.interval_s))

    def desired(self, pool: int, setup: PoolSetup, now: float, replicas: int,
                pods: list[PodView]) -> int:
        # Pods asked for now are Ready after the start-up time: cover everything until the next
        # decision can take effect.
        return self.bounds.clamp(self._need_over(pool, now, now + setup.startup_s
                                                 + 2 * self.interval_s))


@dataclass
class Kvcap:
    """Adapter: simulator observations -> `kvcap.autoscale.policy.decide` -> replicas."""

    bounds: Bounds
    target_kv_utilization_percent: int
    scale_down_delay_s: float
    gpu_budget: int | None = None
    name: str = "kvcap"
    # False: no token prices in the spec (no compute floor; any capacity-waiting request is
    # pressure), as the operator runs the policy for a model outside the built-in catalog.
    price_tokens: bool = True
    interval_s: float = 15.0
    state: dict[int, dict[str, object]] = field(default_factory=dict)
    messages: list[tuple[float, int, str]] = field(default_factory=list)

    def initial(self, pool: int, setup: PoolSetup) -> int:
        return self.bounds.clamp(setup.planned_replicas)

    def spec(self, setup: PoolSetup) -> kv.ScalingSpec:
        length = (kv.length_model_for(setup.plan) if setup.plan is not None else
                  kv.LengthModel(mean_prompt_tokens=setup.mean_prompt,
                                 mean_output_tokens=setup.mean_output))
        # The same step-time model the replicas run on prices a token (rule 4's compute floor).
        prefill, decode = kv.token_costs(
            setup.model, chunk_tokens=setup.engine.max_num_batched_tokens,
            max_num_seqs=setup.engine.max_num_seqs,
            kv_tokens_per_replica=setup.kv_tokens_per_replica, length=length,
            target_kv_utilization_percent=self.target_kv_utilization_percent)
        if not self.price_tokens:
            prefill = decode = None  # type: ignore[assignment]
        return kv.ScalingSpec(
            pool=setup.name,
            min_replicas=self.bounds.min_replicas,
            max_replicas=self.bounds.max_replicas,
            target_kv_utilization_percent=self.target_kv_utilization_percent,
            scale_down_delay_seconds=self.scale_down_delay_s,
            kv_tokens_per_replica=setup.kv_tokens_per_replica,
            gpus_per_replica=setup.gpus_per_replica,
            gpu_budget=self.gpu_budget,
            startup_seconds=setup.startup_s,
            # The operator's length model (controller/scaling.py uses the same function); without
            # a plan, the trace's own means.
            length=length,
            max_num_seqs=setup.engine.max_num_seqs,
            prefill_seconds_per_token=prefill,
            decode_seconds_per_token=decode,
        )

    def desired(self, pool: int, setup: PoolSetup, now: float, replicas: int,
                pods: list[PodView]) -> int:
        return self.decision(pool, setup, now, replicas, pods).desired_replicas

    def decision(self, pool: int, setup: PoolSetup, now: float, replicas: int,
                 pods: list[PodView]) -> kv.Decision:
        obs = kv.PoolObservation(now=now, replicas=replicas, pods=tuple(
            kv.PodSample(name=p.name, ready=p.ready, kv_usage=p.kv_usage,
                         kv_capacity_tokens=float(p.kv_capacity_tokens), running=p.running,
                         waiting=p.waiting, waiting_capacity=p.waiting_capacity,
                         preemption_rate=p.preemption_rate,
                         prefix_cache_hit_rate=p.prefix_hit_rate,
                         peak_prompt_token_rate=p.peak_prompt_token_rate,
                         peak_generation_token_rate=p.peak_generation_token_rate,
                         sample_time=p.sample_time)
            if p.ready else kv.PodSample(name=p.name, ready=False)
            for p in pods))
        state = kv.PoolState.from_dict(self.state.get(pool))
        decision = kv.decide(self.spec(setup), obs, state)
        self.state[pool] = decision.state.to_dict()
        if decision.action != "hold":
            self.messages.append((now, pool, decision.message))
        return decision
