"""The operator's own Prometheus metrics: what the autoscaler decided, per pool.

Served on `KVCAP_METRICS_PORT` (default 8090) at `/metrics`, text format 0.0.4, and read by the
Grafana dashboard the chart ships (helm/kvcap/dashboards/). Labels name the object with
`kvcap_namespace` (not `namespace`: Prometheus attaches the operator pod's own `namespace`
target label), `modeldeployment` and `pool`:

  kvcap_pool_replicas{kind="current"|"desired"}        gauge
  kvcap_pool_kv_tokens{kind="in_use"|"capacity"}       gauge
  kvcap_pool_capacity_waiting_requests                 gauge
  kvcap_pool_preemptions_per_second                    gauge
  kvcap_pool_metrics_available                         gauge, 1 when MetricsAvailable is True
  kvcap_pool_scale_events_total{direction="up"|"down"} counter
  kvcap_prometheus_queries_total, kvcap_autoscaler_ticks_total   counters
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kvcap.api import constants as kc
from kvcap.controller.decide import PoolScale

PoolId = tuple[str, str, str]  # (namespace, ModelDeployment, pool)


def _labels(pool: PoolId, **extra: str) -> str:
    pairs = {"kvcap_namespace": pool[0], "modeldeployment": pool[1], "pool": pool[2], **extra}
    inner = ",".join(f'{k}="{v}"' for k, v in pairs.items())
    return "{" + inner + "}"


@dataclass
class OperatorMetrics:
    """The last decision of every pool, the scale-event counters, and the HTTP endpoint."""

    pools: dict[PoolId, Mapping[str, Any]] = field(default_factory=dict)
    available: dict[PoolId, bool] = field(default_factory=dict)
    events: dict[tuple[PoolId, str], int] = field(default_factory=dict)
    queries: Callable[[], tuple[int, int]] = lambda: (0, 0)
    _last_scale: dict[PoolId, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    def record(self, namespace: str, name: str, scales: Mapping[str, PoolScale]) -> None:
        with self._lock:
            for pool, scale in scales.items():
                key = (namespace, name, pool)
                status = dict(scale.status)
                self.pools[key] = status
                check = scale.checks.get(kc.METRICS_AVAILABLE)
                self.available[key] = check is not None and check.status == "True"
                when = status.get("lastScaleTime")
                if when and self._last_scale.get(key) not in (None, when):
                    current = int(status.get("currentReplicas", 0))
                    desired = int(status.get("desiredReplicas", current))
                    direction = "up" if desired > current else "down"
                    self.events[(key, direction)] = self.events.get((key, direction), 0) + 1
                for direction in ("up", "down"):
                    self.events.setdefault((key, direction), 0)
                if when:
                    self._last_scale[key] = when
                elif key not in self._last_scale:
                    self._last_scale[key] = ""

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            for key in [k for k in self.pools if k[:2] == (namespace, name)]:
                self.pools.pop(key, None)
                self.available.pop(key, None)

    def render(self) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        with self._lock:
            pools = dict(self.pools)
            available = dict(self.available)
            events = dict(self.events)
        family("kvcap_pool_replicas", "gauge", "Replicas of a pool: current and desired.")
        for key, s in sorted(pools.items()):
            for kind, field_name in (
                ("current", "currentReplicas"),
                ("desired", "desiredReplicas"),
            ):
                if field_name in s:
                    out.append(f"kvcap_pool_replicas{_labels(key, kind=kind)} {s[field_name]}")
        family("kvcap_pool_kv_tokens", "gauge", "KV tokens of a pool: in use and capacity.")
        for key, s in sorted(pools.items()):
            for kind, field_name in (("in_use", "kvTokensInUse"), ("capacity", "kvTokensCapacity")):
                if field_name in s:
                    out.append(f"kvcap_pool_kv_tokens{_labels(key, kind=kind)} {s[field_name]}")
        for metric, field_name, help_text in (
            (
                "kvcap_pool_capacity_waiting_requests",
                "capacityWaiting",
                "Requests waiting for KV blocks or batch slots.",
            ),
            (
                "kvcap_pool_preemptions_per_second",
                "preemptionRate",
                "Preemptions per second (KV exhaustion).",
            ),
        ):
            family(metric, "gauge", help_text)
            for key, s in sorted(pools.items()):
                if field_name in s:
                    out.append(f"{metric}{_labels(key)} {s[field_name]}")
        family("kvcap_pool_metrics_available", "gauge", "1 when the pool's metrics are current.")
        for key, ok in sorted(available.items()):
            out.append(f"kvcap_pool_metrics_available{_labels(key)} {1 if ok else 0}")
        family("kvcap_pool_scale_events", "counter", "Replica changes the autoscaler decided.")
        for (key, direction), n in sorted(events.items()):
            out.append(f"kvcap_pool_scale_events_total{_labels(key, direction=direction)} {n}")
        queries, ticks = self.queries()
        family("kvcap_prometheus_queries", "counter", "PromQL queries the autoscaler sent.")
        out.append(f"kvcap_prometheus_queries_total {queries}")
        family("kvcap_autoscaler_ticks", "counter", "Global autoscaling ticks.")
        out.append(f"kvcap_autoscaler_ticks_total {ticks}")
        return "\n".join(out) + "\n"

    def serve(self, host: str, port: int) -> int:
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_response(404)
                    self.end_headers()
                    return
                body = metrics.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, name="kvcap-metrics", daemon=True
        ).start()
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


__all__ = ["OperatorMetrics"]
