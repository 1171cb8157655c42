"""Per-pool replicas of a ModelDeployment from `spec.autoscaling` (pure; decide's `Policy.scale`).

`scale_pools(spec, plan, metrics, stored_status, inventory)` is the `ScaleFn` of
`kvcap.controller.decide`:

* policy 'Disabled'   -> {} (the planned replicas stand, as before autoscaling existed);
* policy 'KVHeadroom' -> per pool, `kvcap.autoscale.policy.decide` on the pool's live metrics
  (`ObjectMetrics`, built by the shell in `kvcap.controller.autoscaler`) and the state it kept
  in `status.pools[].autoscaler`, giving the pool's replicas;
* policy 'External'   -> replicas None: left out of the server-side apply, so an HPA, KEDA or
  `kubectl scale` owns them. kvcap still reads the metrics and reports what it would do.

Each pool's `PoolScale.status` becomes its `status.pools[]` entry (replicas current and desired,
the figures, the one-line decision, the policy state) and `PoolScale.checks` carries the pool's
MetricsAvailable and CapacityVerified checks; `conditions.autoscaling_conditions` folds them into
one condition each.

Status writes. The figures (KV tokens in use, the queue, preemptions, the hold sentence with its
numbers) move every tick; rewriting the status for them would cost one apiserver write per object
per tick. So an entry keeps the stored figures (and `metricsTime`, when they were taken) while
everything a user or the policy acts on is unchanged (replicas, the policy state, the planned and
observed capacity, the shape of the decision sentence) and the stored figures are younger than
`refresh_seconds`. The policy's demand trend lives in the operator's memory
(`ObjectMetrics.memory`); after a restart it is rebuilt within `policy.MIN_TREND_SPAN_SECONDS`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from kvcap.api import constants as kc
from kvcap.api.errors import KvcapError
from kvcap.api.models import ModelDeploymentSpec
from kvcap.autoscale import policy as ap
from kvcap.capacity import catalog
from kvcap.capacity.configs import load_model
from kvcap.capacity.plan_types import CapacityPlan, PoolPlan
from kvcap.capacity.planner import price_pool
from kvcap.controller.conditions import Check
from kvcap.controller.decide import PoolScale
from kvcap.controller.render import nodes_per_replica

OUTPUT_SHARE = ap.OUTPUT_SHARE
STARTUP_SECONDS = 300.0  # look-ahead horizon: time from a new pod to Ready (a 10 min load: 600)
REFRESH_SECONDS = 60.0  # figures in status.pools[] are rewritten at most this often when nothing
# else changed (KVCAP_AUTOSCALE_STATUS_REFRESH_SECONDS)

#: status.pools[] keys that move with every sample; the rest are written whenever they change.
VOLATILE_KEYS = (
    "kvTokensInUse",
    "kvTokensCapacity",
    "capacityWaiting",
    "preemptionRate",
    "decision",
    "metricsTime",
)
Inventory = Mapping[str, Sequence[int]]  # gpu.product label -> allocatable GPUs of each node


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
    memory: Mapping[str, ap.PoolState] = field(default_factory=dict)  # pool -> last state (trend)


@dataclass(frozen=True)
class ScaleOutcome:
    """What `scale_pools_with_state` returns."""

    scales: dict[str, PoolScale]  # decide's answer (figures settled: see the module docstring)
    states: dict[str, ap.PoolState]  # each pool's new policy state, for the operator's memory
    fresh: dict[str, PoolScale]  # the same with this tick's figures (the operator's own metrics)


length_model = ap.length_model_for


def inventory_replicas(
    spec: ModelDeploymentSpec,
    plan: CapacityPlan,
    pool: PoolPlan,
    current: Mapping[str, int],
    inventory: Inventory | None,
) -> tuple[int | None, str]:
    """Replicas of `pool` the Ready nodes of its allowed GPU products can hold (each node fits
    floor(allocatable / GPUs per pod) pods), less the GPUs the object's other pools on the same
    products take now; and the words for it. (None, "") without an inventory or a node of the
    pool's products."""
    labels = tuple(pool.gpu_labels)
    if inventory is None or not any(label in inventory for label in labels):
        # Nothing to count: no inventory, or no Ready node carries the pool's product labels (then
        # new pods would stay Unschedulable, and that stops growth on its own).
        return None, ""
    nodes = nodes_per_replica(pool.gpus_per_replica, spec.gpu.per_node) or 1
    per_pod = max(1, pool.gpus_per_replica // nodes)
    placeable = sum(n // per_pod * per_pod for label in labels for n in inventory.get(label, ()))
    allocatable = sum(n for label in labels for n in inventory.get(label, ()))
    others = sum(
        current.get(p.name, 0) * p.gpus_per_replica
        for p in plan.pools
        if p.name != pool.name and set(p.gpu_labels) & set(labels)
    )
    fits = max(0, placeable - others) // pool.gpus_per_replica
    shown = "/".join(label for label in labels if label in inventory)
    text = f"the node inventory ({allocatable} x {shown} allocatable on Ready nodes"
    text += f", {others} taken by the other pools)" if others else ")"
    return fits, text


@functools.lru_cache(maxsize=256)
def _costs(
    spec_json: str, pool: PoolPlan, target_kv_utilization_percent: int
) -> tuple[float, float] | None:
    """Cached by the spec's JSON and the (frozen) pool, so a tick does not rebuild the model."""
    if pool.prefill_seconds_per_token is not None and pool.decode_seconds_per_token is not None:
        return pool.prefill_seconds_per_token, pool.decode_seconds_per_token  # priced by the plan
    spec = ModelDeploymentSpec.model_validate_json(spec_json)
    gpu = catalog.find_gpu(pool.gpu_product)
    if gpu is None or catalog.find_model(spec.model.name) is None:
        return None
    try:  # a plan pinned by an older kvcap: price it as the planner now does
        priced = price_pool(load_model(spec.model.name), spec, pool, gpu)
    except KvcapError:
        return None
    if priced.prefill_seconds_per_token is None or priced.decode_seconds_per_token is None:
        return None
    return priced.prefill_seconds_per_token, priced.decode_seconds_per_token


def token_costs_for(spec: ModelDeploymentSpec, pool: PoolPlan) -> tuple[float, float] | None:
    """(prefill, decode) seconds per token of one replica of `pool` (`policy.token_costs`, from
    the same step-time model `kvcap plan` and the simulator use): the prices the planner pinned in
    the pool, for any model it could read (catalog, Hub or ConfigMap). A plan pinned by an older
    kvcap has none: then priced from the catalog, or None when the model is not in it or the GPU
    product is not a catalog one. None leaves the spec unpriced: no compute floor, and any
    capacity-waiting request is pressure."""
    return _costs(
        spec.model_dump_json(), pool, spec.autoscaling.target_kv_utilization_percent
    )


def scaling_spec(
    spec: ModelDeploymentSpec,
    pool: PoolPlan,
    gpu_budget: int | None,
    startup_seconds: float = STARTUP_SECONDS,
    inventory: tuple[int | None, str] = (None, ""),
) -> ap.ScalingSpec:
    auto = spec.autoscaling
    costs = token_costs_for(spec, pool)
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
        inventory_replicas=inventory[0],
        inventory_text=inventory[1] or "the node inventory",
        prefill_seconds_per_token=costs[0] if costs else None,
        decode_seconds_per_token=costs[1] if costs else None,
    )


def _stored_pool(stored_status: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """The pool's `status.pools[]` entry (before it existed, kvcap kept it in `status.plan.pools[]`:
    read there too, so an upgrade keeps the policy state)."""
    for where in (stored_status.get("pools"), (stored_status.get("plan") or {}).get("pools")):
        for entry in where or ():
            if isinstance(entry, Mapping) and entry.get("name") == name:
                return entry
    return {}


def _parse_time(text: Any) -> float | None:
    try:
        return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


_NUMBER = re.compile(r"[0-9][0-9.,]*[kM]?")
_LOOKAHEAD = re.compile(r" \(incl\. [^)]* trend look-ahead\)")  # a figure, whether 0 or not


def decision_shape(sentence: Any) -> str:
    """The decision with its numbers masked: a new shape is a new kind of decision (pressure
    appeared, Prometheus went away, a limit was hit) and is written at once; new numbers in the
    same shape are figures."""
    return _NUMBER.sub("#", _LOOKAHEAD.sub("", str(sentence or "")))


def settle(
    new: Mapping[str, Any], stored: Mapping[str, Any], now: float, refresh_seconds: float
) -> dict[str, Any]:
    """`new`, or `new` with the stored figures kept when only figures moved and they are younger
    than `refresh_seconds` (then the status does not change and is not written)."""
    out = dict(new)
    steady = {k: v for k, v in new.items() if k not in VOLATILE_KEYS}
    before = {k: v for k, v in stored.items() if k not in VOLATILE_KEYS and k != "name"}
    taken = _parse_time(stored.get("metricsTime"))
    if (
        steady != before
        or decision_shape(new.get("decision")) != decision_shape(stored.get("decision"))
        or taken is None
        or not 0 <= now - taken < refresh_seconds
    ):
        return out
    for key in VOLATILE_KEYS:
        out.pop(key, None)
        if key in stored:
            out[key] = stored[key]
    return out


def _int(value: float) -> int | None:
    return round(value) if math.isfinite(value) else None


def _time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pool_status(decision: ap.Decision, current: int, now: float | None = None) -> dict[str, Any]:
    """The pool's `status.pools[]` entry but its name (absent values are left out). `now` (Unix
    seconds) stamps `metricsTime`, when the figures were taken."""
    f = decision.figures
    out: dict[str, Any] = {
        "currentReplicas": current,
        "desiredReplicas": decision.desired_replicas,
        "kvTokensInUse": _int(f.kv_tokens_in_use),
        "kvTokensCapacity": _int(f.capacity_tokens_per_replica * current),
        "plannedKvTokensPerReplica": decision.capacity.planned_tokens,
        "observedKvTokensPerReplica": decision.capacity.observed_tokens,
        "capacityWaiting": _int(f.capacity_waiting),
        "preemptionRate": (
            round(f.preemption_rate, 4) if math.isfinite(f.preemption_rate) else None
        ),
        "lastScaleTime": _time(decision.state.last_scale_time),
        "decision": decision.message[:1024],
        "metricsTime": _time(now) if now else None,
        # what the policy needs across restarts (the demand trend stays in the operator's memory)
        "autoscaler": {
            k: v for k, v in decision.state.to_dict().items() if k != "trend" and v is not None
        },
    }
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
    inventory: Inventory | None = None,
    *,
    startup_seconds: float = STARTUP_SECONDS,
    refresh_seconds: float = REFRESH_SECONDS,
) -> dict[str, PoolScale]:
    """decide's ScaleFn. Pure: the same inputs give the same replicas and status."""
    return scale_pools_with_state(
        spec,
        plan,
        metrics,
        stored_status,
        inventory,
        startup_seconds=startup_seconds,
        refresh_seconds=refresh_seconds,
    ).scales


def scale_pools_with_state(
    spec: ModelDeploymentSpec,
    plan: CapacityPlan,
    metrics: object | None,
    stored_status: Mapping[str, Any],
    inventory: Inventory | None = None,
    *,
    startup_seconds: float = STARTUP_SECONDS,
    refresh_seconds: float = REFRESH_SECONDS,
) -> ScaleOutcome:
    """`scale_pools`, each pool's new policy state for the operator's memory (the trend), and
    the fresh figures (for the operator's own metrics, which are not throttled)."""
    policy = spec.autoscaling.policy
    if policy == "Disabled":
        return ScaleOutcome({}, {}, {})
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
    states: dict[str, ap.PoolState] = {}
    fresh: dict[str, PoolScale] = {}
    for pool in plan.pools:
        budget = None
        if spec.gpu.max_total is not None:
            others = sum(
                current[p.name] * p.gpus_per_replica for p in plan.pools if p.name != pool.name
            )
            budget = max(0, spec.gpu.max_total - others)
        fits = inventory_replicas(spec, plan, pool, current, inventory)
        sspec = scaling_spec(spec, pool, budget, startup_seconds, fits)
        seen = live.pools.get(pool.name, PoolLive(None))
        obs = ap.PoolObservation(
            now=live.now,
            replicas=current[pool.name],
            pods=seen.pods,
            prometheus_error=live.error,
        )
        stored = _stored_pool(stored_status, pool.name)
        state = ap.PoolState.from_dict(stored.get("autoscaler"))
        remembered = live.memory.get(pool.name)
        if remembered is not None:  # the trend is kept in memory, not in status
            state = replace(state, trend=remembered.trend)
        decision = ap.decide(sspec, obs, state)
        states[pool.name] = decision.state
        status = pool_status(decision, current[pool.name], live.now)
        replicas = None if policy == "External" else decision.desired_replicas
        fresh[pool.name] = PoolScale(replicas, status, _checks(decision))
        settled = settle(status, stored, live.now, refresh_seconds)
        out[pool.name] = PoolScale(replicas, settled, _checks(decision))
    return ScaleOutcome(out, states, fresh)


__all__ = [
    "OUTPUT_SHARE",
    "REFRESH_SECONDS",
    "STARTUP_SECONDS",
    "VOLATILE_KEYS",
    "ObjectMetrics",
    "PoolLive",
    "ScaleOutcome",
    "decision_shape",
    "inventory_replicas",
    "length_model",
    "pool_status",
    "scale_pools",
    "scale_pools_with_state",
    "scaling_spec",
    "settle",
]
