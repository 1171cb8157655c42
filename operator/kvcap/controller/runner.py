"""`kvcap run`: start the operator (kopf, cluster-wide unless namespaces are given).

With KVCAP_LEADER_ELECTION=Enabled (the Helm chart's default, two replicas), the process first
waits for the coordination.k8s.io Lease (`leader.LeaseElector`), answering its liveness endpoint
meanwhile; only the leader starts kopf. A leader that cannot renew the Lease stops kopf and exits
with code 1 (the kubelet restarts it as a standby); on SIGTERM it releases the Lease so a standby
takes over at once. An operator started before its CRD waits for it (answering liveness too),
and restarts its watches in-process when the CRD is served again after having been gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kopf
from aiohttp import web

from kvcap import GROUP, PLURAL, VERSION
from kvcap.clients.kube import ApiError, Kube
from kvcap.controller.autoscaler import AutoscaleSettingsError, parse_autoscale_settings
from kvcap.controller.leader import LeaseElector
from kvcap.controller.settings import Settings, SettingsError, load_settings

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_logger = logging.getLogger("kvcap")


def run(*, namespaces: list[str] | None, liveness_endpoint: str | None, verbose: bool) -> int:
    """Run the operator until SIGINT/SIGTERM. Returns the process exit code.

    `namespaces` (kopf globs allowed) override KVCAP_NAMESPACES; empty or None with no setting means
    cluster-wide. `liveness_endpoint` (e.g. 'http://0.0.0.0:8080/healthz') overrides
    KVCAP_LIVENESS_ENDPOINT.
    """
    try:
        settings = load_settings()
        lease_namespace = election_namespace(settings) if settings.leader_election else None
        parse_autoscale_settings(os.environ)  # the autoscaling variables, checked up front too
    except (SettingsError, AutoscaleSettingsError) as err:
        print(f"kvcap run: {err}", file=sys.stderr)
        return 2
    watched = list(namespaces or settings.namespaces)
    kopf.configure(verbose=verbose)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    import kvcap.controller.handlers  # noqa: F401  (registers the handlers)
    # What is loaded by now (kopf, the kubernetes client, pydantic models, the catalogs) lives as
    # long as the process and is most of its heap: keep it out of the cyclic GC's full
    # collections, which would otherwise scan it again each time and stall every reconcile.
    gc.collect()
    gc.freeze()

    endpoint = liveness_endpoint or settings.liveness_endpoint
    try:
        return asyncio.run(
            _main(settings, watched=watched, endpoint=endpoint, lease_namespace=lease_namespace)
        )
    except KeyboardInterrupt:
        return 0
    except Exception as err:  # login failure, bad namespace pattern, ...
        _logger.error("The operator stopped: %s", err)
        return 1


def election_namespace(settings: Settings) -> str:
    if settings.leader_election_namespace:
        return settings.leader_election_namespace
    if SERVICE_ACCOUNT_NAMESPACE.exists():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    raise SettingsError(
        "KVCAP_LEADER_ELECTION is Enabled but KVCAP_LEADER_ELECTION_NAMESPACE is not set and the "
        "process does not run in a pod (no service account namespace file)"
    )


async def _main(
    settings: Settings, *, watched: list[str], endpoint: str | None, lease_namespace: str | None
) -> int:
    kube = Kube.from_environment(discovery_ttl=0.0, timeout=max(2.0, settings.lease_seconds / 3))
    elector: LeaseElector | None = None
    try:
        if lease_namespace is not None:
            identity = f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
            elector = LeaseElector(
                kube,
                lease_namespace,
                settings.leader_election_name,
                identity,
                lease_seconds=settings.lease_seconds,
            )
            if not await _waiting(elector.acquire(), endpoint):  # SIGTERM while standing by
                return 0
        if not await _crd_served(kube):
            _logger.info("Waiting for the ModelDeployment CRD (%s) to be served", CRD_API)
            if not await _waiting(_until_crd_served(kube), endpoint):
                return 0
        return await _operate(kube, elector, watched=watched, endpoint=endpoint)
    finally:
        if elector is not None:
            await elector.release()
        await kube.close()


async def _operate(
    kube: Kube, elector: LeaseElector | None, *, watched: list[str], endpoint: str | None
) -> int:
    """Run kopf until a signal (or a lost Lease). kopf resolves its resources when a CRD event
    arrives; if the API server's discovery serves the new resource only a moment later, kopf never
    looks again. So discovery is watched here, and kopf is restarted in-process when the
    ModelDeployment resource comes back after having been gone."""
    runs: dict[str, asyncio.Event] = {}
    lost = asyncio.Event()

    def on_lost() -> None:
        lost.set()
        runs["stop"].set()

    holder = asyncio.create_task(elector.hold(on_lost=on_lost)) if elector is not None else None
    try:
        while True:
            stop, restart = asyncio.Event(), asyncio.Event()
            runs["stop"] = stop
            watchdog = asyncio.create_task(_watch_crd(kube, stop, restart))
            try:
                await kopf.operator(
                    standalone=True,
                    clusterwide=not watched,
                    namespaces=watched,
                    liveness_endpoint=endpoint,
                    stop_flag=stop,
                )
            finally:
                watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watchdog
            if not restart.is_set() or lost.is_set():
                break
            _logger.info("The ModelDeployment CRD is served again: restarting the watches")
    finally:
        if holder is not None:
            holder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holder
    return 1 if lost.is_set() else 0


CRD_API = f"{GROUP}/{VERSION} {PLURAL}"
CRD_POLL_SECONDS = 5.0


async def _crd_served(kube: Kube) -> bool:
    try:
        return await kube.has_resource(GROUP, VERSION, PLURAL)
    except ApiError as err:
        _logger.debug("Discovery of %s failed: %s", CRD_API, err)
        return False


async def _until_crd_served(kube: Kube) -> None:
    while not await _crd_served(kube):
        await asyncio.sleep(CRD_POLL_SECONDS)


async def _crd_uid(kube: Kube) -> str | None:
    """The uid of the ModelDeployment CRD (None if absent or unreadable)."""
    try:
        items, _ = await kube.list_with_version(
            "apiextensions.k8s.io/v1",
            "customresourcedefinitions",
            None,
            fields=f"metadata.name={PLURAL}.{GROUP}",
        )
    except ApiError as err:
        _logger.debug("Could not read the CRD: %s", err)
        return None
    return str(items[0]["metadata"]["uid"]) if items else None


async def _watch_crd(kube: Kube, stop: asyncio.Event, restart: asyncio.Event) -> None:
    """Set `restart` and `stop` once the ModelDeployment CRD was re-created (a new uid) or served
    again after having been gone, and discovery serves it."""
    first = await _crd_uid(kube)
    gone = False
    while True:
        await asyncio.sleep(CRD_POLL_SECONDS)
        uid = await _crd_uid(kube)
        served = await _crd_served(kube)
        if not served and not gone:
            _logger.warning("The ModelDeployment CRD (%s) is not served any more", CRD_API)
        gone = gone or not served or uid is None
        if served and uid is not None and (gone or (first is not None and uid != first)):
            await asyncio.sleep(CRD_POLL_SECONDS)  # let discovery settle
            restart.set()
            stop.set()
            return


async def _waiting(until: Coroutine[Any, Any, None], endpoint: str | None) -> bool:
    """Await `until`, answering liveness probes meanwhile. False on SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopped.set)
    runner = await _serve_health(endpoint)
    try:
        waited = asyncio.create_task(until)
        stop = asyncio.create_task(stopped.wait())
        await asyncio.wait({waited, stop}, return_when=asyncio.FIRST_COMPLETED)
        done = waited.done() and not waited.cancelled() and waited.exception() is None
        for task in (waited, stop):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return done and not stopped.is_set()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        if runner is not None:
            await runner.cleanup()


async def _serve_health(endpoint: str | None) -> web.AppRunner | None:
    """The liveness endpoint of a standby (kopf serves it once this process leads)."""
    if not endpoint:
        return None
    url = urlparse(endpoint)

    async def healthy(_: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    app = web.Application()
    app.router.add_get(url.path or "/", healthy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, url.hostname or "0.0.0.0", url.port or 80).start()
    return runner


__all__ = ["election_namespace", "run"]
