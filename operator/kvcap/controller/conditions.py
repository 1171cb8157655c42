"""Conditions and the whole `status` of a ModelDeployment, computed purely.

`set_condition` has cert-manager's semantics: `lastTransitionTime` moves only when `status` flips,
`observedGeneration` is always stamped, and a new list is returned. `build_status` writes exactly
the fields of the CRD's strict status schema. `transition_events` compares two statuses and
says which single-line events to post (events only on transitions, never on every resync).

Pod and workload failures (`classify_pools`) surface in Ready, Progressing and Stalled. Besides
kvcap's own conditions the status follows kstatus (sigs.k8s.io/cli-utils pkg/kstatus, which Flux
and other GitOps health checks use; Argo CD's health script docs/argocd-health.lua reads the same
fields): `observedGeneration` on every write, `Reconciling=True` while work is under way,
`Stalled=True` with a reason when nothing can progress without a change, `Ready=True` when serving.
docs/status.md says what each condition and reason means.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

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
    # .status.replicas: pods of every ReplicaSet, old ones included (None: not reported)
    total_replicas: int | None = None


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
    """Every condition Unknown/Reconciling, except the kstatus pair: Reconciling=True,
    Stalled=False (written on the first visit, as kubebuilder's memcached example does)."""
    conds: list[dict[str, Any]] = []
    first = {kc.RECONCILING_TYPE: "True", kc.STALLED: "False"}
    for type_ in kc.CONDITION_TYPES:
        conds = set_condition(
            conds,
            type=type_,
            status=first.get(type_, "Unknown"),  # type: ignore[arg-type]
            reason=kc.RECONCILING,
            message="the operator has not finished reconciling this generation",
            generation=generation,
            now=now,
        )
    return conds


# --- pod and workload failures ---


class PoolState(Protocol):
    """What observe read about one pool (kvcap.controller.decide.PoolRuntime)."""

    @property
    def workload(self) -> Mapping[str, Any] | None: ...

    @property
    def pods(self) -> Sequence[Mapping[str, Any]]: ...


#: Container waiting reasons that mean the pod will not start without a change, in the order
#: they are reported. Sources: kubelet `pkg/kubelet/images/types.go` (ErrImagePull,
#: ImagePullBackOff, InvalidImageName, ErrImageNeverPull) and `pkg/kubelet/kuberuntime`
#: (CrashLoopBackOff, CreateContainerConfigError, CreateContainerError, RunContainerError).
WAITING_FAILURES: tuple[str, ...] = (
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
)


def _pod_failure(pod: Mapping[str, Any]) -> tuple[int, str, str] | None:
    """(rank, reason, message) of one pod that is not Ready and will not get there by itself."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded",):
        return None
    if any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    ):
        return None
    name = meta.get("name", "?")
    best: tuple[int, str, str] | None = None
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        cname = cs.get("name", "?")
        restarts = int(cs.get("restartCount") or 0)
        last = (cs.get("lastState") or {}).get("terminated") or {}
        now = (cs.get("state") or {}).get("terminated") or {}
        for term in (now, last):
            if term.get("reason") == kc.OOM_KILLED:
                found = (
                    0,
                    kc.OOM_KILLED,
                    f"pod '{name}': container '{cname}' was OOMKilled (exit code "
                    f"{term.get('exitCode', 137)}, {restarts} restarts): it needs more memory "
                    f"than the node or its limit gives it",
                )
                best = found if best is None or found[0] < best[0] else best
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in WAITING_FAILURES:
            detail = " ".join(str(waiting.get("message") or "").split())
            found = (
                1 + WAITING_FAILURES.index(reason),
                _STEADY_REASON.get(str(reason), str(reason)),
                f"pod '{name}': container '{cname}' is waiting in {reason}"
                + (f": {detail}" if detail else "")
                + (f" ({restarts} restarts)" if restarts else ""),
            )
            best = found if best is None or found[0] < best[0] else best
        elif restarts >= 2 and last.get("exitCode") not in (None, 0):
            # Between two back-offs a crashing container is briefly running or terminated; it is
            # still crash-looping (one steady reason, not a Stalled condition that flaps).
            found = (
                1 + WAITING_FAILURES.index("CrashLoopBackOff"),
                "CrashLoopBackOff",
                f"pod '{name}': container '{cname}' keeps exiting (last exit code "
                f"{last.get('exitCode')}, {last.get('reason') or 'Error'}; {restarts} restarts)",
            )
            best = found if best is None or found[0] < best[0] else best
    return best


#: The kubelet alternates ErrImagePull (an attempt failed) and ImagePullBackOff (waiting to retry)
#: for the same image: one reason for both keeps Stalled and its event from flapping.
_STEADY_REASON = {"ErrImagePull": "ImagePullBackOff"}


def _workload_failure(workload: Mapping[str, Any]) -> tuple[str, str] | None:
    """FailedCreate (ReplicaFailure) or ProgressDeadlineExceeded from a Deployment's conditions
    (https://kubernetes.io/docs/concepts/workloads/controllers/deployment/#deployment-status)."""
    kind = workload.get("kind", "Deployment")
    name = (workload.get("metadata") or {}).get("name", "?")
    conds = (workload.get("status") or {}).get("conditions") or ()
    for cond in conds:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            text = " ".join(str(cond.get("message") or "pods could not be created").split())
            return kc.FAILED_CREATE, f"{kind} '{name}' cannot create pods: {text}"
    for cond in conds:
        if (
            cond.get("type") == "Progressing"
            and cond.get("status") == "False"
            and cond.get("reason") == kc.PROGRESS_DEADLINE_EXCEEDED
        ):
            text = " ".join(str(cond.get("message") or "").split())
            return kc.PROGRESS_DEADLINE_EXCEEDED, f"{kind} '{name}': {text}"
    return None


def classify_pools(pools: Mapping[str, PoolState]) -> Check | None:
    """Why a pool's replicas do not become ready, when waiting will not help: the first failing
    pool (by name) and its most telling failure (OOMKilled, then the container waiting reasons in
    `WAITING_FAILURES` order, then FailedCreate, then ProgressDeadlineExceeded). None when
    nothing failed (pods still pulling, starting or pending on the scheduler are not failures:
    Schedulable reports the scheduler)."""
    for pool_name in sorted(pools):
        state = pools[pool_name]
        failures = [f for f in (_pod_failure(p) for p in state.pods) if f is not None]
        if failures:
            _rank, reason, message = min(failures, key=lambda f: f[0])
            same = sum(1 for f in failures if f[1] == reason)
            more = f" (and {same - 1} more pod(s))" if same > 1 else ""
            return Check("False", reason, f"pool '{pool_name}': {message}{more}")
        if state.workload is not None:
            found = _workload_failure(state.workload)
            if found is not None:
                return Check("False", found[0], f"pool '{pool_name}': {found[1]}")
    return None


#: Reasons that mean no progress without a change (kstatus Stalled). Transient ones (the Hub
#: unreachable, a Secret still to come, pods still starting or unschedulable for now) are not.
STALLING_REASONS = frozenset(
    {
        kc.INVALID_SPEC,
        kc.INFEASIBLE,
        kc.NEEDS_MULTI_NODE,
        kc.INVALID_MODEL_CONFIG,
        kc.PLANNER_ERROR,
        kc.INSUFFICIENT_GPUS,
        kc.NO_NODE_FITS_REPLICA,
        kc.CONFLICT,
        kc.APPLY_REJECTED,
        kc.OOM_KILLED,
        kc.FAILED_CREATE,
        kc.PROGRESS_DEADLINE_EXCEEDED,
        *WAITING_FAILURES,
    }
)


def check_stalled(checks: Iterable[Check]) -> Check:
    """Stalled: the first check (in the order given) that failed for a stalling reason."""
    for check in checks:
        if check.status == "False" and check.reason in STALLING_REASONS:
            return Check("True", check.reason, check.message)
    return Check("False", kc.NOT_STALLED, "nothing blocks progress")


def check_reconciling(
    stalled: Check, planned: Check, progressing: Check, synced: Check | None = None
) -> Check:
    """Reconciling: True while the operator still works toward the spec (kstatus: never together
    with Stalled=True)."""
    if stalled.ok:
        return Check("False", stalled.reason, "stalled: " + stalled.message)
    if planned.status != "True" and planned.reason not in STALLING_REASONS:
        return Check("True", planned.reason, planned.message)
    if synced is not None and synced.status == "False":  # e.g. ApplyFailed: retried
        return Check("True", synced.reason, synced.message)
    if progressing.status == "True":
        return Check("True", progressing.reason, progressing.message)
    return Check("False", kc.RECONCILED, "the status reflects the current spec")


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
        elif obs.total_replicas is not None and obs.total_replicas > obs.updated_replicas:
            # what `kubectl rollout status` waits for too: old pods still run (and hold GPUs)
            old = obs.total_replicas - obs.updated_replicas
            waiting.append(
                f"{obs.kind} '{obs.name}': {old} old replica{'s' if old != 1 else ''} "
                "pending termination"
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
    failure: Check | None = None,
) -> dict[str, Any]:
    """The whole status: exactly the fields of the CRD's status schema.

    `failure`: what `classify_pools` found wrong with the pods or workloads (None: nothing),
    surfaced in Ready, Progressing and Stalled.

    `plan` is the planner's result (feasible or not) or None when there is none (invalid spec,
    missing config); `planned` is the CapacityPlanned check; `names` maps pool -> (workload name,
    Service name).
    """
    feasible_plan = plan if (plan is not None and plan.feasible and planned.ok) else None
    progressing = check_progress(feasible_plan, workloads, paused=paused)
    ready = check_ready(planned, synced, feasible_plan, workloads)
    desired, ready_replicas = ready_counts(feasible_plan, workloads)
    if failure is not None and feasible_plan is not None:
        # "0 of 3 replicas ready" says nothing; the pods' own reason does.
        if ready.status != "True":
            ready = Check("False", failure.reason, f"{ready.message}; {failure.message}")
        if not paused:
            progressing = Check("False", failure.reason, failure.message)
    stalled = check_stalled(
        (planned, synced, schedulable, *((failure,) if failure is not None else ()))
    )
    reconciling = check_reconciling(stalled, planned, progressing, synced)

    conds: list[dict[str, Any]] = list((old_status or {}).get("conditions") or [])
    for type_, check in (
        (kc.READY, ready),
        (kc.CAPACITY_PLANNED, planned),
        (kc.SCHEDULABLE, schedulable),
        (kc.PROGRESSING, progressing),
        (kc.CHILDREN_SYNCED, synced),
        (kc.RECONCILING_TYPE, reconciling),
        (kc.STALLED, stalled),
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
    """One event per pool whose replicas the autoscaler changed, with its decision sentence
    (`status.pools[].decision`)."""
    before = {p.get("name"): p for p in (old.get("plan") or {}).get("pools") or ()}
    decisions = {p.get("name"): p.get("decision") for p in new.get("pools") or ()}
    events = []
    for pool in (new.get("plan") or {}).get("pools") or ():
        prev = before.get(pool.get("name"))
        decision = decisions.get(pool.get("name"))
        if prev is None or not decision:
            continue
        a, b = prev.get("replicas") or 0, pool.get("replicas") or 0
        if a != b:
            verb = kc.EVENT_SCALED_UP if b > a else kc.EVENT_SCALED_DOWN
            events.append(Event("Normal", verb, f"Pool '{pool['name']}' {a} -> {b}: {decision}"))
    return events


_POD_FAILURE_REASONS = frozenset(
    {kc.OOM_KILLED, kc.FAILED_CREATE, kc.PROGRESS_DEADLINE_EXCEEDED, *WAITING_FAILURES}
)


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
    cond = flipped(kc.STALLED, "True")
    if cond is not None and cond.get("reason") in _POD_FAILURE_REASONS:
        # Pod and workload failures have no other event of kvcap's; the rest already have theirs
        # (PlanInfeasible, Conflict, Unschedulable).
        events.append(Event("Warning", str(cond["reason"]), cond["message"]))
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
