"""The pure middle of one reconcile: what the operator wants, decided on plain data.

`kvcap.controller.reconcile` runs every reconcile of a ModelDeployment as five steps::

    observe (I/O) -> decide (pure, here) -> act (I/O) -> assess (pure, here) -> report (I/O)

* observe: read the object, its owned children and their pods, the model config, the GPU
  inventory and the API features into an `Observation` (frozen plain data: no clients, no kopf).
* `decide(observation, policy)`: parse the spec, plan (or keep the pinned plan), render the
  desired children -> a `Decision` (children to apply, or why children are left alone).
* act: server-side apply the desired children, delete stale owned ones -> an `ActOutcome`.
* `assess(observation, decision, outcome, ...)`: the whole status, the events to post and the
  error the handler raises (a `Failure`; the shell maps it onto kopf.TemporaryError or
  kopf.PermanentError) -> a `Report`.
* report: write the status (under the object's lock, never older than the stored one), post
  the events.

Extension points (filled by other parts of kvcap; each is optional and off when None):

(a) Autoscaling. `Observation.metrics` carries a per-object metrics snapshot (whatever
    `kvcap.autoscale` reads from Prometheus; decide never looks inside it), and `Policy.scale`,
    a pure `ScaleFn(spec, plan, metrics, stored_status, inventory) -> {pool name: PoolScale}`,
    overrides each pool's replicas after planning (the inventory caps its scale-ups).
    `PoolScale.replicas` is the desired count, or None for the `External` policy: then
    `replicas` is left out of the applied Deployment or LeaderWorkerSet so another controller
    (an HPA, KEDA) owns it. `PoolScale.status` becomes that pool's entry of `status.pools[]`.
(b) Pod failures. `Observation.pools` maps each pool to a `PoolRuntime`: the raw workload
    object (Deployment or LeaderWorkerSet, with its status and conditions) and the raw pods of
    that pool (with their container statuses). `Policy.classify`, a pure
    `ClassifyFn(pools) -> Check | None`, turns them into a failure reason (ImagePullBackOff,
    CrashLoopBackOff, OOMKilled, FailedCreate, ProgressDeadlineExceeded, ...) that `assess`
    surfaces through `Ready`/`Progressing` and events (call site marked "extension point (b)").

Plan pinning: the shape in `status.plan` is kept while `metadata.generation` is the generation
it was planned for and the `kvcap.io/replan` annotation is unchanged; the live inventory only
feeds `Schedulable` (see `needs_replan`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from kvcap.api import constants as kc
from kvcap.api.errors import InvalidModelConfig, KvcapError
from kvcap.api.models import ModelDeploymentSpec
from kvcap.capacity.configs import parse_config_text
from kvcap.capacity.plan_types import CapacityPlan, PoolPlan
from kvcap.controller.conditions import (
    Check,
    Event,
    WorkloadObservation,
    autoscaling_conditions,
    build_status,
    get_condition,
    status_changed,
    transition_events,
)
from kvcap.controller.podspec import note_unmodelled_flags, with_model_bytes
from kvcap.controller.render import (
    Features,
    Owner,
    RenderOptions,
    child_name,
    is_multi_node,
    nodes_per_replica,
    render_children,
    spec_hash,
)

Trigger = Literal["change", "resync"]
Inventory = Mapping[str, Sequence[int]]  # gpu.product label value -> allocatable GPUs of each node
PlanFn = Callable[..., CapacityPlan]

# =================================================================================================
# Observations of the cluster (pure helpers the shell uses to build an Observation)
# =================================================================================================


def format_validation_error(err: ValidationError) -> str:
    """One line: "`spec.workload.maxContextTokens`: must be ...; `spec.model`: field required"."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "__root__")
        where = f"`spec.{loc}`" if loc else "`spec`"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or str(err)


def node_is_ready(node: Mapping[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    for cond in (node.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def gpu_inventory(nodes: Iterable[Mapping[str, Any]], resource_name: str) -> dict[str, list[int]]:
    """Allocatable `resource_name` of each Ready, schedulable node, by `nvidia.com/gpu.product`."""
    inventory: dict[str, list[int]] = {}
    for node in nodes:
        if not node_is_ready(node):
            continue
        product = ((node.get("metadata") or {}).get("labels") or {}).get(kc.GPU_PRODUCT_LABEL)
        raw = ((node.get("status") or {}).get("allocatable") or {}).get(resource_name)
        if not product or raw is None:
            continue
        try:
            count = int(str(raw))
        except ValueError:
            continue
        if count > 0:
            inventory.setdefault(product, []).append(count)
    return inventory


def cluster_gpus(inventory: Inventory | None) -> dict[str, int] | None:
    """What the planner takes as `cluster_gpus`; None (plan offline) when no node has GPUs."""
    if not inventory:
        return None
    return {product: sum(counts) for product, counts in sorted(inventory.items())}


def unschedulable_pods(pods: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(name, scheduler message) of Pending pods with PodScheduled False/Unschedulable."""
    found = []
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") not in (None, "Pending") or (pod.get("metadata") or {}).get(
            "deletionTimestamp"
        ):
            continue
        for cond in status.get("conditions") or ():
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"
            ):
                found.append((pod["metadata"]["name"], str(cond.get("message") or "unschedulable")))
    return sorted(found)


def is_controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(
        ref.get("uid") == uid and ref.get("controller")
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or ()
    )


def kind_name(obj: Mapping[str, Any]) -> tuple[str, str]:
    return (obj["kind"], obj["metadata"]["name"])


def workload_observation(obj: Mapping[str, Any]) -> WorkloadObservation:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    generation = int(meta.get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    kind = obj.get("kind", "Deployment")
    replicas = int(spec.get("replicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    # LeaderWorkerSet has no observedGeneration in status; its updatedReplicas counts groups.
    current = observed >= generation if kind == "Deployment" else True
    return WorkloadObservation(
        name=meta.get("name", ""),
        kind=kind,
        replicas=replicas,
        ready_replicas=int(status.get("readyReplicas") or 0),
        updated_replicas=updated,
        current=current,
        total_replicas=int(status["replicas"]) if "replicas" in status else None,
    )


def _is_workload(obj: Mapping[str, Any]) -> bool:
    return obj.get("kind") in ("Deployment", kc.LEADER_WORKER_SET_API[3])


def _pool_of(obj: Mapping[str, Any]) -> str | None:
    pool = ((obj.get("metadata") or {}).get("labels") or {}).get(kc.LABEL_POOL)
    return str(pool) if pool else None


def observe_workloads(objs: Iterable[Mapping[str, Any]]) -> dict[str, WorkloadObservation]:
    """pool name -> observation, for Deployments/LeaderWorkerSets that carry the pool label."""
    out = {}
    for obj in objs:
        pool = _pool_of(obj)
        if _is_workload(obj) and pool:
            out[pool] = workload_observation(obj)
    return out


def pods_needed(children: Iterable[Mapping[str, Any]]) -> bool:
    """Whether observe should read the pods: some owned workload is missing ready replicas."""
    workloads = [w for w in children if _is_workload(w)]
    if not workloads:
        return False
    return any(
        int((w.get("status") or {}).get("readyReplicas") or 0)
        < int((w.get("spec") or {}).get("replicas") or 0)
        for w in workloads
    )


@dataclass(frozen=True)
class PoolRuntime:
    """Extension point (b): what the API server says about one pool's workload and its pods."""

    workload: Mapping[str, Any] | None
    pods: tuple[Mapping[str, Any], ...] = ()


def pool_runtime(
    children: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]
) -> dict[str, PoolRuntime]:
    """pool name -> its workload object and its pods (by the pool label)."""
    workloads: dict[str, Mapping[str, Any]] = {}
    for obj in children:
        pool = _pool_of(obj)
        if _is_workload(obj) and pool:
            workloads[pool] = obj
    by_pool: dict[str, list[Mapping[str, Any]]] = {}
    for pod in pods:
        pool = _pool_of(pod)
        if pool:
            by_pool.setdefault(pool, []).append(pod)
    return {
        pool: PoolRuntime(workloads.get(pool), tuple(by_pool.get(pool, ())))
        for pool in sorted(set(workloads) | set(by_pool))
    }


def desired_features(features: Features) -> list[tuple[str, str]]:
    """(apiVersion, plural) of every kind the operator may own on this cluster (for listing)."""
    kinds = [("apps/v1", "deployments"), ("v1", "services"), ("policy/v1", "poddisruptionbudgets")]
    if features.leader_worker_set:
        kinds.append(("/".join(kc.LEADER_WORKER_SET_API[:2]), kc.LEADER_WORKER_SET_API[2]))
    if features.service_monitor:
        kinds.append(("/".join(kc.SERVICE_MONITOR_API[:2]), kc.SERVICE_MONITOR_API[2]))
    if features.inference_pool is not None:
        kinds.append(("/".join(features.inference_pool), "inferencepools"))
    return kinds


def parse_model_config(text: str | None, where: str) -> dict[str, Any]:
    """Parse a config.json held in a ConfigMap key; ValueError with a one-line message."""
    if text is None:
        raise ValueError(f"{where} does not exist")
    try:
        return parse_config_text(text, where)
    except InvalidModelConfig as err:
        raise ValueError(err.message) from None


def skip_resync(body: Mapping[str, Any]) -> bool:
    """The resync loop skips an object whose current generation was already found InvalidSpec:
    validation depends on the spec alone, so only a spec change (an update event) can fix it."""
    status = body.get("status") or {}
    cond = get_condition(status, kc.CAPACITY_PLANNED)
    generation = (body.get("metadata") or {}).get("generation")
    return bool(
        cond is not None
        and cond.get("reason") == kc.INVALID_SPEC
        and status.get("observedGeneration") == generation
    )


# =================================================================================================
# The observation, the policy and the decision
# =================================================================================================


@dataclass(frozen=True)
class PoolScale:
    """Extension point (a): one pool's replicas as the autoscaler wants them.

    `replicas` None means the `External` policy: replicas are left out of the applied workload."""

    replicas: int | None
    status: Mapping[str, Any] = field(default_factory=dict)
    checks: Mapping[str, Check] = field(default_factory=dict)  # MetricsAvailable, CapacityVerified


ScaleFn = Callable[
    [ModelDeploymentSpec, CapacityPlan, object | None, Mapping[str, Any], Inventory | None],
    Mapping[str, PoolScale],
]
ClassifyFn = Callable[[Mapping[str, PoolRuntime]], Check | None]


@dataclass(frozen=True)
class ModelConfig:
    """The model's config.json as observe found it: the parsed dict (None: the planner reads the
    catalog), or the Check that explains why it is not available."""

    config: dict[str, Any] | None = None
    error: Check | None = None


@dataclass(frozen=True)
class Observation:
    """Everything one reconcile read, as plain data."""

    obj: Mapping[str, Any]  # the ModelDeployment (metadata, spec, stored status)
    features: Features
    inventory: Inventory | None  # None: disabled or Nodes unreadable
    model_config: ModelConfig
    children: tuple[Mapping[str, Any], ...]  # owned-labelled children, before act
    pods: tuple[Mapping[str, Any], ...]  # the pods of those children (only read when not all ready)
    now: datetime
    metrics: object | None = None  # extension point (a): a per-object metrics snapshot

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.obj.get("metadata") or {}

    @property
    def owner(self) -> Owner:
        meta = self.meta
        return Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])

    @property
    def generation(self) -> int:
        return int(self.meta.get("generation") or 0)

    @property
    def stored_status(self) -> Mapping[str, Any]:
        return self.obj.get("status") or {}

    @property
    def pools(self) -> dict[str, PoolRuntime]:
        """Extension point (b): pool -> workload + pods."""
        return pool_runtime(self.children, self.pods)


@dataclass(frozen=True)
class Policy:
    """How decide/assess behave: operator settings and the pluggable pure functions."""

    render: RenderOptions = field(default_factory=RenderOptions)
    plan_fn: PlanFn | None = None  # None: kvcap.capacity.planner.plan_deployment
    scale: ScaleFn | None = None  # extension point (a)
    classify: ClassifyFn | None = None  # extension point (b)
    retry_delay_seconds: float = 15.0


SyncMode = Literal["apply", "hold"]


@dataclass(frozen=True)
class Decision:
    """What to do with the children and what was planned.

    `mode` "apply": apply `desired` and delete stale owned children; "hold": touch nothing, and
    `hold` is the ChildrenSynced check that says why (invalid spec, paused, no runnable plan)."""

    spec: ModelDeploymentSpec | None
    plan: CapacityPlan | None
    planned: Check
    mode: SyncMode
    desired: tuple[dict[str, Any], ...] = ()
    hold: Check | None = None
    scales: Mapping[str, PoolScale] = field(default_factory=dict)


@dataclass(frozen=True)
class ActOutcome:
    """What act did: the ChildrenSynced check, the objects the API server returned for applied
    children, and the children it deleted ("Kind 'name'")."""

    check: Check
    objects: tuple[Mapping[str, Any], ...] = ()
    deleted: tuple[str, ...] = ()


@dataclass(frozen=True)
class Failure:
    """What the handler raises after the status is written (kopf `errors.rst`)."""

    permanent: bool
    message: str
    delay: float = 0.0


@dataclass(frozen=True)
class Report:
    status: dict[str, Any]
    changed: bool  # the status differs from the stored one (the DeepEqual guard)
    events: tuple[Event, ...]
    failure: Failure | None


def check_multi_node(
    spec: ModelDeploymentSpec, plan: CapacityPlan, features: Features
) -> Check | None:
    """CapacityPlanned=False/NeedsMultiNode when a replica spans nodes and cannot run; else None."""
    for pool in plan.pools:
        if not is_multi_node(pool, spec.gpu.per_node):
            continue
        shape = (
            f"pool '{pool.name}' needs {pool.gpus_per_replica} GPUs per replica "
            f"(TP {pool.tensor_parallel_size} x PP {pool.pipeline_parallel_size}) "
            f"but `spec.gpu.perNode` "
            f"is {spec.gpu.per_node}"
        )
        if nodes_per_replica(pool.gpus_per_replica, spec.gpu.per_node) is None:
            return Check(
                "False",
                kc.NEEDS_MULTI_NODE,
                f"{shape}, and {pool.gpus_per_replica} GPUs cannot be split evenly over nodes "
                f"of {spec.gpu.per_node}",
            )
        if not features.leader_worker_set:
            group, version = kc.LEADER_WORKER_SET_API[:2]
            return Check(
                "False",
                kc.NEEDS_MULTI_NODE,
                f"{shape}; a replica spanning nodes must run as a LeaderWorkerSet, and the "
                f"'{group}/{version}' API is not installed on this cluster",
            )
    return None


def _product_text(labels: Sequence[str], fallback: str, inventory: Inventory) -> str:
    """The product as the nodes spell it (label values present on nodes), else the catalog name."""
    present = [label for label in labels if label in inventory]
    spelled = present or [label for label in labels if label != fallback]
    return "/".join(spelled) if spelled else fallback


def check_schedulable(
    spec: ModelDeploymentSpec,
    plan: CapacityPlan | None,
    inventory: Inventory | None,
    unschedulable: Sequence[tuple[str, str]] = (),
) -> Check:
    """Schedulable: the Ready nodes allocate enough GPUs of each planned product, and no pod of ours
    is reported unschedulable."""
    if plan is None or not plan.feasible:
        return Check("Unknown", kc.NOT_PLANNED, "no feasible plan to schedule")
    if inventory is None:
        return Check(
            "Unknown",
            kc.INVENTORY_UNAVAILABLE,
            "node inventory is disabled or Nodes cannot be read",
        )
    needs: dict[tuple[str, ...], int] = {}
    text: dict[tuple[str, ...], str] = {}
    for pool in plan.pools:
        key = tuple(pool.gpu_labels) or (pool.gpu_product,)
        needs[key] = needs.get(key, 0) + pool.total_gpus
        text[key] = _product_text(pool.gpu_labels, pool.gpu_product, inventory)
        nodes = nodes_per_replica(pool.gpus_per_replica, spec.gpu.per_node) or 1
        per_pod = pool.gpus_per_replica // nodes
        largest = max((n for label in key for n in inventory.get(label, ())), default=0)
        if largest and per_pod > largest:
            return Check(
                "False",
                kc.NO_NODE_FITS_REPLICA,
                f"pool '{pool.name}' needs {per_pod} x {text[key]} on one node, the largest "
                f"node allocates {largest}",
            )
    summary = []
    for key, need in needs.items():
        have = sum(sum(inventory.get(label, ())) for label in key)
        if need > have:
            return Check(
                "False",
                kc.INSUFFICIENT_GPUS,
                f"needs {need} x {text[key]}, {have} allocatable on Ready nodes",
            )
        summary.append(f"needs {need} x {text[key]}, {have} allocatable")
    if unschedulable:
        pod, message = unschedulable[0]
        more = f" (and {len(unschedulable) - 1} more)" if len(unschedulable) > 1 else ""
        return Check("False", kc.POD_UNSCHEDULABLE, f"pod '{pod}'{more}: {message}")
    return Check("True", kc.GPUS_AVAILABLE, "; ".join(summary))


@dataclass(frozen=True)
class ChildDiff:
    """What to do with children: apply (ours or new), look up (unknown), delete (ours, stale)."""

    apply: tuple[dict[str, Any], ...]
    lookup: tuple[dict[str, Any], ...]  # desired, not in the labelled listing: GET by name first
    conflicts: tuple[str, ...]  # "Kind 'name'" of same-named objects we do not control
    delete: tuple[dict[str, Any], ...]


def diff_children(
    desired: Sequence[dict[str, Any]], listed: Sequence[Mapping[str, Any]], uid: str
) -> ChildDiff:
    """Decide per child. Only objects with our labels AND our controller ownerReference are ever
    changed or deleted; a same-named object without them is a conflict and is left alone."""
    by_key = {kind_name(o): o for o in listed}
    apply, lookup, conflicts = [], [], []
    for obj in desired:
        seen = by_key.get(kind_name(obj))
        if seen is None:
            lookup.append(obj)
        elif is_controlled_by(seen, uid):
            apply.append(obj)
        else:
            conflicts.append(f"{obj['kind']} '{obj['metadata']['name']}'")
    wanted = {kind_name(o) for o in desired}
    delete = [dict(o) for o in listed if is_controlled_by(o, uid) and kind_name(o) not in wanted]
    return ChildDiff(tuple(apply), tuple(lookup), tuple(conflicts), tuple(delete))


PERMANENT_REASONS = frozenset(
    {kc.INFEASIBLE, kc.NEEDS_MULTI_NODE, kc.INVALID_MODEL_CONFIG, kc.PLANNER_ERROR}
)
TRANSIENT_REASONS = frozenset({kc.MODEL_CONFIG_UNAVAILABLE, kc.HUB_UNAVAILABLE})


def decide_error(
    trigger: Trigger, planned: Check, synced: Check, retry_delay: float
) -> Failure | None:
    """A temporary failure for what may heal by itself (the Hub, a Secret still to come), a
    permanent one on change events for what only a spec change can fix (the resync loop never
    reports those: it just re-checks)."""
    if not planned.ok and planned.reason in TRANSIENT_REASONS:
        return Failure(False, planned.message, delay=max(60.0, retry_delay))
    if synced.reason == kc.APPLY_FAILED:  # written to status first, then retried
        return Failure(False, synced.message, delay=retry_delay)
    if trigger != "change":
        return None
    if planned.reason == kc.INVALID_SPEC:
        return Failure(True, f"Invalid spec: {planned.message}")
    if not planned.ok and planned.reason in PERMANENT_REASONS:
        return Failure(True, f"{planned.reason}: {planned.message}")
    if synced.reason == kc.APPLY_REJECTED:
        return Failure(True, synced.message)
    return None


def vllm_version(spec: ModelDeploymentSpec | None, plan: CapacityPlan | None) -> str:
    if plan is not None and plan.extra.get("vllm_version"):
        return str(plan.extra["vllm_version"])[:64]
    return (spec.vllm.resolved_version() or "") if spec is not None else ""


def run_planner(
    plan_fn: PlanFn,
    spec: ModelDeploymentSpec,
    config: dict[str, Any] | None,
    gpus: dict[str, int] | None,
) -> tuple[CapacityPlan | None, Check]:
    """Call the planner and map its outcome onto the CapacityPlanned check."""
    try:
        plan = plan_fn(spec, config=config, cluster_gpus=gpus)
    except KvcapError as err:
        return None, Check("False", err.reason, err.message)
    except Exception as err:  # a planner bug must not crash-loop the operator
        return None, Check("False", kc.PLANNER_ERROR, f"the planner failed: {err!r}")
    if not plan.feasible:
        return plan, Check("False", kc.INFEASIBLE, f"{plan.reason}: {plan.message}")
    return plan, Check("True", kc.PLAN_FITS, plan.message)


def apply_scales(
    plan: CapacityPlan, scales: Mapping[str, PoolScale]
) -> tuple[CapacityPlan, frozenset[str]]:
    """The plan with each pool's replicas overridden (0 included: `minReplicas: 0` scales a pool
    to zero); the pools whose replicas are External (their plan shows the replicas they have,
    `currentReplicas` of the pool's status entry)."""
    external = frozenset(name for name, s in scales.items() if s.replicas is None)
    pools = []
    for pool in plan.pools:
        scale = scales.get(pool.name)
        replicas = None if scale is None else scale.replicas
        if scale is not None and replicas is None:
            current = scale.status.get("currentReplicas")
            replicas = current if isinstance(current, int) else None
        pools.append(pool if replicas is None else replace(pool, replicas=replicas))
    total = sum(p.total_gpus for p in pools)
    return replace(plan, pools=tuple(pools), total_gpus=total), external


def _drop_replicas(obj: dict[str, Any], pools: frozenset[str]) -> dict[str, Any]:
    """`External` replicas: leave `spec.replicas` out of the applied workload (SSA then releases
    the field, and whoever else sets it owns it)."""
    if _is_workload(obj) and _pool_of(obj) in pools:
        obj = {**obj, "spec": {k: v for k, v in obj["spec"].items() if k != "replicas"}}
    return obj


def _load_plan_fn(policy: Policy) -> PlanFn:
    if policy.plan_fn is not None:
        return policy.plan_fn
    from kvcap.capacity.planner import plan_deployment

    return plan_deployment


def parse_spec(obj: Mapping[str, Any]) -> tuple[ModelDeploymentSpec | None, Check | None]:
    """The spec, or the CapacityPlanned=False/InvalidSpec check that says what is wrong."""
    try:
        return ModelDeploymentSpec.model_validate(obj.get("spec") or {}), None
    except ValidationError as err:
        return None, Check("False", kc.INVALID_SPEC, format_validation_error(err))


REPLAN_ANNOTATION = f"{kc.ANNOTATION_PREFIX}/replan"


def replan_token(obj: Mapping[str, Any]) -> str:
    """The `kvcap.io/replan` annotation's value ("" when unset)."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(REPLAN_ANNOTATION) or "")[:253]


def needs_replan(obj: Mapping[str, Any]) -> bool:
    """Whether the plan must be made again: the spec changed since `status.plan` was made (a new
    `metadata.generation`), the `kvcap.io/replan` annotation changed, or there is no runnable plan
    to keep. Otherwise the stored shape is pinned: the live inventory never reshapes running pools
    (it only feeds `Schedulable`)."""
    return pinned_plan(obj) is None


def pinned_plan(obj: Mapping[str, Any]) -> CapacityPlan | None:
    """The feasible plan stored in `status.plan` if it is still the one to run, else None."""
    status = obj.get("status") or {}
    stored = status.get("plan") or {}
    generation = int((obj.get("metadata") or {}).get("generation") or 0)
    if (
        not stored.get("feasible")
        or stored.get("plannedGeneration") != generation
        or str(stored.get("replanToken") or "") != replan_token(obj)
        or not stored.get("pools")
    ):
        return None
    try:
        pools = tuple(
            PoolPlan(
                name=str(p["name"]),
                gpu_product=str(p["gpuProduct"]),
                gpu_labels=tuple(str(label) for label in p["gpuLabels"]),
                tensor_parallel_size=int(p["tensorParallelSize"]),
                pipeline_parallel_size=int(p["pipelineParallelSize"]),
                replicas=int(p["replicas"]),
                gpus_per_replica=int(p["gpusPerReplica"]),
                max_model_len=int(p["maxModelLen"]),
                min_context_tokens=int(p["minContextTokens"]),
                max_num_seqs=int(p["maxNumSeqs"]),
                kv_tokens_per_replica=int(p["kvTokensPerReplica"]),
                kv_bytes_per_gpu=int(p["kvCacheBytesPerGpu"]),
                gpu_memory_utilization=float(p["gpuMemoryUtilization"]),
                concurrency_per_replica=float(p["concurrencyPerReplica"]),
                target_concurrency=int(p["targetConcurrency"]),
                headroom_percent=0.0,
                vllm_args=tuple(str(a) for a in p["vllmArgs"]),
                binding_constraint=str(p["bindingConstraint"]) if p.get("bindingConstraint")
                else None,
                predicted_ttft_ms=_optional_float(p.get("predictedTtftMilliseconds")),
                predicted_tpot_ms=_optional_float(p.get("predictedTpotMilliseconds")),
                prefill_seconds_per_token=_optional_float(p.get("prefillSecondsPerToken")),
                decode_seconds_per_token=_optional_float(p.get("decodeSecondsPerToken")),
            )
            for p in stored["pools"]
        )
    except (KeyError, TypeError, ValueError):  # written by an older kvcap: plan again
        return None
    extra: dict[str, Any] = (
        {"vllm_version": stored["vllmVersion"]} if stored.get("vllmVersion") else {}
    )
    if isinstance(stored.get("modelBytes"), int) and stored["modelBytes"] > 0:
        extra["model_bytes"] = stored["modelBytes"]  # the pods' sizes stay pinned too
    return CapacityPlan(
        feasible=True,
        reason=str(stored.get("reason") or kc.PLAN_FITS),
        message=str(stored.get("message") or ""),
        model=str(((obj.get("spec") or {}).get("model") or {}).get("name") or ""),
        total_gpus=sum(p.total_gpus for p in pools),
        lower_bound_gpus=int(status.get("lowerBoundGpus") or 0),
        pools=pools,
        split_decision=str(stored.get("splitDecision") or ""),
        extra=extra,
    )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def pin_status(status: dict[str, Any], obj: Mapping[str, Any], plan: CapacityPlan | None) -> None:
    """Record in `status.plan` what `pinned_plan` needs to rebuild this plan."""
    stored = status.get("plan")
    if not isinstance(stored, dict):
        return
    stored["plannedGeneration"] = int((obj.get("metadata") or {}).get("generation") or 0)
    stored["replanToken"] = replan_token(obj)
    by_name = {p.name: p for p in (plan.pools if plan is not None else ())}
    for entry in stored.get("pools") or ():
        pool = by_name.get(entry.get("name"))
        if pool is None:
            continue
        entry["gpuLabels"] = list(pool.gpu_labels)
        entry["vllmArgs"] = list(pool.vllm_args)
        entry["gpuMemoryUtilization"] = pool.gpu_memory_utilization
        entry["targetConcurrency"] = pool.target_concurrency
        entry["concurrencyPerReplica"] = round(pool.concurrency_per_replica, 3)
        if pool.binding_constraint is not None:  # spec.workload.latencyObjectives was set
            entry["bindingConstraint"] = pool.binding_constraint
            entry["predictedTtftMilliseconds"] = round(pool.predicted_ttft_ms or 0.0, 1)
            entry["predictedTpotMilliseconds"] = round(pool.predicted_tpot_ms or 0.0, 2)
        if pool.prefill_seconds_per_token is not None and pool.decode_seconds_per_token is not None:
            # the autoscaler's token prices, pinned with the plan (no config.json needed later)
            entry["prefillSecondsPerToken"] = pool.prefill_seconds_per_token
            entry["decodeSecondsPerToken"] = pool.decode_seconds_per_token
    model_bytes = plan.extra.get("model_bytes") if plan is not None else None
    if isinstance(model_bytes, int) and model_bytes > 0:
        stored["modelBytes"] = model_bytes


APPLIED_HASH_ANNOTATION = f"{kc.ANNOTATION_PREFIX}/applied-hash"


def stamp_applied_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of `obj` annotated with the hash of everything kvcap applies: when a child already
    carries the same value (and nobody changed it since), act skips the apply."""
    meta = dict(obj["metadata"])
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k != APPLIED_HASH_ANNOTATION
    }
    digest = spec_hash({**obj, "metadata": {**meta, "annotations": annotations}})
    meta["annotations"] = {**annotations, APPLIED_HASH_ANNOTATION: digest}
    return {**obj, "metadata": meta}


def applied_hash(obj: Mapping[str, Any]) -> str | None:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(APPLIED_HASH_ANNOTATION)
    return str(value) if value else None


def change_marker(obj: Mapping[str, Any]) -> str:
    """What moves when anyone changes a child's spec: metadata.generation where the kind has one,
    else the resourceVersion."""
    meta = obj.get("metadata") or {}
    return f"g{meta['generation']}" if meta.get("generation") else f"r{meta.get('resourceVersion')}"


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that turns the stored status `old` into `new`: `new`, plus a null for
    every key of a nested object that `new` no longer has (a merge patch keeps what it does not
    mention, so a field kvcap stopped writing would otherwise stay, and differ, forever)."""
    patch: dict[str, Any] = dict(new)
    for key, before in old.items():
        if key not in new:
            patch[key] = None
        elif isinstance(before, Mapping) and isinstance(new[key], Mapping):
            patch[key] = status_patch(before, new[key])
    return patch


def decide(obs: Observation, policy: Policy) -> Decision:
    """Plan and render: the children this ModelDeployment should have, or why none are touched."""
    spec, invalid = parse_spec(obs.obj)
    if spec is None:
        assert invalid is not None
        return Decision(
            spec=None,
            plan=None,
            planned=invalid,
            mode="hold",
            hold=Check(
                "Unknown", kc.NOT_PLANNED, "the spec is invalid: children are left as they are"
            ),
        )
    plan: CapacityPlan | None = pinned_plan(obs.obj)
    if plan is not None:
        planned = check_multi_node(spec, plan, policy.render.features) or Check(
            "True", kc.PLAN_FITS, plan.message
        )
    elif obs.model_config.error is not None:
        planned = obs.model_config.error
    else:
        plan, planned = run_planner(
            _load_plan_fn(policy), spec, obs.model_config.config, cluster_gpus(obs.inventory)
        )
        if plan is not None and planned.ok:
            planned = check_multi_node(spec, plan, policy.render.features) or planned
        if plan is not None:  # pinned with the plan: a pinned reconcile reads no config.json
            plan = with_model_bytes(plan, spec, obs.model_config.config)
    planned = note_unmodelled_flags(planned, spec)
    runnable = plan if (plan is not None and planned.ok) else None
    scales: Mapping[str, PoolScale] = {}
    external: frozenset[str] = frozenset()
    if runnable is not None and policy.scale is not None:
        scales = dict(policy.scale(spec, runnable, obs.metrics, obs.stored_status, obs.inventory))
        runnable, external = apply_scales(runnable, scales)
        plan = runnable
    if spec.paused:
        hold = Check("Unknown", kc.PAUSED, "`spec.paused` is true: children are left as they are")
        return Decision(spec, plan, planned, "hold", hold=hold, scales=scales)
    if runnable is None:
        hold = Check(
            "Unknown", kc.NOT_PLANNED, "no runnable plan: existing children are left as they are"
        )
        return Decision(spec, plan, planned, "hold", hold=hold, scales=scales)
    desired = render_children(
        obs.owner, spec, runnable, policy.render, model_bytes=runnable.extra.get("model_bytes")
    )
    if external:
        desired = [_drop_replicas(o, external) for o in desired]
    desired = [stamp_applied_hash(o) for o in desired]
    return Decision(spec, plan, planned, "apply", desired=tuple(desired), scales=scales)


def _merge_pool_status(
    status: dict[str, Any], scales: Mapping[str, PoolScale], stored: Mapping[str, Any]
) -> None:
    """`status.pools[]`: the autoscaler's entry per pool, in plan order (None removes a stored
    list, a merge patch's delete, when autoscaling was turned off)."""
    entries = [
        {"name": pool.get("name"), **scales[pool["name"]].status}
        for pool in (status.get("plan") or {}).get("pools") or ()
        if pool.get("name") in scales and scales[pool["name"]].status
    ]
    if entries:
        status["pools"] = entries
    elif stored.get("pools"):
        status["pools"] = None


def assess(
    obs: Observation, decision: Decision, outcome: ActOutcome, trigger: Trigger, policy: Policy
) -> Report:
    """The status after act, the transition events to post and the failure to raise."""
    uid = obs.owner.uid
    applied = {kind_name(o) for o in outcome.objects}
    objects = [o for o in obs.children if kind_name(o) not in applied] + list(outcome.objects)
    workloads = observe_workloads(o for o in objects if is_controlled_by(o, uid))
    spec = decision.spec
    runnable = (
        decision.plan
        if decision.plan is not None and decision.planned.ok and decision.plan.feasible
        else None
    )
    if spec is None:
        schedulable = Check("Unknown", kc.NOT_PLANNED, "the spec is invalid")
    else:
        schedulable = check_schedulable(spec, runnable, obs.inventory, unschedulable_pods(obs.pods))
    # Extension point (b): pod and workload failures, surfaced in Ready/Progressing/Stalled.
    pod_failure = policy.classify(obs.pools) if policy.classify is not None else None
    name = obs.owner.name
    names = {
        p.name: (child_name(name, p.name), child_name(name, p.name))
        for p in (decision.plan.pools if decision.plan is not None else ())
    }
    status = build_status(
        generation=obs.generation,
        old_status=obs.stored_status,
        plan=decision.plan,
        planned=decision.planned,
        schedulable=schedulable,
        synced=outcome.check,
        workloads=workloads,
        names=names,
        paused=bool(spec.paused)
        if spec is not None
        else bool((obs.obj.get("spec") or {}).get("paused")),
        vllm_version=vllm_version(spec, decision.plan),
        now=obs.now,
        failure=pod_failure,
    )
    pin_status(status, obs.obj, decision.plan)
    _merge_pool_status(status, decision.scales, obs.stored_status)
    status["conditions"] = autoscaling_conditions(
        status["conditions"],
        [s.checks for s in decision.scales.values() if s.checks],
        generation=obs.generation,
        now=obs.now,
    )
    deleted = [
        Event("Normal", kc.EVENT_POOL_DELETED, f"Deleted {what}: the plan no longer has that pool")
        for what in outcome.deleted
    ]
    events = (*deleted, *transition_events(obs.stored_status, status))
    failure = decide_error(trigger, decision.planned, outcome.check, policy.retry_delay_seconds)
    return Report(status, status_changed(obs.stored_status, status), events, failure)


__all__ = [
    "ActOutcome",
    "ChildDiff",
    "Decision",
    "Failure",
    "ModelConfig",
    "Observation",
    "Policy",
    "PoolRuntime",
    "PoolScale",
    "Report",
    "applied_hash",
    "assess",
    "change_marker",
    "check_multi_node",
    "check_schedulable",
    "cluster_gpus",
    "decide",
    "decide_error",
    "diff_children",
    "format_validation_error",
    "gpu_inventory",
    "needs_replan",
    "observe_workloads",
    "parse_model_config",
    "pinned_plan",
    "skip_resync",
    "status_patch",
    "unschedulable_pods",
]
