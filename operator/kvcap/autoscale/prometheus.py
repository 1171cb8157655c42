"""The Prometheus shell of the autoscaler: one query per signal per tick, for every pod at once.

`fetch(client)` runs the queries in `QUERIES` (each aggregated `by (namespace, pod)`, never one
query per pod or per object) at one evaluation time and returns a `Snapshot`: per (namespace,
pod) the raw values, or the error that stopped it. `pod_sample()` turns one pod's values plus
its readiness into the policy's `PodSample`.

Series are matched to pods by the `namespace` and `pod` labels only, which is what a Prometheus
Operator PodMonitor/ServiceMonitor or a plain `kubernetes_sd_configs` relabeling attaches. Every
selector reads both naming generations and both spellings of the prefix:

* `vllm:kv_cache_usage_perc` (vLLM >= 0.9, PR #18354) before `vllm:gpu_cache_usage_perc`
  (removed by PR #29330); PromQL `or` keeps the left-hand series of a pod that exports both.
* `vllm_...` next to `vllm:...`: a server built with prometheus-client >= 0.23 scraped by a
  Prometheus 2.x is stored with the colon escaped (prometheus/client_python #1177). A
  `metric_relabel_configs` rule `vllm_(.+)` -> `vllm:$1` (docs/autoscaling.md) or Prometheus 3.x
  restores the names; kvcap copes either way.

The PromQL itself is built by the pure `kvcap.autoscale.promql` (re-exported here), which
`kvcap export keda` shares. The queries use `prometheus-api-client`
(`PrometheusConnect.custom_query`), which is blocking: the operator calls `fetch` in a thread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from kvcap.autoscale.policy import NAN, PodSample
from kvcap.autoscale.promql import RATE_WINDOW, build_queries, either

PodKey = tuple[str, str]  # (namespace, pod)

QUERIES = build_queries()


@dataclass(frozen=True)
class PodMetrics:
    """One pod's values from one tick (NaN: no series)."""

    kv_usage: float = NAN
    sample_time: float = NAN
    running: float = NAN
    waiting: float = NAN
    waiting_capacity: float = NAN
    preemption_rate: float = NAN
    prefix_cache_hit_rate: float = NAN
    peak_prompt_token_rate: float = NAN
    peak_generation_token_rate: float = NAN
    kv_capacity_tokens: float = NAN


@dataclass(frozen=True)
class Snapshot:
    """Everything one tick read from one Prometheus."""

    time: float  # the evaluation time of every query (Unix seconds)
    pods: Mapping[PodKey, PodMetrics] = field(default_factory=dict)
    error: str | None = None  # set: the queries failed and `pods` is empty
    queries: int = 0  # queries sent this tick
    seconds: float = 0.0  # wall time of the tick


@dataclass(frozen=True)
class ClientConfig:
    """How to reach one Prometheus."""

    url: str
    token: str | None = None  # bearer token (from the operator's Secret)
    ca_file: str | None = None  # CA bundle for https
    timeout_seconds: float = 5.0


def connect(config: ClientConfig) -> PrometheusConnect:
    headers = {"Authorization": f"Bearer {config.token}"} if config.token else None
    session = requests.Session()
    if config.ca_file:
        session.verify = config.ca_file
    return PrometheusConnect(
        url=config.url.rstrip("/"),
        headers=headers,
        session=session,
        timeout=max(1, math.ceil(config.timeout_seconds)),
        # One quick retry: the next tick retries anyway, and a tick must not stall on backoff.
        retry=Retry(total=1, backoff_factor=0.1, status_forcelist=(502, 503, 504)),
    )


def _float(raw: Any) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return NAN


def _key(metric: Mapping[str, str]) -> PodKey | None:
    ns, pod = metric.get("namespace"), metric.get("pod")
    return (ns, pod) if ns and pod else None


def capacity_tokens(labels: Mapping[str, str]) -> float:
    """KV tokens of one engine from `vllm:cache_config_info` labels: `kv_cache_size_tokens` (PR
    #42206, group-aware for hybrid models), else `num_gpu_blocks` x `block_size` (not exact for
    hybrid models, vLLM #51163), else NaN."""
    tokens = _float(labels.get("kv_cache_size_tokens"))
    if math.isfinite(tokens) and tokens > 0:
        return tokens
    blocks, size = _float(labels.get("num_gpu_blocks")), _float(labels.get("block_size"))
    if math.isfinite(blocks) and math.isfinite(size) and blocks > 0 and size > 0:
        return blocks * size
    return NAN


def parse_results(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[PodKey, PodMetrics]:
    """Distribute the per-signal result vectors to pods (pure; unit-tested with canned JSON)."""
    values: dict[PodKey, dict[str, float]] = {}
    for signal, vector in results.items():
        if signal == "cache_config":
            per_engine: dict[PodKey, dict[str, float]] = {}
            for item in vector:
                key = _key(item.get("metric") or {})
                if key is None:
                    continue
                labels = item.get("metric") or {}
                tokens = capacity_tokens(labels)
                if math.isfinite(tokens):
                    engines = per_engine.setdefault(key, {})
                    engine = str(labels.get("engine", "0"))
                    engines[engine] = max(engines.get(engine, 0.0), tokens)
            for key, engines in per_engine.items():
                values.setdefault(key, {})["kv_capacity_tokens"] = sum(engines.values())
            continue
        for item in vector:
            key = _key(item.get("metric") or {})
            value = item.get("value") or (None, None)
            if key is not None:
                values.setdefault(key, {})[signal] = _float(value[1])
    return {key: PodMetrics(**fields) for key, fields in values.items()}


def fetch(
    client: PrometheusConnect, now: float | None = None, rate_window: str = RATE_WINDOW
) -> Snapshot:
    """Run every query of `build_queries(rate_window)` at one evaluation time. Never raises:
    a failure is in
    `Snapshot.error` (connection refused, timeout, non-2xx, a malformed answer)."""
    started = time.monotonic()
    at = time.time() if now is None else now
    results: dict[str, list[dict[str, Any]]] = {}
    sent = 0
    for signal, promql in build_queries(rate_window).items():
        sent += 1
        try:
            answer = client.custom_query(promql, params={"time": f"{at:.3f}"})
        except (requests.RequestException, PrometheusApiClientException) as err:
            return Snapshot(at, {}, _describe(err), sent, time.monotonic() - started)
        except (ValueError, KeyError, TypeError) as err:  # not Prometheus' JSON
            return Snapshot(at, {}, f"unexpected answer: {err}", sent, time.monotonic() - started)
        if not isinstance(answer, list):
            return Snapshot(at, {}, "unexpected answer: not a vector", sent, 0.0)
        results[signal] = answer
    return Snapshot(at, parse_results(results), None, sent, time.monotonic() - started)


def _describe(err: Exception) -> str:
    text = str(err)
    if isinstance(err, requests.ConnectionError):
        text = "connection failed"
        reason = getattr(err, "args", ())
        if reason:
            text += f" ({str(reason[0])[:200]})"
    elif isinstance(err, requests.Timeout):
        text = "the query timed out"
    return " ".join(text.split())[:500]


def pod_sample(snapshot: Snapshot, namespace: str, pod: str, ready: bool) -> PodSample:
    """The policy's view of one pod: readiness from the API server, values from the snapshot."""
    m = snapshot.pods.get((namespace, pod), PodMetrics())
    return PodSample(
        name=pod,
        ready=ready,
        kv_usage=m.kv_usage,
        kv_capacity_tokens=m.kv_capacity_tokens,
        running=m.running,
        waiting=m.waiting,
        waiting_capacity=m.waiting_capacity,
        preemption_rate=m.preemption_rate,
        prefix_cache_hit_rate=m.prefix_cache_hit_rate,
        peak_prompt_token_rate=m.peak_prompt_token_rate,
        peak_generation_token_rate=m.peak_generation_token_rate,
        sample_time=m.sample_time,
    )


# --- which URLs a ModelDeployment may point the operator at ---

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
CLUSTER_SUFFIXES = (".svc", ".svc.cluster.local")


def url_allowed(url: str, prefixes: Sequence[str] | None) -> str | None:
    """None when `spec.autoscaling.prometheusUrl` may be used, else why not (one sentence).

    `prefixes` None: the default rule, http(s) to a cluster-local Service name
    (`<svc>.<ns>.svc[.cluster.local]`) or to loopback. Otherwise the URL must start with one of
    the prefixes (an empty list forbids per-object URLs). Credentials in URLs are never allowed.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"`spec.autoscaling.prometheusUrl` '{url}' must be an http(s) URL with a host"
    if parts.username or parts.password:
        return "`spec.autoscaling.prometheusUrl` must not carry credentials"
    if prefixes is None:
        host = parts.hostname.lower().rstrip(".")
        if host in LOOPBACK_HOSTS or host.startswith("127.") or host.endswith(CLUSTER_SUFFIXES):
            return None
        return (
            f"`spec.autoscaling.prometheusUrl` '{url}' is not allowed: the operator accepts only "
            f"cluster-local Service names ('*.svc', '*.svc.cluster.local') and loopback unless "
            f"KVCAP_PROMETHEUS_URL_PREFIXES allows more"
        )
    for prefix in prefixes:
        if url.startswith(prefix):
            return None
    allowed = ", ".join(f"'{p}'" for p in prefixes) or "none"
    return (
        f"`spec.autoscaling.prometheusUrl` '{url}' is not allowed by the operator's "
        f"KVCAP_PROMETHEUS_URL_PREFIXES (allowed prefixes: {allowed})"
    )


__all__ = [
    "QUERIES",
    "ClientConfig",
    "PodMetrics",
    "Snapshot",
    "build_queries",
    "capacity_tokens",
    "connect",
    "either",
    "fetch",
    "parse_results",
    "pod_sample",
    "url_allowed",
]
