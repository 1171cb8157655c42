"""The autoscaler's shell: the global metrics tick and each object's slice of it.

Every `KVCAP_AUTOSCALE_INTERVAL_SECONDS` the tick queries each Prometheus in use once per signal
(`kvcap.autoscale.prometheus.build_queries`: ten queries, `... by (namespace, pod)`, covering
every pod of every pool of every ModelDeployment), then queues each ModelDeployment whose
`spec.autoscaling.policy` is not 'Disabled' for a reconcile through the ordinary pipeline.
Reconciles in between (change events, the slow resync) reuse the tick's snapshot: the number of
queries does not grow with the number of objects.

`Autoscaler.metrics()` is what `reconcile.observe` calls (`OperatorContext.metrics`): it matches
the snapshot's (namespace, pod) series to the object's serving pods (by the labels kvcap renders:
`kvcap.io/pool`, `kvcap.io/role: server`) and returns an `ObjectMetrics` for `scaling.scale_pools`.

Settings (environment, read when the operator starts):

| variable | default | meaning |
|---|---|---|
| KVCAP_PROMETHEUS_URL | http://prometheus-operated.monitoring.svc:9090 | default Prometheus |
| KVCAP_PROMETHEUS_TOKEN_FILE | "" | file holding a bearer token (the chart mounts a Secret key) |
| KVCAP_PROMETHEUS_CA_FILE | "" | CA bundle for an https Prometheus |
| KVCAP_PROMETHEUS_URL_PREFIXES | ClusterLocal | allowed `spec.autoscaling.prometheusUrl` (*) |
| KVCAP_PROMETHEUS_TIMEOUT_SECONDS | 5 | timeout of each query |
| KVCAP_PROMETHEUS_RATE_WINDOW | 2m | `rate()` window, `irate()` range (>= 4 scrape intervals) |
| KVCAP_AUTOSCALE_INTERVAL_SECONDS | 15 | the tick |
| KVCAP_AUTOSCALE_STARTUP_SECONDS | 300 | replica start-up time the policy looks ahead by |
| KVCAP_AUTOSCALE_STATUS_REFRESH_SECONDS | 60 | status.pools[] figures: at most this often |
| KVCAP_METRICS_PORT | 8090 | the operator's own metrics (kvcap_pool_*); 'Disabled' turns it off |

(*) 'ClusterLocal': http(s) to `*.svc[.cluster.local]` Service names or loopback; 'None': no
per-object URL; else comma-separated URL prefixes. A user-chosen URL must not turn the operator
into an SSRF tool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from kvcap.api import constants as kc
from kvcap.api.models import ModelDeploymentSpec
from kvcap.autoscale import prometheus as prom
from kvcap.autoscale.policy import PoolState
from kvcap.controller.decide import PoolScale, unschedulable_pods
from kvcap.controller.exporter import OperatorMetrics
from kvcap.controller.render import owner_selector
from kvcap.controller.scaling import (
    REFRESH_SECONDS,
    STARTUP_SECONDS,
    Inventory,
    ObjectMetrics,
    PoolLive,
    scale_pools_with_state,
)
from kvcap.controller.settings import _number as settings_number

_log = logging.getLogger("kvcap.autoscaler")
_WINDOW = re.compile(r"^[0-9]+(ms|s|m|h)$")


class AutoscaleSettingsError(ValueError):
    """An autoscaling environment variable has a value the operator cannot use."""


@dataclass(frozen=True)
class AutoscaleSettings:
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    token_file: str | None = None
    ca_file: str | None = None
    url_prefixes: tuple[str, ...] | None = None  # None: the cluster-local/loopback rule
    timeout_seconds: float = 5.0
    rate_window: str = prom.RATE_WINDOW
    interval_seconds: float = 15.0
    startup_seconds: float = STARTUP_SECONDS
    metrics_port: int | None = 8090  # the operator's own /metrics (None: off)
    refresh_seconds: float = REFRESH_SECONDS  # figures in status.pools[] at most this often


def parse_autoscale_settings(env: Mapping[str, str]) -> AutoscaleSettings:
    """Pure: AutoscaleSettings from environment variables (raises AutoscaleSettingsError)."""

    def number(key: str, default: float, minimum: float) -> float:
        return settings_number(env, key, default, minimum=minimum, error=AutoscaleSettingsError)

    url = env.get("KVCAP_PROMETHEUS_URL", "").strip() or AutoscaleSettings.prometheus_url
    if not re.match(r"^https?://\S+$", url):
        raise AutoscaleSettingsError(f"KVCAP_PROMETHEUS_URL must be an http(s) URL, got '{url}'")
    raw_prefixes = env.get("KVCAP_PROMETHEUS_URL_PREFIXES", "").strip() or "ClusterLocal"
    prefixes: tuple[str, ...] | None
    if raw_prefixes == "ClusterLocal":
        prefixes = None
    elif raw_prefixes == "None":
        prefixes = ()
    else:
        prefixes = tuple(p.strip() for p in raw_prefixes.split(",") if p.strip())
        bad = [p for p in prefixes if not re.match(r"^https?://[^/\s]+", p)]
        if bad:
            raise AutoscaleSettingsError(
                f"KVCAP_PROMETHEUS_URL_PREFIXES must be 'ClusterLocal', 'None' or http(s) URL "
                f"prefixes with a host, got {bad}"
            )
    window = env.get("KVCAP_PROMETHEUS_RATE_WINDOW", "").strip() or prom.RATE_WINDOW
    if not _WINDOW.match(window):
        raise AutoscaleSettingsError(
            f"KVCAP_PROMETHEUS_RATE_WINDOW must be a Prometheus duration like '2m', got '{window}'"
        )
    return AutoscaleSettings(
        prometheus_url=url,
        token_file=env.get("KVCAP_PROMETHEUS_TOKEN_FILE", "").strip() or None,
        ca_file=env.get("KVCAP_PROMETHEUS_CA_FILE", "").strip() or None,
        url_prefixes=prefixes,
        timeout_seconds=number("KVCAP_PROMETHEUS_TIMEOUT_SECONDS", 5.0, 0.1),
        rate_window=window,
        interval_seconds=number("KVCAP_AUTOSCALE_INTERVAL_SECONDS", 15.0, 0.5),
        startup_seconds=number("KVCAP_AUTOSCALE_STARTUP_SECONDS", STARTUP_SECONDS, 0.0),
        metrics_port=_port(env.get("KVCAP_METRICS_PORT", "8090")),
        refresh_seconds=number("KVCAP_AUTOSCALE_STATUS_REFRESH_SECONDS", REFRESH_SECONDS, 0.0),
    )


def _port(raw: str) -> int | None:
    raw = raw.strip()
    if raw in ("", "0", "Disabled"):
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise AutoscaleSettingsError(
            f"KVCAP_METRICS_PORT must be a port (1-65535) or 'Disabled', got '{raw}'"
        )
    return int(raw)


def resolve_url(settings: AutoscaleSettings, spec: ModelDeploymentSpec) -> tuple[str, str | None]:
    """(the Prometheus URL for this object, why it may not be used or None)."""
    override = spec.autoscaling.prometheus_url
    if not override:
        return settings.prometheus_url, None
    return override, prom.url_allowed(override, settings.url_prefixes)


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    for cond in (pod.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def live_pools(
    snapshot: prom.Snapshot,
    namespace: str,
    uid: str,
    children: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
) -> dict[str, PoolLive]:
    """pool -> its workload's replicas and its serving pods joined with their metrics."""
    replicas: dict[str, int] = {}
    for obj in children:
        meta = obj.get("metadata") or {}
        pool = (meta.get("labels") or {}).get(kc.LABEL_POOL)
        owned = any(
            r.get("uid") == uid and r.get("controller") for r in meta.get("ownerReferences") or ()
        )
        if pool and owned and obj.get("kind") in ("Deployment", kc.LEADER_WORKER_SET_API[3]):
            spec_replicas = (obj.get("spec") or {}).get("replicas")
            replicas[pool] = int(spec_replicas) if spec_replicas is not None else 1
    samples: dict[str, list[Any]] = {}
    pods = list(pods)
    unschedulable = {name for name, _ in unschedulable_pods(pods)}
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        pool = labels.get(kc.LABEL_POOL)
        if not pool or labels.get(kc.LABEL_ROLE) != kc.ROLE_SERVER:
            continue
        if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in (
            "Succeeded",
            "Failed",
        ):
            continue
        sample = prom.pod_sample(snapshot, namespace, meta["name"], _pod_ready(pod))
        if meta["name"] in unschedulable:
            sample = replace(sample, unschedulable=True)
        samples.setdefault(pool, []).append(sample)
    return {
        pool: PoolLive(
            replicas.get(pool), tuple(sorted(samples.get(pool, ()), key=lambda s: s.name))
        )
        for pool in sorted(set(replicas) | set(samples))
    }


Key = tuple[str, str]  # (namespace, name)
EnqueueFn = Callable[[Key], None]


class PodSource(Protocol):
    """The shared watch-fed view of children and pods (`runtime.ChildView`), when there is one."""

    def children_of(self, key: Key) -> list[Mapping[str, Any]]: ...
    def pods_of(self, key: Key) -> list[Mapping[str, Any]]: ...


@dataclass
class Autoscaler:
    """Snapshots per Prometheus URL, the objects that use them, and the tick.

    `metrics` is decide's MetricsFn (`OperatorContext.metrics`), `scale` its ScaleFn, `run` the
    tick loop (started with the operator; it queues each autoscaled object for a reconcile)."""

    settings: AutoscaleSettings
    kube: Any = None  # kvcap.clients.kube.Kube: lists pods when there is no shared view
    view: PodSource | None = None
    snapshots: dict[str, prom.Snapshot] = field(default_factory=dict)
    objects: dict[Key, str] = field(default_factory=dict)  # autoscaled (ns, name) -> its URL
    memory: dict[Key, dict[str, PoolState]] = field(default_factory=dict)  # policy state (trend)
    queries_sent: int = 0
    ticks: int = 0
    exporter: OperatorMetrics = field(default_factory=lambda: OperatorMetrics())
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _clients: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_environment(cls, kube: Any = None, view: PodSource | None = None) -> Autoscaler:
        return cls(parse_autoscale_settings(os.environ), kube, view)

    def start_exporter(self, port: int | None = None, host: str = "0.0.0.0") -> int | None:
        """Serve the operator's own metrics (`/metrics`) on `port` (default: the setting; 0: a free
        port). Returns the port, or None when disabled."""
        port = self.settings.metrics_port if port is None else port
        if port is None:
            return None
        self.exporter.queries = lambda: (self.queries_sent, self.ticks)
        try:
            return self.exporter.serve(host, port)
        except OSError as err:  # a busy port must not stop the operator
            _log.warning("Could not serve the operator's metrics on port %s: %s", port, err)
            return None

    @property
    def scale(self) -> Callable[..., Any]:
        """decide's ScaleFn: `scale_pools`, and the outcome recorded for the operator's metrics."""

        def scale(
            spec: ModelDeploymentSpec,
            plan: Any,
            metrics: object | None,
            stored_status: Mapping[str, Any],
            inventory: Inventory | None = None,
        ) -> Mapping[str, PoolScale]:
            outcome = scale_pools_with_state(
                spec,
                plan,
                metrics,
                stored_status,
                inventory,
                startup_seconds=self.settings.startup_seconds,
                refresh_seconds=self.settings.refresh_seconds,
            )
            if isinstance(metrics, ObjectMetrics) and metrics.name:
                key = (metrics.namespace, metrics.name)
                if key in self.objects:  # not forgotten meanwhile
                    self.memory[key] = outcome.states
                self.exporter.record(metrics.namespace, metrics.name, outcome.fresh)
            return outcome.scales

        return scale

    def _client(self, url: str) -> Any:
        client = self._clients.get(url)
        if client is None:
            token = None
            if self.settings.token_file:
                try:
                    with open(self.settings.token_file) as f:
                        token = f.read().strip() or None
                except OSError as err:
                    _log.warning("Could not read the Prometheus token file: %s", err)
            client = prom.connect(
                prom.ClientConfig(
                    url=url,
                    token=token,
                    ca_file=self.settings.ca_file,
                    timeout_seconds=self.settings.timeout_seconds,
                )
            )
            self._clients[url] = client
        return client

    async def snapshot(self, url: str, *, max_age: float | None = None) -> prom.Snapshot:
        """The snapshot of `url`, fetched if older than `max_age` (default: one tick)."""
        max_age = self.settings.interval_seconds if max_age is None else max_age
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:  # concurrent observers of one tick share one fetch
            cached = self.snapshots.get(url)
            if cached is not None and time.time() - cached.time < max_age:
                return cached
            client = self._client(url)
            snap = await asyncio.to_thread(prom.fetch, client, None, self.settings.rate_window)
            self.queries_sent += snap.queries
            if snap.error is not None and (cached is None or cached.error is None):
                _log.warning("Could not query Prometheus at %s: %s", url, snap.error)
            if snap.error is not None:
                self._clients.pop(url, None)  # re-read the token, reconnect next time
            self.snapshots[url] = snap
            return snap

    async def tick(self, enqueue: EnqueueFn, known: Callable[[Key], bool] | None = None) -> None:
        """One global tick: fetch every URL in use once, then queue every autoscaled object.
        `known(key)` False (the object is gone) drops it from the tick and from the metrics."""
        self.ticks += 1
        if known is not None:
            for key in [k for k in self.objects if not known(k)]:
                self.forget(*key)
        for url in sorted(set(self.objects.values())):
            await self.snapshot(url, max_age=0.0)
        for key in sorted(self.objects):
            enqueue(key)

    async def run(self, enqueue: EnqueueFn, known: Callable[[Key], bool] | None = None) -> None:
        """The tick loop, every `interval_seconds`, until cancelled."""
        while True:
            await asyncio.sleep(self.settings.interval_seconds)
            try:
                await self.tick(enqueue, known)
            except Exception:  # never let the loop die
                _log.exception("Autoscaling tick failed")

    def forget(self, namespace: str, name: str) -> None:
        self.objects.pop((namespace, name), None)
        self.memory.pop((namespace, name), None)
        self.exporter.forget(namespace, name)

    async def _pods_and_workloads(
        self, namespace: str, name: str
    ) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
        label = owner_selector(name)
        key = (namespace, label[kc.LABEL_MODEL_DEPLOYMENT])
        if self.view is not None:
            return self.view.children_of(key), self.view.pods_of(key)
        children: list[Mapping[str, Any]] = list(
            await self.kube.list_objects("apps/v1", "deployments", namespace, label)
        )
        pods = list(await self.kube.list_objects("v1", "pods", namespace, label))
        return children, pods

    async def metrics(
        self, obj: Mapping[str, Any], spec: ModelDeploymentSpec
    ) -> ObjectMetrics | None:
        """decide's MetricsFn: this object's slice of the current tick (None when Disabled)."""
        meta = obj.get("metadata") or {}
        key = (meta["namespace"], meta["name"])
        if spec.autoscaling.policy == "Disabled":
            self.forget(*key)
            return None
        url, rejected = resolve_url(self.settings, spec)
        self.objects[key] = url
        memory = self.memory.get(key, {})
        if rejected is not None:
            return ObjectMetrics(
                now=time.time(), error=rejected, namespace=key[0], name=key[1], memory=memory
            )
        snap = await self.snapshot(url)
        children, pods = await self._pods_and_workloads(*key)
        pools = live_pools(snap, key[0], meta["uid"], children, pods)
        return ObjectMetrics(
            now=time.time(),
            error=snap.error,
            pools=pools,
            namespace=key[0],
            name=key[1],
            memory=memory,
        )


__all__ = [
    "AutoscaleSettings",
    "AutoscaleSettingsError",
    "Autoscaler",
    "live_pools",
    "parse_autoscale_settings",
    "resolve_url",
]
