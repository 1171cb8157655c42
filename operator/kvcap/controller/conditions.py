"""Conditions and the whole `status` of a ModelDeployment, computed purely.

`set_condition` has cert-manager's semantics: `lastTransitionTime` moves only when `status` flips,
`observedGeneration` is always stamped, and a new list is returned. `build_status` writes exactly
the fields of the CRD's strict status schema. `transition_events` compares two statuses and
says which single-line events to post (events only on transitions, never on every resync).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from kvcap.api import constants as kc
from kvcap.capacity.plan_types import CapacityPlan

Status = Literal["True", "False", "Unknown"]
MAX_MESSAGE = 32768  # the CRD's maxLength on messages
MAX_SPLIT_DECISION = 4096


@dataclass(frozen=True)
class Check:
    """The outcome of one pure check, mapped onto a condition (cert-manager `policies.Func`)."""

    status: Status
    reason: str
    message: str

    @property
    def ok(self) -> bool:
        return self.status == "True"


@dataclass(frozen=True)
class WorkloadObservation:
    """What the API server says about a pool's Deployment (or LeaderWorkerSet)."""

    name: str
    kind: str
    replicas: int  # .spec.replicas
    ready_replicas: int  # .status.readyReplicas
    updated_replicas: int  # .status.updatedReplicas
    current: bool  # .status.observedGeneration >= .metadata.generation


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def format_time(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clip(text: str, limit: int = MAX_MESSAGE) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def set_condition(
    conds: Sequence[Mapping[str, Any]],
    *,
    type: str,
    status: Status,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """A new list with condition `type` set; `lastTransitionTime` moves only when `status` flips."""
    new: dict[str, Any] = {
        "type": type,
        "status": status,
        "reason": reason,
        "message": _clip(message),
        "observedGeneration": generation,
        "lastTransitionTime": format_time(now),
    }
    out: list[dict[str, Any]] = []
    found = False
    for cond in conds:
        if cond.get("type") == type:
            found = True
            if cond.get("status") == status and cond.get("lastTransitionTime"):
                new["lastTransitionTime"] = cond["lastTransitionTime"]
            out.append(new)
        else:
            out.append(dict(cond))
    if not found:
        out.append(new)
    return out


def get_condition(status: Mapping[str, Any] | None, type: str) -> Mapping[str, Any] | None:
    for cond in (status or {}).get("conditions") or ():
        if cond.get("type") == type:
            return cond  # type: ignore[no-any-return]
    return None


def initial_conditions(generation: int, now: datetime) -> list[dict[str, Any]]:
    """Every condition Unknown/Reconciling: written on the first visit (kubebuilder memcached)."""
    conds: list[dict[str, Any]] = []
    for type_ in kc.CONDITION_TYPES:
        conds = set_condition(
            conds,
            type=type_,
            status="Unknown",
            reason=kc.RECONCILING,
            message="the operator has not finished reconciling this generation",
            generation=generation,
            now=now,
        )
    return conds


# --- rollout assessment ---


def check_progress(
    plan: CapacityPlan | None,
    workloads: Mapping[str, WorkloadObservation],
    *,
    paused: bool,
) -> Check:
    """Progressing: True while a pool's workload is missing, not yet updated or not fully ready."""
    if paused:
        return Check("False", kc.PAUSED, "`spec.paused` is true: children are left as they are")
    if plan is None or not plan.feasible:
        return Check("False", kc.NOT_PLANNED, "no feasible plan, so nothing to roll out")
    waiting = []
    for pool in plan.pools:
        obs = workloads.get(pool.name)
        if obs is None:
            waiting.append(f"pool '{pool.name}' has no workload yet")
        elif not obs.current or obs.updated_replicas < pool.replicas:
            waiting.append(
                f"{obs.kind} '{obs.name}': "
                f"{obs.updated_replicas} of {pool.replicas} replicas updated"
            )
        elif obs.ready_replicas < pool.replicas:
            waiting.append(
                f"{obs.kind} '{obs.name}': {obs.ready_replicas} of {pool.replicas} replicas ready"
            )
    if waiting:
        return Check("True", kc.ROLLING_OUT, "; ".join(waiting))
    return Check(
        "False", kc.ROLLOUT_COMPLETE, "every pool runs the current template at full strength"
    )


def ready_counts(
    plan: CapacityPlan | None, workloads: Mapping[str, WorkloadObservation]
) -> tuple[int, int]:
    """(desired, ready) replicas summed over the pools; ready is capped at desired per pool."""
    if plan is None or not plan.feasible:
        return 0, 0
    desired = sum(p.replicas for p in plan.pools)
    ready = 0
    for pool in plan.pools:
        obs = workloads.get(pool.name)
        if obs is not None:
            ready += min(obs.ready_replicas, pool.replicas)
    return desired, ready


def check_ready(
    planned: Check,
    synced: Check,
    plan: CapacityPlan | None,
    workloads: Mapping[str, WorkloadObservation],
) -> Check:
    """The summary: planned, children in sync (or paused) and every desired replica ready."""
    if not planned.ok:
        return Check(
            "False" if planned.status == "False" else "Unknown", planned.reason, planned.message
        )
    if synced.status == "False":
        return Check("False", synced.reason, synced.message)
    desired, ready = ready_counts(plan, workloads)
    message = f"{ready} of {desired} replicas ready"
    if ready >= desired:
        return Check("True", kc.REPLICAS_READY, message)
    return Check("False", kc.REPLICAS_NOT_READY, message)


# --- status ---


def _plan_status(
    plan: CapacityPlan | None,
    planned: Check,
    workloads: Mapping[str, WorkloadObservation],
    names: Mapping[str, tuple[str, str]],
    vllm_version: str,
) -> dict[str, Any]:
    if plan is None:
        return {
            "feasible": False,
            "reason": planned.reason,
            "message": _clip(planned.message),
            "splitDecision": "",
            "vllmVersion": vllm_version,
            "pools": [],
        }
    pools = []
    for pool in plan.pools:
        obs = workloads.get(pool.name)
        workload_name, service_name = names.get(pool.name, ("", ""))
        pools.append(
            {
                "name": pool.name,
                "gpuProduct": pool.gpu_product,
                "tensorParallelSize": pool.tensor_parallel_size,
                "pipelineParallelSize": pool.pipeline_parallel_size,
                "replicas": pool.replicas,
                "readyReplicas": min(obs.ready_replicas, pool.replicas) if obs else 0,
                "gpusPerReplica": pool.gpus_per_replica,
                "maxModelLen": pool.max_model_len,
                "minContextTokens": pool.min_context_tokens,
                "maxNumSeqs": pool.max_num_seqs,
                "kvTokensPerReplica": int(pool.kv_tokens_per_replica),
                "kvCacheBytesPerGpu": int(pool.kv_bytes_per_gpu),
                "deploymentName": workload_name,
                "serviceName": service_name,
            }
        )
    return {
        "feasible": plan.feasible,
        "reason": plan.reason,
        "message": _clip(plan.message),
        "splitDecision": _clip(plan.split_decision, MAX_SPLIT_DECISION),
        "vllmVersion": vllm_version,
        "pools": pools,
    }


def build_status(
    *,
    generation: int,
    old_status: Mapping[str, Any] | None,
    plan: CapacityPlan | None,
    planned: Check,
    schedulable: Check,
    synced: Check,
    workloads: Mapping[str, WorkloadObservation],
    names: Mapping[str, tuple[str, str]],
    paused: bool,
    vllm_version: str,
    now: datetime,
) -> dict[str, Any]:
    """The whole status: exactly the fields of the CRD's status schema.

    `plan` is the planner's result (feasible or not) or None when there is none (invalid spec,
    missing config); `planned` is the CapacityPlanned check; `names` maps pool -> (workload name,
    Service name).
    """
    feasible_plan = plan if (plan is not None and plan.feasible and planned.ok) else None
    progressing = check_progress(feasible_plan, workloads, paused=paused)
    ready = check_ready(planned, synced, feasible_plan, workloads)
    desired, ready_replicas = ready_counts(feasible_plan, workloads)

    conds: list[dict[str, Any]] = list((old_status or {}).get("conditions") or [])
    for type_, check in (
        (kc.READY, ready),
        (kc.CAPACITY_PLANNED, planned),
        (kc.SCHEDULABLE, schedulable),
        (kc.PROGRESSING, progressing),
        (kc.CHILDREN_SYNCED, synced),
    ):
        conds = set_condition(
            conds,
            type=type_,
            status=check.status,
            reason=check.reason,
            message=check.message,
            generation=generation,
            now=now,
        )
    conds = [c for c in conds if c.get("type") in _ORDER]  # autoscaling's are kept for it
    conds.sort(key=lambda c: _ORDER.index(c["type"]))

    plan_status = _plan_status(plan, planned, workloads, names, vllm_version)
    if plan is not None and plan.feasible and not planned.ok:
        # Feasible on paper but not runnable here (e.g. NeedsMultiNode): keep the pools for the
        # reader, but say why nothing runs.
        plan_status.update(feasible=False, reason=planned.reason, message=_clip(planned.message))
    return {
        "observedGeneration": generation,
        "replicas": desired,
        "readyReplicas": ready_replicas,
        "totalGpus": feasible_plan.total_gpus if feasible_plan is not None else 0,
        "lowerBoundGpus": plan.lower_bound_gpus if plan is not None else 0,
        "plan": plan_status,
        "conditions": conds,
    }


_ORDER: tuple[str, ...] = (*kc.CONDITION_TYPES, *kc.AUTOSCALING_CONDITION_TYPES)
_SEVERITY = {"False": 0, "Unknown": 1, "True": 2}


def autoscaling_conditions(
    conds: Sequence[Mapping[str, Any]],
    pool_checks: Sequence[Mapping[str, Check]],
    *,
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """Fold each pool's MetricsAvailable/CapacityVerified checks into one condition each: the
    worst pool wins (False, then Unknown, then True; True messages are joined). With no pool
    checks (autoscaling 'Disabled') both conditions are removed."""
    if not pool_checks:
        return [dict(c) for c in conds if c.get("type") not in kc.AUTOSCALING_CONDITION_TYPES]
    out = [dict(c) for c in conds]
    for type_ in kc.AUTOSCALING_CONDITION_TYPES:
        checks = [pc[type_] for pc in pool_checks if type_ in pc]
        if not checks:
            continue
        worst = min(checks, key=lambda c: _SEVERITY[c.status])
        same = [c for c in checks if c.status == worst.status and c.reason == worst.reason]
        message = "; ".join(dict.fromkeys(c.message for c in same))
        out = set_condition(
            out,
            type=type_,
            status=worst.status,
            reason=worst.reason,
            message=message,
            generation=generation,
            now=now,
        )
    out.sort(key=lambda c: _ORDER.index(c["type"]) if c.get("type") in _ORDER else len(_ORDER))
    return out


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when writing `new` would change anything (the DeepEqual guard)."""
    old = old or {}
    return any(old.get(key) != value for key, value in new.items())


# --- events ---


def _pools_signature(status: Mapping[str, Any]) -> tuple[tuple[Any, ...], ...]:
    plan = status.get("plan") or {}
    if not plan.get("feasible"):
        return ()
    return tuple(
        (
            p.get("name"),
            p.get("gpuProduct"),
            p.get("tensorParallelSize"),
            p.get("pipelineParallelSize"),
            p.get("maxModelLen"),
            p.get("minContextTokens"),
            p.get("maxNumSeqs"),
        )
        for p in plan.get("pools") or ()
    )


def describe_pools(status: Mapping[str, Any]) -> str:
    parts = []
    for p in (status.get("plan") or {}).get("pools") or ():
        parts.append(
            f"{p['name']}: {p['replicas']} x {p['gpusPerReplica']} {p['gpuProduct']} "
            f"(TP {p['tensorParallelSize']}, PP {p['pipelineParallelSize']}, "
            f"max-model-len {p['maxModelLen']})"
        )
    return "; ".join(parts)


def _pool_scale_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Event]:
    """One event per pool whose replicas the autoscaler changed, with its decision sentence."""
    before = {p.get("name"): p for p in (old.get("plan") or {}).get("pools") or ()}
    events = []
    for pool in (new.get("plan") or {}).get("pools") or ():
        prev = before.get(pool.get("name"))
        if prev is None or "decision" not in pool:
            continue
        a, b = prev.get("replicas") or 0, pool.get("replicas") or 0
        if a != b:
            verb = kc.EVENT_SCALED_UP if b > a else kc.EVENT_SCALED_DOWN
            events.append(
                Event("Normal", verb, f"Pool '{pool['name']}' {a} -> {b}: {pool['decision']}")
            )
    return events


def transition_events(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[Event]:
    """Events for what changed between two statuses. Empty when nothing transitioned."""
    old = old or {}
    events: list[Event] = []

    def flipped(type_: str, to: str) -> Mapping[str, Any] | None:
        before, after = get_condition(old, type_), get_condition(new, type_)
        if after is None or after.get("status") != to:
            return None
        if (
            before is not None
            and before.get("status") == to
            and before.get("reason") == after.get("reason")
        ):
            return None
        return after

    cond = flipped(kc.CAPACITY_PLANNED, "False")
    if cond is not None:
        events.append(Event("Warning", kc.EVENT_INFEASIBLE, f"{cond['reason']}: {cond['message']}"))
    new_sig, old_sig = _pools_signature(new), _pools_signature(old)
    if new_sig and new_sig != old_sig:
        events.append(Event("Normal", kc.EVENT_PLAN_CHANGED, f"Planned {describe_pools(new)}"))
    old_replicas, new_replicas = old.get("replicas") or 0, new.get("replicas") or 0
    scaled = _pool_scale_events(old, new) if old_sig and new_sig else []
    events.extend(scaled)
    if old_sig and new_sig and old_replicas != new_replicas and not scaled:
        verb = kc.EVENT_SCALED_UP if new_replicas > old_replicas else kc.EVENT_SCALED_DOWN
        events.append(
            Event("Normal", verb, f"Scaled from {old_replicas} to {new_replicas} replicas")
        )
    cond = flipped(kc.CAPACITY_VERIFIED, "False")
    if cond is not None:
        events.append(Event("Warning", kc.EVENT_PLAN_MISMATCH, cond["message"]))
    cond = flipped(kc.METRICS_AVAILABLE, "False")
    if cond is not None:
        events.append(
            Event("Warning", kc.EVENT_METRICS_UNAVAILABLE, f"{cond['reason']}: {cond['message']}")
        )
    cond = flipped(kc.CHILDREN_SYNCED, "False")
    if cond is not None and cond.get("reason") == kc.CONFLICT:
        events.append(Event("Warning", kc.EVENT_CONFLICT, cond["message"]))
    cond = flipped(kc.SCHEDULABLE, "False")
    if cond is not None:
        events.append(Event("Warning", kc.EVENT_UNSCHEDULABLE, cond["message"]))
    before = get_condition(old, kc.READY)
    after = get_condition(new, kc.READY)
    if (
        after is not None
        and after.get("status") == "True"
        and (before is None or before.get("status") != "True")
    ):
        events.append(Event("Normal", kc.EVENT_READY, after["message"]))
    if (
        after is not None
        and after.get("status") == "False"
        and before is not None
        and before.get("status") == "True"
    ):
        events.append(
            Event("Warning", kc.EVENT_NOT_READY, f"{after['reason']}: {after['message']}")
        )
    return events


def now_utc() -> datetime:
    return datetime.now(UTC)
