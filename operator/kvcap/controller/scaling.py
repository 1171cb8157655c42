"""Per-pool replicas of a ModelDeployment from `spec.autoscaling` (pure; decide's `Policy.scale`).

`scale_pools(spec, plan, metrics, stored_status)` is the `ScaleFn` of `kvcap.controller.decide`:

* policy 'Disabled'   -> {} (the planned replicas stand, as before autoscaling existed);
* policy 'KVHeadroom' -> per pool, `kvcap.autoscale.policy.decide` on the pool's live metrics
  (`ObjectMetrics`, built by the shell in `kvcap.controller.autoscaler`) and the state it kept
  in `status.plan.pools[].autoscaler`, giving the pool's replicas;
* policy 'External'   -> replicas None: left out of the server-side apply, so an HPA, KEDA or
  `kubectl scale` owns them. kvcap still reads the metrics and reports what it would do.

Each pool's `PoolScale.status` is merged into its `status.plan.pools[]` entry (figures, the
one-line decision, the policy state) and `PoolScale.checks` carries the pool's
MetricsAvailable and CapacityVerified checks; `conditions.autoscaling_checks` folds them into
one condition each.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kvcap.api import constants as kc
from kvcap.api.models import ModelDeploymentSpec
from kvcap.autoscale import policy as ap
from kvcap.capacity.plan_types import CapacityPlan, PoolPlan
from kvcap.controller.conditions import Check
from kvcap.controller.decide import PoolScale

OUTPUT_SHARE = ap.OUTPUT_SHARE
STARTUP_SECONDS = 300.0  # look-ahead horizon: time from a new pod to Ready (a 10 min load: 600)


@dataclass(frozen=True)
class PoolLive:
    """What the shell observed of one pool: its workload's replicas and its serving pods."""

    replicas: int | None  # the workload's spec.replicas; None: no workload yet
    pods: tuple[ap.PodSample, ...] = ()


@dataclass(frozen=True)
class ObjectMetrics:
    """One ModelDeployment's slice of a metrics tick (decide's `Observation.metrics`)."""

    now: float  # Unix seconds: the clock of the Prometheus sample timestamps
    error: str | None  # Prometheus could not be queried (or its URL is not allowed)
    pools: Mapping[str, PoolLive] = field(default_factory=dict)
    namespace: str = ""  # the object, for the operator's own metrics (not used by the policy)
    name: str = ""


length_model = ap.length_model_for


def scaling_spec(
    spec: ModelDeploymentSpec,
    pool: PoolPlan,
    gpu_budget: int | None,
    startup_seconds: float = STARTUP_SECONDS,
) -> ap.ScalingSpec:
    auto = spec.autoscaling
    return ap.ScalingSpec(
        pool=pool.name,
        min_replicas=auto.min_replicas,
        max_replicas=auto.max_replicas,
        target_kv_utilization_percent=auto.target_kv_utilization_percent,
        scale_down_delay_seconds=float(auto.scale_down_delay_seconds),
        kv_tokens_per_replica=max(1, int(pool.kv_tokens_per_replica)),
        gpus_per_replica=pool.gpus_per_replica,
        gpu_budget=gpu_budget,
        startup_seconds=startup_seconds,
        length=length_model(pool),
        max_num_seqs=pool.max_num_seqs or None,
    )


def _stored_pool(stored_status: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    for entry in (stored_status.get("plan") or {}).get("pools") or ():
        if entry.get("name") == name:
            return entry  # type: ignore[no-any-return]
    return {}


def _int(value: float) -> int | None:
    return round(value) if math.isfinite(value) else None


def _time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pool_status(decision: ap.Decision, current: int) -> dict[str, Any]:
    """The `status.plan.pools[]` fields the autoscaler owns (absent values are left out)."""
    f = decision.figures
    out: dict[str, Any] = {
        "currentReplicas": current,
        "desiredReplicas": decision.desired_replicas,
        "kvTokensInUse": _int(f.kv_tokens_in_use),
        "kvTokensCapacity": _int(f.capacity_tokens_per_replica * current),
        "observedKvTokensPerReplica": decision.capacity.observed_tokens,
        "capacityWaitingRequests": _int(f.capacity_waiting),
        "preemptionsPerSecond": (
            round(f.preemption_rate, 4) if math.isfinite(f.preemption_rate) else None
        ),
        "lastScaleTime": _time(decision.state.last_scale_time),
        "decision": decision.message[:1024],
        "autoscaler": decision.state.to_dict(),
    }
    state = out["autoscaler"]
    state["trend"] = [[round(t, 3), round(d)] for t, d in state["trend"]]
    return {k: v for k, v in out.items() if v is not None}


def _checks(decision: ap.Decision) -> dict[str, Check]:
    m, c = decision.metrics, decision.capacity
    return {
        kc.METRICS_AVAILABLE: Check(m.status, m.reason, m.message),
        kc.CAPACITY_VERIFIED: Check(c.status, c.reason, c.message),
    }


def scale_pools(
    spec: ModelDeploymentSpec,
    plan: CapacityPlan,
    metrics: object | None,
    stored_status: Mapping[str, Any],
    *,
    startup_seconds: float = STARTUP_SECONDS,
) -> dict[str, PoolScale]:
    """decide's ScaleFn. Pure: the same inputs give the same replicas and status."""
    policy = spec.autoscaling.policy
    if policy == "Disabled":
        return {}
    live = metrics if isinstance(metrics, ObjectMetrics) else None
    if live is None:  # the shell did not collect: hold every pool where it is
        live = ObjectMetrics(now=0.0, error="metrics were not collected for this object")
    current: dict[str, int] = {}
    for pool in plan.pools:
        seen = live.pools.get(pool.name)
        if seen is not None and seen.replicas is not None:
            current[pool.name] = seen.replicas
        else:  # no workload yet: start from the plan, within the bounds
            auto = spec.autoscaling
            current[pool.name] = max(auto.min_replicas, min(pool.replicas, auto.max_replicas))
    out: dict[str, PoolScale] = {}
    for pool in plan.pools:
        budget = None
        if spec.gpu.max_total is not None:
            others = sum(
                current[p.name] * p.gpus_per_replica for p in plan.pools if p.name != pool.name
            )
            budget = max(0, spec.gpu.max_total - others)
        sspec = scaling_spec(spec, pool, budget, startup_seconds)
        seen = live.pools.get(pool.name, PoolLive(None))
        obs = ap.PoolObservation(
            now=live.now,
            replicas=current[pool.name],
            pods=seen.pods,
            prometheus_error=live.error,
        )
        state = ap.PoolState.from_dict(_stored_pool(stored_status, pool.name).get("autoscaler"))
        decision = ap.decide(sspec, obs, state)
        status = pool_status(decision, current[pool.name])
        if policy == "External":
            status["replicas"] = current[pool.name]
            out[pool.name] = PoolScale(None, status, _checks(decision))
        else:
            out[pool.name] = PoolScale(decision.desired_replicas, status, _checks(decision))
    return out


__all__ = [
    "OUTPUT_SHARE",
    "STARTUP_SECONDS",
    "ObjectMetrics",
    "PoolLive",
    "length_model",
    "pool_status",
    "scale_pools",
    "scaling_spec",
]
