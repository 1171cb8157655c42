"""`kvcap run`: start the operator (kopf, cluster-wide unless namespaces are given).

With KVCAP_LEADER_ELECTION=Enabled (the Helm chart's default, two replicas), the process first
waits for the coordination.k8s.io Lease (`leader.LeaseElector`), answering its liveness endpoint
meanwhile; only the leader starts kopf. A leader that cannot renew the Lease stops kopf and exits
with code 1 (the kubelet restarts it as a standby); on SIGTERM it releases the Lease so a standby
takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import uuid
from pathlib import Path
from urllib.parse import urlparse

import kopf
from aiohttp import web

from kvcap.clients.kube import Kube
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
    elector: LeaseElector | None = None
    kube: Kube | None = None
    if lease_namespace is not None:
        kube = Kube.from_environment(timeout=max(2.0, settings.lease_seconds / 3))
        identity = f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        elector = LeaseElector(
            kube,
            lease_namespace,
            settings.leader_election_name,
            identity,
            lease_seconds=settings.lease_seconds,
        )
        acquired = await _standby(elector, endpoint)
        if not acquired:  # SIGTERM while standing by
            await kube.close()
            return 0
    stop = asyncio.Event()
    holder = None
    if elector is not None:
        holder = asyncio.create_task(elector.hold(on_lost=stop.set))
    try:
        await kopf.operator(
            standalone=True,
            clusterwide=not watched,
            namespaces=watched,
            liveness_endpoint=endpoint,
            stop_flag=stop,
        )
    finally:
        if holder is not None:
            holder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holder
        if elector is not None and kube is not None:
            await elector.release()
            await kube.close()
    return 1 if elector is not None and elector.lost else 0


async def _standby(elector: LeaseElector, endpoint: str | None) -> bool:
    """Wait for the Lease, answering liveness probes meanwhile. False on SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopped.set)
    runner = await _serve_health(endpoint)
    try:
        acquire = asyncio.create_task(elector.acquire())
        stop = asyncio.create_task(stopped.wait())
        await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
        for task in (acquire, stop):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return elector.leader
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
