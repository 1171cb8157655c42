"""kopf handlers: decorators only. Every handler feeds the controller loop in `reconcile.py`.

kopf here is the watch machinery: it lists and watches ModelDeployments, the owned children
(Deployments, Services, PodDisruptionBudgets, filtered server-side on
`app.kubernetes.io/managed-by=kvcap`) and their pods, in the watched namespaces, and picks up the
ModelDeployment CRD when it is created after the operator started. Every watch event goes to a
cheap coroutine that updates a shared view and queues the owner; a fixed number of workers
reconcile the queue (`reconcile.work`). Only watch-event handlers are used: kopf writes nothing
onto the objects (no progress annotations, no finalizers), and children go by ownerReference
garbage collection.

The GPU inventory is one list+watch of the GPU-labelled Nodes (`runtime.reflect_nodes`), started
here; a resync queues every object every KVCAP_RESYNC_SECONDS as a safety net.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from kvcap import GROUP, PLURAL, VERSION
from kvcap.api import constants as kc
from kvcap.clients.kube import Kube
from kvcap.controller import reconcile as rc
from kvcap.controller.autoscaler import Autoscaler
from kvcap.controller.runtime import ChildView, NodeView, cancel, reflect_nodes
from kvcap.controller.settings import load_settings

MANAGED = {kc.LABEL_MANAGED_BY: kc.MANAGED_BY}
MANAGED_SELECTOR = f"{kc.LABEL_MANAGED_BY}={kc.MANAGED_BY}"
CHILD_RESOURCES = (
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("", "v1", "pods"),
)


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf settings that are part of kvcap's contract (tested)."""
    settings.persistence.finalizer = kc.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=kc.ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=kc.ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.peering.standalone = True  # one active replica: the Lease elector (leader.py)
    # Events: only kvcap's own transition events (reconcile.py posts them). kopf must not turn
    # log lines into Events (kopf >= 1.41 has the switch; older versions post every INFO line).
    settings.posting.loggers = False
    settings.posting.level = logging.WARNING
    for group, version, plural in CHILD_RESOURCES:  # server-side filtering of the child watches
        key = (group, version, plural) if group else (version, plural)
        settings.watching.label_selectors[key] = MANAGED_SELECTOR
    settings.watching.server_timeout = 300  # watch streams are renewed every 5 min
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_kopf(settings)
    # kopf logs every successful watch-event handler at INFO: one line per child/pod event.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    options = load_settings()  # at startup, not import: the environment is final by now
    ctx = rc.OperatorContext(
        kube=Kube.from_environment(
            discovery_ttl=options.discovery_ttl_seconds, timeout=options.request_timeout_seconds
        ),
        settings=options,
        nodes=NodeView() if options.node_inventory else None,
        children=ChildView(),
    )
    ctx.events = rc.event_poster(ctx.kube)  # events off the reconcile's path
    # Autoscaling (extension point (a)): metrics per object from one Prometheus tick, replicas
    # per pool from kvcap.autoscale.policy; the tick queues every autoscaled object.
    autoscaler = Autoscaler.from_environment(kube=ctx.kube, view=ctx.children)
    ctx.metrics, ctx.scale = autoscaler.metrics, autoscaler.scale
    autoscaler.start_exporter()  # kvcap_pool_* on KVCAP_METRICS_PORT (the Grafana dashboard)
    memo.autoscaler = autoscaler
    memo.ctx = ctx
    tasks = [asyncio.create_task(rc.work(ctx)) for _ in range(options.workers)]
    tasks.append(
        asyncio.create_task(
            autoscaler.run(lambda key: ctx.queue.add(key, "resync"), lambda key: key in ctx.tracked)
        )
    )
    tasks.append(asyncio.create_task(rc.resync_forever(ctx)))
    tasks.append(asyncio.create_task(rc.report_stats(ctx)))
    if ctx.nodes is not None:
        tasks.append(
            asyncio.create_task(
                reflect_nodes(ctx.kube, ctx.nodes, lambda: rc.inventory_changed(ctx))
            )
        )
    memo.tasks = tasks


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    for task in getattr(memo, "tasks", ()):
        await cancel(task)
    ctx = getattr(memo, "ctx", None)
    if ctx is not None:
        if ctx.events is not None:
            await ctx.events.close()  # what is left, before the Lease is released
        await ctx.kube.close()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def model_deployment_event(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    rc.track(memo.ctx, event.get("type"), body)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("", "v1", "services", labels=MANAGED)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=MANAGED)
@kopf.on.event("", "v1", "pods", labels=MANAGED)
async def child_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    rc.child_changed(memo.ctx, event.get("type"), dict(body))
