"""Level-based reconcile of one ModelDeployment: parse, gather, plan, render, apply, status.

Create, update, resume and the periodic resync all call `reconcile()`, which converges the
children and the status to the same result from whatever state it finds. The top half of this
module is pure (decisions on plain data, unit-tested in tests/unit/test_reconcile_pure.py); the
bottom half does the I/O through `kvcap.clients.kube.Kube`.

Error policy (kopf `errors.rst`): an invalid spec sets CapacityPlanned=False/InvalidSpec and raises
kopf.PermanentError (only on change events; the resync loop skips such objects until the spec
changes); an infeasible plan is reported in status and, on change events, ends in PermanentError
too; transient API failures raise kopf.TemporaryError(delay=settings.retry_delay_seconds).
Nothing a user writes into a spec can crash-loop the operator.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import kopf
from pydantic import ValidationError

from kvcap import GROUP, PLURAL, VERSION
from kvcap.api import constants as kc
from kvcap.api.errors import InvalidModelConfig, KvcapError, ModelNotFound
from kvcap.api.models import ModelDeploymentSpec
from kvcap.capacity import catalog
from kvcap.capacity.configs import parse_config_text
from kvcap.capacity.plan_types import CapacityPlan
from kvcap.capacity.planner import plan_deployment
from kvcap.clients.hfhub import fetch_config
from kvcap.clients.kube import ApiError, Kube, plural_for
from kvcap.controller.conditions import (
    Check,
    Event,
    WorkloadObservation,
    build_status,
    get_condition,
    initial_conditions,
    now_utc,
    status_changed,
    transition_events,
)
from kvcap.controller.render import (
    Features,
    Owner,
    RenderOptions,
    child_key,
    child_name,
    is_multi_node,
    nodes_per_replica,
    owner_selector,
    render_children,
)
from kvcap.controller.settings import Settings

Trigger = Literal["change", "resync"]
Inventory = Mapping[str, Sequence[int]]  # gpu.product label value -> allocatable GPUs of each node
PlanFn = Callable[..., CapacityPlan]
HUB_CACHE_SECONDS = 3600.0  # a fetched config.json is reused this long
HUB_MISS_SECONDS = 300.0  # a definite answer (404, not a config) is not asked again sooner

# =================================================================================================
# Pure decisions
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


def _kind_name(obj: Mapping[str, Any]) -> tuple[str, str]:
    return (obj["kind"], obj["metadata"]["name"])


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
    by_key = {_kind_name(o): o for o in listed}
    apply, lookup, conflicts = [], [], []
    for obj in desired:
        seen = by_key.get(_kind_name(obj))
        if seen is None:
            lookup.append(obj)
        elif is_controlled_by(seen, uid):
            apply.append(obj)
        else:
            conflicts.append(f"{obj['kind']} '{obj['metadata']['name']}'")
    wanted = {_kind_name(o) for o in desired}
    delete = [dict(o) for o in listed if is_controlled_by(o, uid) and _kind_name(o) not in wanted]
    return ChildDiff(tuple(apply), tuple(lookup), tuple(conflicts), tuple(delete))


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
    )


def observe_workloads(objs: Iterable[Mapping[str, Any]]) -> dict[str, WorkloadObservation]:
    """pool name -> observation, for Deployments/LeaderWorkerSets that carry the pool label."""
    out = {}
    for obj in objs:
        if obj.get("kind") not in ("Deployment", kc.LEADER_WORKER_SET_API[3]):
            continue
        pool = ((obj.get("metadata") or {}).get("labels") or {}).get(kc.LABEL_POOL)
        if pool:
            out[pool] = workload_observation(obj)
    return out


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


PERMANENT_REASONS = frozenset(
    {kc.INFEASIBLE, kc.NEEDS_MULTI_NODE, kc.INVALID_MODEL_CONFIG, kc.PLANNER_ERROR}
)
TRANSIENT_REASONS = frozenset({kc.MODEL_CONFIG_UNAVAILABLE, kc.HUB_UNAVAILABLE})


def decide_error(
    trigger: Trigger, planned: Check, synced: Check, retry_delay: float
) -> Exception | None:
    """What the handler raises after the status is written (kopf `errors.rst`): TemporaryError for
    what may heal by itself (the Hub, a Secret still to come), PermanentError on change events for
    what only a spec change can fix (the resync loop never raises those: it just re-checks)."""
    if not planned.ok and planned.reason in TRANSIENT_REASONS:
        return kopf.TemporaryError(planned.message, delay=max(60.0, retry_delay))
    if trigger != "change":
        return None
    if not planned.ok and planned.reason in PERMANENT_REASONS:
        return kopf.PermanentError(f"{planned.reason}: {planned.message}")
    if synced.reason == kc.APPLY_REJECTED:
        return kopf.PermanentError(synced.message)
    return None


def vllm_version(spec: ModelDeploymentSpec, plan: CapacityPlan | None) -> str:
    if plan is not None and plan.extra.get("vllm_version"):
        return str(plan.extra["vllm_version"])[:64]
    return spec.vllm.resolved_version() or ""


def parse_model_config(text: str | None, where: str) -> dict[str, Any]:
    """Parse a config.json held in a ConfigMap key; ValueError with a one-line message."""
    if text is None:
        raise ValueError(f"{where} does not exist")
    try:
        return parse_config_text(text, where)
    except InvalidModelConfig as err:
        raise ValueError(err.message) from None


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


# =================================================================================================
# The imperative shell
# =================================================================================================


@dataclass
class OperatorContext:
    """Long-lived state kept in kopf's memo."""

    kube: Kube
    settings: Settings
    plan_fn: PlanFn | None = None  # tests inject a planner; None: kvcap.capacity.planner.plan_deployment
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    hub_cache: dict[tuple[str, str | None, str], tuple[float, dict[str, Any] | KvcapError]] = field(
        default_factory=dict
    )

    def lock(self, uid: str) -> asyncio.Lock:
        return self.locks.setdefault(uid, asyncio.Lock())


def _transient(err: ApiError, settings: Settings, what: str) -> kopf.TemporaryError:
    return kopf.TemporaryError(f"Could not {what}: {err}", delay=settings.retry_delay_seconds)


async def discover_features(kube: Kube) -> Features:
    lws = await kube.has_resource(*kc.LEADER_WORKER_SET_API[:3])
    monitor = await kube.has_resource(*kc.SERVICE_MONITOR_API[:3])
    pool_api: tuple[str, str] | None = None
    for api in (kc.INFERENCE_POOL_API_V1, kc.INFERENCE_POOL_API_V1ALPHA2):
        if await kube.has_resource(*api[:3]):
            pool_api = (api[0], api[1])
            break
    return Features(service_monitor=monitor, leader_worker_set=lws, inference_pool=pool_api)


async def read_inventory(
    kube: Kube, settings: Settings, resource_name: str, logger: logging.Logger | kopf.Logger
) -> dict[str, list[int]] | None:
    if not settings.node_inventory:
        return None
    try:
        nodes = await kube.list_nodes()
    except ApiError as err:
        if err.status == 403:
            logger.warning(
                "Could not list Nodes (forbidden); planning without the cluster inventory"
            )
            return None
        raise
    return gpu_inventory(nodes, resource_name)


async def load_model_config(
    ctx: OperatorContext, namespace: str, spec: ModelDeploymentSpec
) -> dict[str, Any] | None:
    """config.json from the ConfigMap, else from the Hub if the catalog lacks the model, else None.

    Raises ValueError (bad config.json), LookupError (token Secret missing) or kvcap.api.errors from
    the Hub fetch; the caller maps each onto CapacityPlanned.
    """
    ref = spec.model.config_map_ref
    if ref is not None:
        text = await ctx.kube.read_key("ConfigMap", namespace, ref.name, ref.key)
        return parse_model_config(text, f"ConfigMap '{ref.name}' key '{ref.key}'")

    if catalog.find_model(spec.model.name) is not None:
        return None  # the planner reads the catalog
    token = None
    secret = spec.model.hf_token_secret_ref
    if secret is not None:
        token = await ctx.kube.read_key("Secret", namespace, secret.name, secret.key)
        if token is None:
            raise LookupError(
                f"Secret '{secret.name}' key '{secret.key}' (`spec.model.hfTokenSecretRef`) "
                f"does not exist"
            )
        token = token.strip()
    digest = hashlib.sha256((token or "").encode()).hexdigest()[:16]
    key = (spec.model.name, spec.model.revision, digest)
    cached = ctx.hub_cache.get(key)
    if cached is not None:
        age, value = time.monotonic() - cached[0], cached[1]
        if isinstance(value, KvcapError) and age < HUB_MISS_SECONDS:
            raise value
        if isinstance(value, dict) and age < HUB_CACHE_SECONDS:
            return value
    try:
        config = await asyncio.to_thread(
            fetch_config,
            spec.model.name,
            token=token,
            revision=spec.model.revision,
            endpoint=ctx.settings.hf_endpoint,
        )
    except (ModelNotFound, InvalidModelConfig) as err:  # definite; HubError is retried
        ctx.hub_cache[key] = (time.monotonic(), err)
        raise
    ctx.hub_cache[key] = (time.monotonic(), config)
    return config


async def run_planner(
    ctx: OperatorContext,
    spec: ModelDeploymentSpec,
    config: dict[str, Any] | None,
    gpus: dict[str, int] | None,
) -> tuple[CapacityPlan | None, Check]:
    """Call the planner (in a thread: pure, but may be CPU-heavy) and map its outcome to a Check."""
    plan_fn = ctx.plan_fn or plan_deployment
    try:
        plan = await asyncio.to_thread(plan_fn, spec, config=config, cluster_gpus=gpus)
    except KvcapError as err:
        return None, Check("False", err.reason, err.message)
    except Exception as err:  # a planner bug must not crash-loop the operator
        return None, Check("False", kc.PLANNER_ERROR, f"the planner failed: {err!r}")
    if not plan.feasible:
        return plan, Check("False", kc.INFEASIBLE, f"{plan.reason}: {plan.message}")
    return plan, Check("True", kc.PLAN_FITS, plan.message)


async def list_children(
    kube: Kube, namespace: str, owner_name: str, features: Features
) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = []
    for api_version, plural in desired_features(features):
        listed.extend(
            await kube.list_objects(api_version, plural, namespace, owner_selector(owner_name))
        )
    return listed


@dataclass
class SyncResult:
    check: Check
    objects: list[dict[str, Any]]  # what the API server returned for applied children
    deleted: list[str]


async def sync_children(
    kube: Kube,
    owner: Owner,
    desired: Sequence[dict[str, Any]],
    listed: Sequence[dict[str, Any]],
    logger: logging.Logger | kopf.Logger,
) -> SyncResult:
    diff = diff_children(desired, listed, owner.uid)
    conflicts = list(diff.conflicts)
    to_apply = list(diff.apply)
    versions = {_kind_name(o): o.get("metadata", {}).get("resourceVersion") for o in listed}
    for obj in diff.lookup:
        plural = plural_for(obj["apiVersion"], obj["kind"])
        existing = await kube.get(
            obj["apiVersion"], plural, owner.namespace, obj["metadata"]["name"]
        )
        if existing is None or is_controlled_by(existing, owner.uid):
            to_apply.append(obj)
            if existing is not None:
                versions[_kind_name(obj)] = existing.get("metadata", {}).get("resourceVersion")
        else:
            conflicts.append(f"{obj['kind']} '{obj['metadata']['name']}'")
    objects: list[dict[str, Any]] = []
    rejected: list[str] = []
    order = {_kind_name(o): i for i, o in enumerate(desired)}
    for obj in sorted(to_apply, key=lambda o: order[_kind_name(o)]):
        try:
            result = await kube.apply(obj)
        except ApiError as err:
            if err.transient:
                raise
            rejected.append(f"{obj['kind']} '{obj['metadata']['name']}': {err.message}")
            continue
        objects.append(result)
        before = versions.get(_kind_name(obj))
        if before is None:
            logger.info("Created %s %s", obj["kind"], obj["metadata"]["name"])
        elif before != result.get("metadata", {}).get("resourceVersion"):
            logger.info("Updated %s %s", obj["kind"], obj["metadata"]["name"])
    deleted = []
    for obj in diff.delete:
        meta = obj["metadata"]
        plural = plural_for(obj["apiVersion"], obj["kind"])
        if await kube.delete(
            obj["apiVersion"], plural, owner.namespace, meta["name"], uid=meta["uid"]
        ):
            deleted.append(f"{obj['kind']} '{meta['name']}'")
            logger.info("Deleted %s %s", obj["kind"], meta["name"])
    if rejected:
        check = Check("False", kc.APPLY_REJECTED, "the API server rejected " + "; ".join(rejected))
    elif conflicts:
        check = Check(
            "False",
            kc.CONFLICT,
            f"{', '.join(sorted(conflicts))} already exist(s) without a controller "
            f"ownerReference to this ModelDeployment; delete or rename them",
        )
    else:
        check = Check("True", kc.APPLIED, f"{len(objects)} children applied")
    return SyncResult(check, objects, deleted)


async def _post_events(
    kube: Kube,
    body: Mapping[str, Any],
    events: Sequence[Event],
    logger: logging.Logger | logging.LoggerAdapter[Any] | kopf.Logger,
) -> None:
    for event in events:
        try:
            await kube.post_event(body, type=event.type, reason=event.reason, message=event.message)
        except ApiError as err:  # e.g. the namespace is terminating: never fail a reconcile on it
            logger.debug("Could not post event %s: %s", event.reason, err)


async def reconcile(
    body: kopf.Body,
    *,
    patch: kopf.Patch,
    logger: logging.Logger | kopf.Logger,
    ctx: OperatorContext,
    trigger: Trigger = "change",
) -> None:
    """Converge one ModelDeployment's children and status. Safe to call at any time, any number of
    times, concurrently (serialised per object)."""
    uid = body["metadata"]["uid"]
    async with ctx.lock(uid):
        await _reconcile(body, patch=patch, logger=logger, ctx=ctx, trigger=trigger)


async def _reconcile(
    body: kopf.Body,
    *,
    patch: kopf.Patch,
    logger: logging.Logger | kopf.Logger,
    ctx: OperatorContext,
    trigger: Trigger,
) -> None:
    started = time.monotonic()
    meta = body["metadata"]
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    generation = int(meta.get("generation") or 0)
    owner = Owner(name=name, namespace=namespace, uid=uid)
    settings = ctx.settings
    kube = ctx.kube
    now: datetime = now_utc()
    old_status: dict[str, Any] = dict(body.get("status") or {})
    api_version = f"{GROUP}/{VERSION}"

    if not old_status.get("conditions"):  # first visit
        initial = {"conditions": initial_conditions(generation, now)}
        try:
            await kube.patch_status(api_version, PLURAL, namespace, name, initial)
        except ApiError as err:
            if err.transient:
                raise _transient(err, settings, "write the initial status") from err
            raise
        old_status = {**old_status, **initial}

    async def finish(
        status: dict[str, Any], error: Exception | None, extra: Sequence[Event] = ()
    ) -> None:
        if status_changed(old_status, status):
            patch.status.update(status)
        await _post_events(kube, body, [*extra, *transition_events(old_status, status)], logger)
        elapsed = time.monotonic() - started
        logger.debug(
            "Reconciled ModelDeployment %s/%s in %.3fs (%s)", namespace, name, elapsed, trigger
        )
        if error is not None:
            raise error

    # 1. parse
    try:
        spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
    except ValidationError as err:
        message = format_validation_error(err)
        invalid = Check("False", kc.INVALID_SPEC, message)
        status = build_status(
            generation=generation,
            old_status=old_status,
            plan=None,
            planned=invalid,
            schedulable=Check("Unknown", kc.NOT_PLANNED, "the spec is invalid"),
            synced=Check(
                "Unknown", kc.NOT_PLANNED, "the spec is invalid: children are left as they are"
            ),
            workloads={},
            names={},
            paused=bool((body.get("spec") or {}).get("paused")),
            vllm_version="",
            now=now,
        )
        return await finish(
            status, kopf.PermanentError(f"Invalid spec: {message}") if trigger == "change" else None
        )

    try:
        # 2. gather (I/O)
        features = await discover_features(kube)
        inventory = await read_inventory(kube, settings, spec.gpu.resource_name, logger)
        planned: Check | None = None
        config: dict[str, Any] | None = None
        try:
            config = await load_model_config(ctx, namespace, spec)
        except ValueError as err:
            planned = Check("False", kc.INVALID_MODEL_CONFIG, str(err))
        except LookupError as err:
            planned = Check("False", kc.MODEL_CONFIG_UNAVAILABLE, str(err))
        except ApiError:
            raise
        except Exception as err:  # kvcap.api.errors from the Hub fetch
            reason = getattr(err, "reason", kc.MODEL_CONFIG_UNAVAILABLE)
            planned = Check("False", str(reason), str(getattr(err, "message", err)))

        # 3. plan (pure)
        plan: CapacityPlan | None = None
        if planned is None:
            plan, planned = await run_planner(ctx, spec, config, cluster_gpus(inventory))
            if plan is not None and planned.ok:
                planned = check_multi_node(spec, plan, features) or planned
        runnable = plan if (plan is not None and planned.ok) else None

        # 4. render (pure)
        options = RenderOptions(
            features=features,
            extra_tolerations=settings.extra_tolerations,
            startup_timeout_seconds=settings.startup_timeout_seconds,
            epp_service_suffix=settings.epp_service_suffix,
            epp_port=settings.epp_port,
        )
        desired = render_children(owner, spec, runnable, options) if runnable is not None else []

        # 5. apply (I/O)
        listed = await list_children(kube, namespace, name, features)
        deleted_events: list[Event] = []
        objects: list[dict[str, Any]] = list(listed)
        if spec.paused:
            synced = Check(
                "Unknown", kc.PAUSED, "`spec.paused` is true: children are left as they are"
            )
        elif runnable is None:
            synced = Check(
                "Unknown",
                kc.NOT_PLANNED,
                "no runnable plan: existing children are left as they are",
            )
        else:
            result = await sync_children(kube, owner, desired, listed, logger)
            synced = result.check
            applied = {_kind_name(o) for o in result.objects}
            objects = [o for o in listed if _kind_name(o) not in applied] + result.objects
            deleted_events = [
                Event(
                    "Normal",
                    kc.EVENT_POOL_DELETED,
                    f"Deleted {what}: the plan no longer has that pool",
                )
                for what in result.deleted
            ]

        # 6. observe + status (pure)
        workloads = observe_workloads(o for o in objects if is_controlled_by(o, uid))
        pending: list[tuple[str, str]] = []
        if runnable is not None and any(
            workloads.get(p.name) is None or workloads[p.name].ready_replicas < p.replicas
            for p in runnable.pools
        ):
            pods = await kube.list_objects("v1", "pods", namespace, owner_selector(name))
            pending = unschedulable_pods(pods)
        schedulable = check_schedulable(spec, runnable, inventory, pending)
    except ApiError as err:
        if err.transient:
            raise _transient(
                err, settings, f"reconcile ModelDeployment {namespace}/{name}"
            ) from err
        raise

    names = {
        p.name: (child_name(name, p.name), child_name(name, p.name))
        for p in (plan.pools if plan is not None else ())
    }
    status = build_status(
        generation=generation,
        old_status=old_status,
        plan=plan,
        planned=planned,
        schedulable=schedulable,
        synced=synced,
        workloads=workloads,
        names=names,
        paused=spec.paused,
        vllm_version=vllm_version(spec, plan),
        now=now,
    )
    error = decide_error(trigger, planned, synced, settings.retry_delay_seconds)
    if status_changed(old_status, status):
        logger.info(
            "Reconciled ModelDeployment %s/%s: %s=%s (%s), %s=%s, %d children, %.0f ms",
            namespace,
            name,
            kc.CAPACITY_PLANNED,
            planned.status,
            planned.reason,
            kc.READY,
            (get_condition(status, kc.READY) or {}).get("status"),
            len(desired),
            (time.monotonic() - started) * 1000,
        )
    return await finish(status, error, deleted_events)


async def resync_one(ctx: OperatorContext, namespace: str, name: str) -> None:
    """Reconcile one ModelDeployment read fresh from the API, outside kopf's handler machinery,
    and write its status ourselves (same pipeline; kopf applies `patch` only for its handlers)."""
    kube = ctx.kube
    logger = logging.LoggerAdapter(_resync_logger, {})
    raw = await kube.get(f"{GROUP}/{VERSION}", PLURAL, namespace, name)
    if raw is None or raw.get("metadata", {}).get("deletionTimestamp") or skip_resync(raw):
        return
    patch = kopf.Patch()
    try:
        await reconcile(
            kopf.Body(raw),  # type: ignore[arg-type]
            patch=patch,
            logger=logger,
            ctx=ctx,
            trigger="resync",
        )
    except kopf.TemporaryError as err:
        _resync_logger.debug(
            "Resync of ModelDeployment %s/%s will be retried: %s", namespace, name, err
        )
    except kopf.PermanentError as err:
        _resync_logger.debug("Resync of ModelDeployment %s/%s: %s", namespace, name, err)
    finally:
        status = patch.get("status")
        if status:
            await kube.patch_status(f"{GROUP}/{VERSION}", PLURAL, namespace, name, dict(status))


async def resync_forever(ctx: OperatorContext, index: Mapping[Any, Any]) -> None:
    """Every `resync_seconds`, reconcile every ModelDeployment kopf is watching (the keys of a kopf
    index). This replaces a kopf timer: kopf puts a finalizer on objects with timers, which strands
    them when the operator is gone and when kopf stops watching a terminating namespace; with no
    finalizer, deletion is plain ownerReference garbage collection."""
    limit = asyncio.Semaphore(4)

    async def one(key: tuple[str, str]) -> None:
        async with limit:
            try:
                await resync_one(ctx, *key)
            except ApiError as err:
                _resync_logger.warning("Could not resync ModelDeployment %s/%s: %s", *key, err)
            except Exception:
                _resync_logger.exception("Resync of ModelDeployment %s/%s failed", *key)

    while True:
        await asyncio.sleep(ctx.settings.resync_seconds)
        keys = sorted(key for key in list(index) if isinstance(key, tuple))
        await asyncio.gather(*(one(key) for key in keys))


_resync_logger = logging.getLogger("kvcap.resync")


__all__ = [
    "ChildDiff",
    "OperatorContext",
    "check_multi_node",
    "check_schedulable",
    "child_key",
    "cluster_gpus",
    "diff_children",
    "format_validation_error",
    "gpu_inventory",
    "observe_workloads",
    "parse_model_config",
    "reconcile",
    "skip_resync",
    "unschedulable_pods",
]
