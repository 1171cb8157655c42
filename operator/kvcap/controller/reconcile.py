"""The imperative shell of one reconcile: observe -> decide -> act -> assess -> report.

Create, update, resume and the periodic resync all call `reconcile()`, which converges the
children and the status to the same result from whatever state it finds. The decisions are pure
and live in `kvcap.controller.decide` (its docstring describes the pipeline and its extension
points); this module only does the I/O around them through `kvcap.clients.kube.Kube`:

* `observe()` reads the object, its owned children (and their pods when some are not ready), the
  model config, the GPU inventory and the API features into a `decide.Observation`;
* `decide.decide()` plans and renders (in a worker thread: the planner may be CPU-heavy);
* `act()` applies the desired children and deletes stale owned ones -> `decide.ActOutcome`;
* `decide.assess()` computes the status, the events and the failure -> `decide.Report`;
* `report()` writes the status and posts the events; the failure is raised as a kopf error.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

from kvcap import GROUP, PLURAL, VERSION
from kvcap.api import constants as kc
from kvcap.api.errors import InvalidModelConfig, KvcapError, ModelNotFound
from kvcap.api.models import ModelDeploymentSpec
from kvcap.capacity import catalog
from kvcap.clients.hfhub import fetch_config
from kvcap.clients.kube import ApiError, Kube, plural_for
from kvcap.controller.conditions import (
    Check,
    Event,
    get_condition,
    initial_conditions,
    now_utc,
)
from kvcap.controller.decide import (
    ActOutcome,
    ChildDiff,
    Decision,
    Failure,
    ModelConfig,
    Observation,
    PlanFn,
    Policy,
    Report,
    Trigger,
    assess,
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
    skip_resync,
    unschedulable_pods,
)
from kvcap.controller.render import Features, Owner, RenderOptions, child_key, owner_selector
from kvcap.controller.settings import Settings

HUB_CACHE_SECONDS = 3600.0  # a fetched config.json is reused this long
HUB_MISS_SECONDS = 300.0  # a definite answer (404, not a config) is not asked again sooner

Logger = logging.Logger | logging.LoggerAdapter[Any] | kopf.Logger


@dataclass
class OperatorContext:
    """Long-lived state kept in kopf's memo."""

    kube: Kube
    settings: Settings
    plan_fn: PlanFn | None = None  # tests inject one; None: capacity.planner.plan_deployment
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    hub_cache: dict[tuple[str, str | None, str], tuple[float, dict[str, Any] | KvcapError]] = field(
        default_factory=dict
    )

    def lock(self, uid: str) -> asyncio.Lock:
        return self.locks.setdefault(uid, asyncio.Lock())

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
            plan_fn=self.plan_fn,
            retry_delay_seconds=settings.retry_delay_seconds,
        )


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
    lws = await kube.has_resource(*kc.LEADER_WORKER_SET_API[:3])
    monitor = await kube.has_resource(*kc.SERVICE_MONITOR_API[:3])
    pool_api: tuple[str, str] | None = None
    for api in (kc.INFERENCE_POOL_API_V1, kc.INFERENCE_POOL_API_V1ALPHA2):
        if await kube.has_resource(*api[:3]):
            pool_api = (api[0], api[1])
            break
    return Features(service_monitor=monitor, leader_worker_set=lws, inference_pool=pool_api)


async def read_inventory(
    kube: Kube, settings: Settings, resource_name: str, logger: Logger
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


async def list_children(
    kube: Kube, namespace: str, owner_name: str, features: Features
) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = []
    for api_version, plural in desired_features(features):
        listed.extend(
            await kube.list_objects(api_version, plural, namespace, owner_selector(owner_name))
        )
    return listed


async def observe(ctx: OperatorContext, obj: Mapping[str, Any], logger: Logger) -> Observation:
    """Read everything decide needs. Raises ApiError on API failures."""
    kube, settings = ctx.kube, ctx.settings
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    now = now_utc()
    spec, _ = parse_spec(obj)
    if spec is None:  # nothing to read: decide reports the invalid spec
        return Observation(obj, Features(), None, ModelConfig(), (), (), now)
    features = await discover_features(kube)
    inventory = await read_inventory(kube, settings, spec.gpu.resource_name, logger)
    # A pinned plan needs no model config: the Hub and ConfigMaps are read only to re-plan.
    model_config = (
        await read_model_config(ctx, namespace, spec) if needs_replan(obj) else ModelConfig()
    )
    children = await list_children(kube, namespace, name, features)
    owned = [c for c in children if is_controlled_by(c, meta["uid"])]
    pods: list[dict[str, Any]] = []
    if pods_needed(owned):
        pods = await kube.list_objects("v1", "pods", namespace, owner_selector(name))
    return Observation(
        obj=obj,
        features=features,
        inventory=inventory,
        model_config=model_config,
        children=tuple(children),
        pods=tuple(pods),
        now=now,
    )


# =================================================================================================
# act
# =================================================================================================


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
    versions = {kind_name(o): o.get("metadata", {}).get("resourceVersion") for o in listed}
    for obj in diff.lookup:
        plural = plural_for(obj["apiVersion"], obj["kind"])
        existing = await kube.get(
            obj["apiVersion"], plural, owner.namespace, obj["metadata"]["name"]
        )
        if existing is None or is_controlled_by(existing, owner.uid):
            to_apply.append(obj)
            if existing is not None:
                versions[kind_name(obj)] = existing.get("metadata", {}).get("resourceVersion")
        else:
            conflicts.append(f"{obj['kind']} '{obj['metadata']['name']}'")
    objects: list[dict[str, Any]] = []
    rejected: list[str] = []
    order = {kind_name(o): i for i, o in enumerate(desired)}
    for obj in sorted(to_apply, key=lambda o: order[kind_name(o)]):
        try:
            result = await kube.apply(obj)
        except ApiError as err:
            if err.transient:
                raise
            rejected.append(f"{obj['kind']} '{obj['metadata']['name']}': {err.message}")
            continue
        objects.append(result)
        before = versions.get(kind_name(obj))
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


async def act(
    ctx: OperatorContext, obs: Observation, decision: Decision, logger: Logger
) -> ActOutcome:
    if decision.mode == "hold":
        assert decision.hold is not None
        return ActOutcome(decision.hold)
    listed = [dict(c) for c in obs.children]
    result = await sync_children(ctx.kube, obs.owner, decision.desired, listed, logger)
    return ActOutcome(result.check, tuple(result.objects), tuple(result.deleted))


# =================================================================================================
# report
# =================================================================================================


async def write_initial_status(ctx: OperatorContext, obj: dict[str, Any]) -> dict[str, Any]:
    """The first visit writes every condition Unknown/Reconciling at once (kstatus: as early as
    the first reconcile). Returns the object with that status."""
    status = dict(obj.get("status") or {})
    if status.get("conditions"):
        return obj
    meta = obj["metadata"]
    initial = {
        "observedGeneration": int(meta.get("generation") or 0),
        "conditions": initial_conditions(int(meta.get("generation") or 0), now_utc()),
    }
    try:
        await ctx.kube.patch_status(
            f"{GROUP}/{VERSION}", PLURAL, meta["namespace"], meta["name"], initial
        )
    except ApiError as err:
        if err.transient:
            raise _transient(err, ctx.settings, "write the initial status") from err
        raise
    return {**obj, "status": {**status, **initial}}


async def report(
    ctx: OperatorContext,
    obs: Observation,
    result: Report,
    patch: kopf.Patch,
    logger: Logger,
) -> None:
    if result.changed:
        patch.status.update(result.status)
    await _post_events(ctx.kube, obs.obj, result.events, logger)


# =================================================================================================
# the pipeline
# =================================================================================================


async def reconcile(
    body: kopf.Body | Mapping[str, Any],
    *,
    patch: kopf.Patch,
    logger: Logger,
    ctx: OperatorContext,
    trigger: Trigger = "change",
) -> None:
    """Converge one ModelDeployment's children and status. Safe to call at any time, any number of
    times, concurrently (serialised per object)."""
    uid = body["metadata"]["uid"]
    async with ctx.lock(uid):
        await _reconcile(body, patch=patch, logger=logger, ctx=ctx, trigger=trigger)


async def _reconcile(
    body: kopf.Body | Mapping[str, Any],
    *,
    patch: kopf.Patch,
    logger: Logger,
    ctx: OperatorContext,
    trigger: Trigger,
) -> None:
    started = time.monotonic()
    obj: dict[str, Any] = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body["metadata"]),
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    obj = await write_initial_status(ctx, obj)
    try:
        obs = await observe(ctx, obj, logger)
        policy = ctx.policy(obs.features)
        decision = await asyncio.to_thread(decide, obs, policy)
        outcome = await act(ctx, obs, decision, logger)
    except ApiError as err:
        if err.transient:
            raise _transient(
                err, ctx.settings, f"reconcile ModelDeployment {namespace}/{name}"
            ) from err
        raise
    result = assess(obs, decision, outcome, trigger, policy)
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
            (time.monotonic() - started) * 1000,
        )
    await report(ctx, obs, result, patch, logger)
    logger.debug(
        "Reconciled ModelDeployment %s/%s in %.3fs (%s)",
        namespace,
        name,
        time.monotonic() - started,
        trigger,
    )
    error = to_kopf_error(result.failure)
    if error is not None:
        raise error


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
    "decide_error",
    "diff_children",
    "format_validation_error",
    "gpu_inventory",
    "kind_name",
    "observe",
    "observe_workloads",
    "parse_model_config",
    "reconcile",
    "skip_resync",
    "unschedulable_pods",
]
