"""The imperative shell: observe -> decide -> act -> assess -> report, and the controller loop.

Every reconcile of a ModelDeployment is the same pipeline, whatever started it (a watch event of
the object, of one of its children or pods, a change of the GPU inventory, the periodic resync):

* `observe()` reads the object afresh, its owned children (and their pods when some are not
  ready), the model config (only to re-plan), the GPU inventory and the API features into a
  `decide.Observation`; children, pods and Nodes come from shared views (`runtime.py`), not from
  per-object listings;
* `decide.decide()` keeps the pinned plan or plans again, and renders the children;
* `act()` applies what changed (children whose applied-hash and generation are as we left them
  are skipped) and deletes stale owned children -> `decide.ActOutcome`;
* `decide.assess()` computes the status, the events and the failure -> `decide.Report`;
* the status is written under the object's lock with a resourceVersion precondition (so a status
  computed from an older generation never lands over a newer one: observedGeneration never goes
  backwards), then the transition events are posted.

`track()`, `child_changed()` and `inventory_changed()` turn watch events into keys of a
deduplicating `WorkQueue`; `work()` workers (a fixed number) drain it, `resync_forever()` queues
everything every few minutes. Decisions are pure and live in `kvcap.controller.decide` (its
docstring lists the extension points for the autoscaler and the pod-failure classifier).

Error policy (kopf `errors.rst`): an invalid spec sets CapacityPlanned=False/InvalidSpec and is a
permanent failure on change (the resync skips it until the spec changes); an infeasible plan is
reported in status; transient API failures are retried after settings.retry_delay_seconds.
Nothing a user writes into a spec can crash-loop the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

from kvcap import GROUP, PLURAL, VERSION
from kvcap.api import constants as kc
from kvcap.api.errors import InvalidModelConfig, KvcapError, ModelNotFound
from kvcap.api.models import ModelDeploymentSpec
from kvcap.capacity import catalog
from kvcap.capacity.calibration import parse_calibrations
from kvcap.capacity.memory import Calibration
from kvcap.capacity.plan_types import CapacityPlan
from kvcap.capacity.planner import plan_deployment
from kvcap.clients.hfhub import fetch_config
from kvcap.clients.kube import ApiError, Kube, plural_for, recording
from kvcap.controller.conditions import (
    Check,
    Event,
    classify_pools,
    get_condition,
    initial_conditions,
    now_utc,
)
from kvcap.controller.decide import (
    ActOutcome,
    ChildDiff,
    ClassifyFn,
    Decision,
    Failure,
    ModelConfig,
    Observation,
    PlanFn,
    Policy,
    ScaleFn,
    Trigger,
    applied_hash,
    assess,
    change_marker,
    check_multi_node,
    check_schedulable,
    cluster_gpus,
    decide,
    decide_error,
    desired_features,
    diff_children,
    format_validation_error,
    gpu_inventory,
    is_controlled_by,
    kind_name,
    needs_replan,
    observe_workloads,
    parse_model_config,
    parse_spec,
    pods_needed,
    replan_token,
    skip_resync,
    status_patch,
    unschedulable_pods,
)
from kvcap.controller.render import Features, Owner, RenderOptions, child_key, owner_selector
from kvcap.controller.runtime import (
    Backoff,
    ChildView,
    EventPoster,
    Key,
    LatencyWindow,
    LoopLag,
    NodeView,
    Sample,
    TtlLru,
    WorkQueue,
    phase,
    recording_phases,
    stats_line,
)
from kvcap.controller.settings import Settings

HUB_CACHE_SECONDS = 3600.0  # a fetched config.json is reused this long
HUB_MISS_SECONDS = 300.0  # a definite answer (404, not a config) is not asked again sooner
HUB_CACHE_ENTRIES = 256  # distinct (model, revision, token) configs kept
APPLIED_MEMORY_SECONDS = 86400.0
PLAN_CACHE_ENTRIES = 512  # distinct (spec, config, inventory) plans kept
PLAN_CACHE_SECONDS = 3600.0
STATUS_ATTEMPTS = 3  # a status write that conflicts re-reads and reconciles again, this often
# A child's or pod's change queues its owner this long after (a burst of changes: one reconcile)
CHILD_COALESCE_SECONDS = 0.5

Logger = logging.Logger | logging.LoggerAdapter[Any] | kopf.Logger
MetricsFn = Callable[[Mapping[str, Any], ModelDeploymentSpec], Awaitable[object | None]]
_logger = logging.getLogger("kvcap.reconcile")


class StatusConflictError(Exception):
    """The object changed between our read and our status write (409): read and decide again."""


@dataclass
class Tracked:
    """A ModelDeployment the operator has seen: what makes a change worth a reconcile."""

    uid: str
    signature: tuple[Any, ...]
    body: Mapping[str, Any] | None = None  # the newest version seen (watch events, own writes)

    def remember(self, body: Mapping[str, Any]) -> None:
        """Keep `body` (without its managedFields) unless it is of an older generation than the
        one kept."""
        kept = (self.body or {}).get("metadata") or {}
        new = body.get("metadata") or {}
        if int(new.get("generation") or 0) >= int(kept.get("generation") or 0):
            meta = {k: v for k, v in new.items() if k != "managedFields"}
            self.body = {**body, "metadata": meta}


@dataclass
class OperatorContext:
    """Long-lived state kept in kopf's memo: the client, settings, shared views, queue, caches."""

    kube: Kube
    settings: Settings
    plan_fn: PlanFn | None = None  # tests inject one; None: capacity.planner.plan_deployment
    scale: ScaleFn | None = None  # extension point (a), see kvcap.controller.decide
    metrics: MetricsFn | None = None  # extension point (a): a per-object metrics snapshot
    classify: ClassifyFn | None = None  # extension point (b)
    nodes: NodeView | None = None  # None: Nodes are listed per reconcile (tests, no watch)
    children: ChildView | None = None  # None: children are listed per reconcile
    queue: WorkQueue = field(default_factory=WorkQueue)
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    tracked: dict[Key, Tracked] = field(default_factory=dict)
    by_label: dict[Key, Key] = field(default_factory=dict)  # (ns, owner label) -> (ns, name)
    hub_cache: TtlLru[tuple[str, str | None, str], dict[str, Any] | KvcapError] = field(
        default_factory=lambda: TtlLru(HUB_CACHE_ENTRIES)
    )
    hub_backoff: Backoff = field(default_factory=Backoff)
    hub_limit: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))
    applied: TtlLru[str, tuple[str, str]] = field(default_factory=lambda: TtlLru(100_000))
    plans: TtlLru[str, CapacityPlan] = field(default_factory=lambda: TtlLru(PLAN_CACHE_ENTRIES))
    plans_lock: threading.Lock = field(default_factory=threading.Lock)
    planning: dict[str, threading.Event] = field(default_factory=dict)  # keys being planned
    latencies: LatencyWindow = field(default_factory=LatencyWindow)  # the stats window
    # None: a reconcile posts its events itself, before it returns (tests); the operator hands
    # them to a poster (handlers.py), off the reconcile's path
    events: EventPoster | None = None
    # the calibration ConfigMap's entries (settings.calibration_configmap), re-read before re-plans
    calibrations: tuple[Calibration, ...] = ()

    def lock(self, key: Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def forget(self, key: Key) -> None:
        """The object is gone: drop its lock, its queued work and its view entries."""
        lock = self.locks.get(key)
        if lock is not None and not lock.locked():
            del self.locks[key]
        self.tracked.pop(key, None)
        self.by_label.pop((key[0], owner_label(key[1])), None)
        self.queue.forget(key)
        if self.children is not None:
            self.children.forget((key[0], owner_label(key[1])))

    def policy(self, features: Features) -> Policy:
        settings = self.settings
        return Policy(
            render=RenderOptions(
                features=features,
                extra_tolerations=settings.extra_tolerations,
                startup_timeout_seconds=settings.startup_timeout_seconds,
                epp_service_suffix=settings.epp_service_suffix,
                epp_port=settings.epp_port,
            ),
            plan_fn=self.cached_planner(),
            scale=self.scale,
            classify=self.classify or classify_pools,
            retry_delay_seconds=settings.retry_delay_seconds,
        )

    def cached_planner(self) -> PlanFn:
        """The planner, memoized on its inputs (it is pure): objects with the same spec, config
        and inventory are planned once, also when they are reconciled at the same moment (the
        others wait for the one planning). Thread-safe (decide runs in a worker thread)."""
        plan_fn = self.plan_fn or calibrated_plan_fn(self.calibrations) or plan_deployment
        calibrations = f"{id(self.plan_fn)}:{self.calibrations!r}"  # what else plans depend on

        def plan(
            spec: ModelDeploymentSpec,
            *,
            config: dict[str, Any] | None = None,
            cluster_gpus: dict[str, int] | None = None,
        ) -> CapacityPlan:
            key = json.dumps(
                [spec.model_dump(mode="json", by_alias=True), config, cluster_gpus, calibrations],
                sort_keys=True,
                default=str,
            )
            while True:
                with self.plans_lock:
                    hit = self.plans.get(key)
                    if hit is not None:
                        return hit
                    busy = self.planning.get(key)
                    if busy is None:
                        done = self.planning[key] = threading.Event()
                        break
                busy.wait(60.0)  # then look again (planned, or plan it here if that failed)
            try:
                result = plan_fn(spec, config=config, cluster_gpus=cluster_gpus)
                with self.plans_lock:
                    self.plans.put(key, result, PLAN_CACHE_SECONDS)
                return result
            finally:
                with self.plans_lock:
                    self.planning.pop(key, None)
                done.set()

        return plan


def calibrated_plan_fn(calibrations: tuple[Calibration, ...]) -> PlanFn | None:
    """The planner with a team's calibrations applied; None (the plain planner) without any."""
    if not calibrations:
        return None
    from kvcap.capacity.planner import plan_deployment

    return functools.partial(plan_deployment, calibrations=calibrations)


async def refresh_calibrations(ctx: OperatorContext, logger: Logger) -> None:
    """Re-read the calibration ConfigMap. Advisory: a missing or malformed one is logged and leaves
    the planner uncalibrated (malformed: the last good entries stay), never fails a reconcile."""
    ref = ctx.settings.calibration_configmap
    if ref is None:
        return
    namespace, name = ref
    where = f"calibration ConfigMap {namespace}/{name} key '{ctx.settings.calibration_key}'"
    try:
        text = await ctx.kube.read_key("ConfigMap", namespace, name, ctx.settings.calibration_key)
    except ApiError as err:
        logger.warning("Cannot read the %s: %s", where, err)
        return
    if text is None:
        if ctx.calibrations:
            logger.warning("The %s is gone: planning without calibrations", where)
        ctx.calibrations = ()
        return
    try:
        ctx.calibrations = parse_calibrations(text, where=where)
    except KvcapError as err:
        logger.warning("Ignoring the %s: %s", where, err.message)


def owner_label(name: str) -> str:
    return owner_selector(name)[kc.LABEL_MODEL_DEPLOYMENT]


def _transient(err: ApiError, settings: Settings, what: str) -> kopf.TemporaryError:
    return kopf.TemporaryError(f"Could not {what}: {err}", delay=settings.retry_delay_seconds)


def to_kopf_error(failure: Failure | None) -> Exception | None:
    if failure is None:
        return None
    if failure.permanent:
        return kopf.PermanentError(failure.message)
    return kopf.TemporaryError(failure.message, delay=failure.delay)


# =================================================================================================
# observe
# =================================================================================================


async def discover_features(kube: Kube) -> Features:
    """The optional APIs served (cached by the client): asked at once, one round trip."""
    pools = (kc.INFERENCE_POOL_API_V1, kc.INFERENCE_POOL_API_V1ALPHA2)
    lws, monitor, *served = await asyncio.gather(
        kube.has_resource(*kc.LEADER_WORKER_SET_API[:3]),
        kube.has_resource(*kc.SERVICE_MONITOR_API[:3]),
        *(kube.has_resource(*api[:3]) for api in pools),
    )
    pool_api = next(((api[0], api[1]) for api, ok in zip(pools, served, strict=True) if ok), None)
    return Features(service_monitor=monitor, leader_worker_set=lws, inference_pool=pool_api)


async def read_inventory(
    ctx: OperatorContext, resource_name: str, logger: Logger
) -> dict[str, list[int]] | None:
    """The GPU inventory: from the shared Node view when it runs, else one listing."""
    if not ctx.settings.node_inventory:
        return None
    view = ctx.nodes
    if view is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(view.synced.wait(), timeout=30.0)
        if view.synced.is_set():
            return None if view.forbidden else view.inventory(resource_name)
    try:
        nodes = await ctx.kube.list_nodes()
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
        try:
            token = await ctx.kube.read_key("Secret", namespace, secret.name, secret.key)
        except ApiError as err:
            if err.status != 403:
                raise
            raise LookupError(
                f"the operator may not read Secret '{secret.name}' (`spec.model.hfTokenSecretRef`):"
                f" the Helm chart lets it read only the Secret names in `rbac.secretNames`; add "
                f"this name there, or give the model's config.json in a ConfigMap "
                f"(`spec.model.configMapRef`)"
            ) from None
        if token is None:
            raise LookupError(
                f"Secret '{secret.name}' key '{secret.key}' (`spec.model.hfTokenSecretRef`) "
                f"does not exist"
            )
        token = token.strip()
    digest = hashlib.sha256((token or "").encode()).hexdigest()[:16]
    key = (spec.model.name, spec.model.revision, digest)
    cached = ctx.hub_cache.get(key)
    if isinstance(cached, KvcapError):
        raise cached
    if cached is not None:
        return cached
    async with ctx.hub_limit:  # a few fetches at a time, whatever the number of objects
        try:
            config = await asyncio.to_thread(
                fetch_config,
                spec.model.name,
                token=token,
                revision=spec.model.revision,
                endpoint=ctx.settings.hf_endpoint,
            )
        except (ModelNotFound, InvalidModelConfig) as err:  # a definite answer
            ctx.hub_cache.put(key, err, HUB_MISS_SECONDS)
            raise
        except KvcapError as err:  # HubError: unreachable; asked again after 1, 2, 4... min
            ctx.hub_cache.put(key, err, ctx.hub_backoff.next_delay(key))
            raise
    ctx.hub_backoff.reset(key)
    ctx.hub_cache.put(key, config, HUB_CACHE_SECONDS)
    return config


async def read_model_config(
    ctx: OperatorContext, namespace: str, spec: ModelDeploymentSpec
) -> ModelConfig:
    """load_model_config with its failures mapped onto the CapacityPlanned check."""
    try:
        return ModelConfig(config=await load_model_config(ctx, namespace, spec))
    except ValueError as err:
        return ModelConfig(error=Check("False", kc.INVALID_MODEL_CONFIG, str(err)))
    except LookupError as err:
        return ModelConfig(error=Check("False", kc.MODEL_CONFIG_UNAVAILABLE, str(err)))
    except ApiError:
        raise
    except Exception as err:  # kvcap.api.errors from the Hub fetch
        reason = getattr(err, "reason", kc.MODEL_CONFIG_UNAVAILABLE)
        return ModelConfig(error=Check("False", str(reason), str(getattr(err, "message", err))))


CORE_KINDS = frozenset({"deployments", "services", "poddisruptionbudgets"})  # in ChildView


async def list_children(
    ctx: OperatorContext, namespace: str, owner_name: str, features: Features
) -> list[Mapping[str, Any]]:
    """The children labelled as this owner's: the core kinds from the shared view, optional kinds
    (and everything without a view) listed. A child the view has not seen yet is looked up by name
    before it is applied (sync_children), and a stale one it missed is deleted when its watch
    event arrives (which queues the owner), so the view need not be complete."""
    viewed = ctx.children is not None
    listed: list[Mapping[str, Any]] = []
    if ctx.children is not None:
        listed = ctx.children.children_of((namespace, owner_label(owner_name)))
    for api_version, plural in desired_features(features):
        if viewed and plural in CORE_KINDS:
            continue
        listed.extend(
            await ctx.kube.list_objects(api_version, plural, namespace, owner_selector(owner_name))
        )
    return listed


async def read_pods(
    ctx: OperatorContext, namespace: str, owner_name: str, owned: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    if not pods_needed(owned):
        return []
    if ctx.children is not None:
        return ctx.children.pods_of((namespace, owner_label(owner_name)))
    return list(await ctx.kube.list_objects("v1", "pods", namespace, owner_selector(owner_name)))


async def observe(ctx: OperatorContext, obj: Mapping[str, Any], logger: Logger) -> Observation:
    """Read everything decide needs. Raises ApiError on API failures."""
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    now = now_utc()
    spec, _ = parse_spec(obj)
    if spec is None:  # nothing to read: decide reports the invalid spec
        return Observation(obj, Features(), None, ModelConfig(), (), (), now)
    features = await discover_features(ctx.kube)
    inventory = await read_inventory(ctx, spec.gpu.resource_name, logger)
    # A pinned plan needs no model config: the Hub and ConfigMaps are read only to re-plan.
    model_config = (
        await read_model_config(ctx, namespace, spec) if needs_replan(obj) else ModelConfig()
    )
    if needs_replan(obj):
        await refresh_calibrations(ctx, logger)
    children = await list_children(ctx, namespace, name, features)
    owned = [c for c in children if is_controlled_by(c, meta["uid"])]
    pods = await read_pods(ctx, namespace, name, owned)
    metrics: object | None = None
    if ctx.metrics is not None:
        try:
            metrics = await ctx.metrics(obj, spec)
        except Exception as err:  # metrics are advisory: never fail a reconcile on them
            logger.debug("No metrics for %s/%s: %s", namespace, name, err)
    return Observation(
        obj=obj,
        features=features,
        inventory=inventory,
        model_config=model_config,
        children=tuple(children),
        pods=tuple(pods),
        now=now,
        metrics=metrics,
    )


# =================================================================================================
# act
# =================================================================================================


@dataclass
class SyncResult:
    check: Check
    objects: list[dict[str, Any]]  # what the API server returned for applied children
    deleted: list[str]


def unchanged(
    desired: Mapping[str, Any], seen: Mapping[str, Any], applied: TtlLru[str, tuple[str, str]]
) -> bool:
    """The child already is what we would apply, and nobody touched it since we applied it."""
    digest = applied_hash(desired)
    uid = (seen.get("metadata") or {}).get("uid")
    return bool(
        digest
        and uid
        and applied_hash(seen) == digest
        and applied.get(str(uid)) == (digest, change_marker(seen))
    )


async def sync_children(
    kube: Kube,
    owner: Owner,
    desired: Sequence[dict[str, Any]],
    listed: Sequence[Mapping[str, Any]],
    logger: Logger,
    applied: TtlLru[str, tuple[str, str]] | None = None,
) -> SyncResult:
    """Apply what is desired, delete what is ours and stale. With `applied` (what this process
    last applied, by child uid), a child whose applied-hash annotation equals the desired one and
    whose generation has not moved since that apply is left alone (no request at all).

    The children are independent objects, so each goes its own way at once: a child the view has
    not seen is looked up by name (a same-named object without our controller ownerReference is a
    conflict, left alone), then applied. A new ModelDeployment's children cost two round trips,
    whatever their number, not one per child."""
    diff = diff_children(desired, listed, owner.uid)
    conflicts = list(diff.conflicts)
    versions = {kind_name(o): o.get("metadata", {}).get("resourceVersion") for o in listed}
    current = {kind_name(o): o for o in listed}
    order = {kind_name(o): i for i, o in enumerate(desired)}
    results: dict[tuple[str, str], dict[str, Any]] = {}
    rejected: list[str] = []
    failures: list[tuple[int, str]] = []  # transient errors (desired order): reported, retried

    async def one(obj: dict[str, Any], look_up: bool) -> None:
        ident, label = kind_name(obj), f"{obj['kind']} '{obj['metadata']['name']}'"
        seen = current.get(ident)
        try:
            if look_up:
                existing = await kube.get(
                    obj["apiVersion"],
                    plural_for(obj["apiVersion"], obj["kind"]),
                    owner.namespace,
                    obj["metadata"]["name"],
                )
                if existing is not None and not is_controlled_by(existing, owner.uid):
                    conflicts.append(label)
                    return
                if existing is not None:
                    versions[ident] = existing.get("metadata", {}).get("resourceVersion")
            elif applied is not None and seen is not None and unchanged(obj, seen, applied):
                results[ident] = dict(seen)
                return
            result = await kube.apply(obj)
        except ApiError as err:
            if err.transient:  # ChildrenSynced=False/ApplyFailed says which
                failures.append((order[ident], f"{label}: {err}"))
            else:
                rejected.append(f"{label}: {err.message}")
            return
        results[ident] = result
        result_meta = result.get("metadata") or {}
        if applied is not None and result_meta.get("uid"):
            applied.put(
                str(result_meta["uid"]),
                (applied_hash(obj) or "", change_marker(result)),
                APPLIED_MEMORY_SECONDS,
            )
        before = versions.get(ident)
        if before is None:
            logger.info("Created %s %s", obj["kind"], obj["metadata"]["name"])
        elif before != result_meta.get("resourceVersion"):
            logger.info("Updated %s %s", obj["kind"], obj["metadata"]["name"])

    await asyncio.gather(
        *(one(obj, False) for obj in diff.apply), *(one(obj, True) for obj in diff.lookup)
    )
    objects = [results[k] for k in sorted(results, key=order.__getitem__)]
    failures.sort()
    failed: str | None = None
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        failed = failures[0][1] + more
    to_apply = len(results) + len(failures) + len(rejected)

    async def remove(obj: Mapping[str, Any]) -> str | None:
        meta = obj["metadata"]
        plural = plural_for(obj["apiVersion"], obj["kind"])
        if await kube.delete(
            obj["apiVersion"], plural, owner.namespace, meta["name"], uid=meta["uid"]
        ):
            logger.info("Deleted %s %s", obj["kind"], meta["name"])
            return f"{obj['kind']} '{meta['name']}'"
        return None

    # never prune a half-applied set
    removed = await asyncio.gather(*(remove(o) for o in (() if failed else diff.delete)))
    deleted = [d for d in removed if d is not None]
    if failed is not None:
        check = Check(
            "False",
            kc.APPLY_FAILED,
            f"applied {len(objects)} of {to_apply} children, then {failed}; retrying",
        )
    elif rejected:
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


def event_poster(kube: Kube) -> EventPoster:
    """The operator's EventPoster: posts through `kube` (what cannot be posted is logged)."""

    async def post(body: Mapping[str, Any], event: Event) -> None:
        await kube.post_event(body, type=event.type, reason=event.reason, message=event.message)

    return EventPoster(post)


async def act(
    ctx: OperatorContext, obs: Observation, decision: Decision, logger: Logger
) -> ActOutcome:
    if decision.mode == "hold":
        assert decision.hold is not None
        return ActOutcome(decision.hold)
    result = await sync_children(
        ctx.kube, obs.owner, decision.desired, obs.children, logger, ctx.applied
    )
    return ActOutcome(result.check, tuple(result.objects), tuple(result.deleted))


# =================================================================================================
# report
# =================================================================================================


async def write_status(
    ctx: OperatorContext, obj: Mapping[str, Any], status: Mapping[str, Any]
) -> dict[str, Any]:
    """Write `status` only over the object as it was read (resourceVersion precondition), so a
    status computed from an older generation never lands over a newer one."""
    meta = obj["metadata"]
    stored = int((obj.get("status") or {}).get("observedGeneration") or 0)
    if int(status.get("observedGeneration") or 0) < stored:  # never backwards
        raise StatusConflictError(f"stored status is of generation {stored}")
    try:
        return await ctx.kube.patch_status(
            f"{GROUP}/{VERSION}",
            PLURAL,
            meta["namespace"],
            meta["name"],
            status_patch(obj.get("status") or {}, status),
            resource_version=meta.get("resourceVersion"),
        )
    except ApiError as err:
        if err.status == 409:
            raise StatusConflictError(err.message) from err
        if err.status == 404:  # deleted meanwhile
            return dict(obj)
        raise


async def write_initial_status(ctx: OperatorContext, obj: dict[str, Any]) -> dict[str, Any]:
    """The first visit writes every condition Unknown/Reconciling at once (kstatus: as early as
    the first reconcile). Returns the object as the API server now has it."""
    if (obj.get("status") or {}).get("conditions"):
        return obj
    generation = int(obj["metadata"].get("generation") or 0)
    initial = {
        "observedGeneration": generation,
        "conditions": initial_conditions(generation, now_utc()),
    }
    written = await write_status(ctx, obj, {**(obj.get("status") or {}), **initial})
    if written.get("metadata"):
        return written
    return {**obj, "status": {**(obj.get("status") or {}), **initial}}


# =================================================================================================
# the pipeline
# =================================================================================================


async def reconcile(
    body: Mapping[str, Any],
    *,
    logger: Logger,
    ctx: OperatorContext,
    trigger: Trigger = "change",
) -> None:
    """Converge one ModelDeployment (given by any version of its body: it is read again)."""
    meta = body["metadata"]
    await reconcile_key(
        ctx, meta["namespace"], meta["name"], trigger=trigger, logger=logger, uid=meta.get("uid")
    )


async def reconcile_key(
    ctx: OperatorContext,
    namespace: str,
    name: str,
    *,
    trigger: Trigger,
    logger: Logger,
    uid: str | None = None,
) -> None:
    """Converge one ModelDeployment's children and status. Safe to call at any time, any number of
    times, concurrently: the object is read, decided on and its status written under its lock,
    from a fresh read, so an older generation is never applied or reported after a newer one."""
    lock = ctx.lock((namespace, name))
    with phase("lock"):
        await lock.acquire()
    try:
        await _reconcile_locked(ctx, namespace, name, trigger=trigger, logger=logger, uid=uid)
    finally:
        lock.release()


async def _reconcile_locked(
    ctx: OperatorContext,
    namespace: str,
    name: str,
    *,
    trigger: Trigger,
    logger: Logger,
    uid: str | None,
) -> None:
    for attempt in range(STATUS_ATTEMPTS):
        tracked = ctx.tracked.get((namespace, name))
        raw: dict[str, Any] | None
        if attempt == 0 and tracked is not None and tracked.body is not None:
            # The newest version the watch (or our own write) delivered: no request. If it
            # is stale, the status write's resourceVersion precondition fails and the next
            # attempt reads the object from the API server.
            raw = dict(tracked.body)
        else:
            try:
                with phase("read"):
                    raw = await ctx.kube.get(f"{GROUP}/{VERSION}", PLURAL, namespace, name)
            except ApiError as err:
                if err.transient:
                    raise _transient(err, ctx.settings, f"read {namespace}/{name}") from err
                raise
            if raw is not None and tracked is not None:
                tracked.remember(raw)
        if raw is None or (raw.get("metadata") or {}).get("deletionTimestamp"):
            return
        if uid is not None and raw["metadata"].get("uid") != uid:
            return  # a new object of that name: its own events reconcile it
        if trigger == "resync" and skip_resync(raw):
            return
        try:
            await _reconcile(raw, logger=logger, ctx=ctx, trigger=trigger)
            return
        except StatusConflictError as err:
            logger.debug("Status of %s/%s changed under us (%s); again", namespace, name, err)
    raise kopf.TemporaryError(
        f"the status of {namespace}/{name} kept changing",
        delay=ctx.settings.retry_delay_seconds,
    )


async def _reconcile(
    raw: dict[str, Any],
    *,
    logger: Logger,
    ctx: OperatorContext,
    trigger: Trigger,
) -> None:
    started = time.monotonic()
    namespace, name = raw["metadata"]["namespace"], raw["metadata"]["name"]
    obj = raw
    try:
        with phase("observe"):
            obs = await observe(ctx, obj, logger)
        with phase("decide"):
            policy = ctx.policy(obs.features)
            if needs_replan(obj):  # the planner may be CPU-heavy: keep the event loop free
                decision = await asyncio.to_thread(decide, obs, policy)
            else:
                decision = decide(obs, policy)
        with phase("act"):
            outcome = await act(ctx, obs, decision, logger)
        result = assess(obs, decision, outcome, trigger, policy)
        if result.changed:
            with phase("status"):
                written = await write_status(ctx, obj, result.status)
            tracked = ctx.tracked.get((namespace, name))
            if tracked is not None and written.get("metadata"):
                tracked.remember(written)
    except ApiError as err:
        # kstatus: a status for this generation as early as the first visit, even when this
        # reconcile cannot finish (every condition Unknown/Reconciling)
        with contextlib.suppress(ApiError, StatusConflictError):
            await write_initial_status(ctx, raw)
        if err.transient:
            raise _transient(
                err, ctx.settings, f"reconcile ModelDeployment {namespace}/{name}"
            ) from err
        raise
    if ctx.events is not None:
        ctx.events.submit((namespace, name), obs.obj, result.events)
    else:
        with phase("events"):
            await _post_events(ctx.kube, obs.obj, result.events, logger)
    elapsed = time.monotonic() - started
    if result.changed:
        logger.info(
            "Reconciled ModelDeployment %s/%s: %s=%s (%s), %s=%s, %d children, %.0f ms",
            namespace,
            name,
            kc.CAPACITY_PLANNED,
            decision.planned.status,
            decision.planned.reason,
            kc.READY,
            (get_condition(result.status, kc.READY) or {}).get("status"),
            len(decision.desired),
            elapsed * 1000,
        )
    else:
        logger.debug("Reconciled %s/%s in %.3fs (%s)", namespace, name, elapsed, trigger)
    error = to_kopf_error(result.failure)
    if error is not None:
        raise error


# =================================================================================================
# the controller loop: what to reconcile when
# =================================================================================================


def signature(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of a ModelDeployment makes a change worth a reconcile (not its status: we write it)."""
    meta = body.get("metadata") or {}
    return (meta.get("uid"), meta.get("generation"), replan_token(body))


def track(ctx: OperatorContext, event_type: str | None, body: Mapping[str, Any]) -> None:
    """A watch event of a ModelDeployment: queue it when its spec or replan annotation moved (or
    it is new to this process); forget it when it is gone."""
    meta = body.get("metadata") or {}
    key = (str(meta.get("namespace")), str(meta.get("name")))
    if event_type == "DELETED":
        ctx.forget(key)
        return
    if meta.get("deletionTimestamp"):
        return
    sig = signature(body)
    known = ctx.tracked.get(key)
    if known is None or known.signature != sig:
        known = ctx.tracked[key] = Tracked(str(meta.get("uid")), sig)
        ctx.by_label[(key[0], owner_label(key[1]))] = key
        ctx.queue.add(key, "change")
    known.remember(dict(body))


def child_changed(ctx: OperatorContext, event_type: str | None, body: Mapping[str, Any]) -> None:
    """A watch event of an owned child or pod: update the view, queue the owner."""
    if ctx.children is None:
        return
    label_key = ctx.children.update(event_type, body)
    if label_key is None:
        return
    key = ctx.by_label.get(label_key)
    if key is not None:
        ctx.queue.add_soon(key, CHILD_COALESCE_SECONDS)


def inventory_changed(ctx: OperatorContext) -> None:
    """Schedulable of every object may have changed (never their plans: those are pinned)."""
    for key in list(ctx.tracked):
        ctx.queue.add(key, "resync")


async def work(ctx: OperatorContext) -> None:
    """One worker: take a key, reconcile it, retry it later on a temporary failure."""
    while True:
        key, trigger = await ctx.queue.get()
        taken = time.monotonic()  # reconcile latency runs from here (queue wait is apart)
        outcome = "ok"
        with recording() as requests, recording_phases() as phases:
            try:
                await reconcile_key(
                    ctx,
                    *key,
                    trigger=trigger,
                    logger=_logger,
                    uid=ctx.tracked[key].uid if key in ctx.tracked else None,
                )
            except kopf.TemporaryError as err:
                outcome = "retry"
                _logger.debug("%s/%s will be retried: %s", *key, err)
                ctx.queue.add_after(key, float(err.delay or ctx.settings.retry_delay_seconds))
            except kopf.PermanentError as err:
                outcome = "failed"
                _logger.warning("ModelDeployment %s/%s: %s", *key, err)
            except ApiError as err:
                outcome = "retry"
                _logger.warning("Could not reconcile ModelDeployment %s/%s: %s", *key, err)
                ctx.queue.add_after(key, ctx.settings.retry_delay_seconds)
            except Exception:
                outcome = "error"
                _logger.exception("Reconcile of ModelDeployment %s/%s failed", *key)
                ctx.queue.add_after(key, max(60.0, ctx.settings.retry_delay_seconds))
            finally:
                if "observe" not in phases and outcome == "ok":
                    outcome = "skipped"  # gone, or a resync with nothing to check
                ctx.latencies.add(
                    Sample(
                        key,
                        trigger,
                        ctx.queue.waited(key),
                        time.monotonic() - taken,
                        dict(phases),
                        tuple(requests),
                        outcome,
                    )
                )
                ctx.queue.done(key)
            lock = ctx.locks.get(key)
            if key not in ctx.tracked and lock is not None and not lock.locked():
                del ctx.locks[key]  # deleted while it was being reconciled


async def resync_forever(ctx: OperatorContext) -> None:
    """Every `resync_seconds`, queue every ModelDeployment: a level-based safety net (the views
    and the watch events do the day-to-day work). Not a kopf timer: kopf puts a finalizer on
    objects with timers, which strands them when the operator is gone."""
    while True:
        await asyncio.sleep(ctx.settings.resync_seconds)
        for key in list(ctx.tracked):
            ctx.queue.add(key, "resync")


async def report_stats(ctx: OperatorContext, every: float = 60.0) -> None:
    """One log line a minute: reconciles (latency from dequeue to done, skipped ones apart),
    queue wait, API requests, queue depth; and where the slowest reconcile spent its time."""
    kube = ctx.kube
    requests, pool_waits = kube.requests, kube.pool_waits
    lag = LoopLag()
    sampler = asyncio.create_task(lag.run())
    try:
        await _report_stats(ctx, every, lag, requests, pool_waits)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler


async def _report_stats(
    ctx: OperatorContext, every: float, lag: LoopLag, requests: int, pool_waits: int
) -> None:
    kube = ctx.kube
    while True:
        await asyncio.sleep(every)
        samples = [s for s in ctx.latencies.drain() if s.outcome != "skipped"]
        sent, requests = kube.requests - requests, kube.requests
        waits, pool_waits = kube.pool_waits - pool_waits, kube.pool_waits
        peak, kube.peak_in_flight = kube.peak_in_flight, kube.in_flight
        if not samples and not sent:
            continue
        _logger.info(
            "%s",
            stats_line(
                samples, every, sent, len(ctx.tracked), len(ctx.queue), waits, peak, *lag.drain()
            ),
        )
        for slow in sorted(samples, key=lambda s: -s.seconds)[:3]:
            _logger.info("kvcap slowest reconcile: %s", slow.describe())


__all__ = [
    "ChildDiff",
    "OperatorContext",
    "check_multi_node",
    "check_schedulable",
    "child_key",
    "cluster_gpus",
    "decide_error",
    "diff_children",
    "format_validation_error",
    "gpu_inventory",
    "kind_name",
    "observe",
    "observe_workloads",
    "parse_model_config",
    "reconcile",
    "reconcile_key",
    "skip_resync",
    "unschedulable_pods",
]
