"""The Prometheus shell against a real Prometheus scraping vLLM metric emulators.

Every naming generation and spelling a cluster may hold (current, legacy, the 0.9 transition with
both usage names, colon-escaped `vllm_` names), with and without the newer `cache_config_info`
labels and the waiting-by-reason split, is read by the same ten queries, and the values land on
the right (namespace, pod).
"""

from __future__ import annotations

import math
import socket
import time
import uuid
from typing import Any

import pytest

from kvcap.autoscale import prometheus as shell
from kvcap.autoscale.emulator import Levels

pytest_plugins = ["prometheus_fixture"]
pytestmark = pytest.mark.integration
PrometheusServer = Any  # prometheus_fixture.PrometheusServer (a plugin: not imported here)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

BUSY = Levels(
    kv_usage=0.8,
    running=12,
    waiting_capacity=3,
    waiting_deferred=2,
    preemptions_per_second=0.5,
    prompt_tokens_per_second=1000,
    generation_tokens_per_second=200,
    prefix_hit_rate=0.25,
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


WINDOW = "6s"  # rate() window for 1 s scrapes (the operator's default is 2m for 15-30 s scrapes)


def fetch(prometheus: PrometheusServer) -> shell.Snapshot:
    return shell.fetch(shell.connect(shell.ClientConfig(url=prometheus.url)), rate_window=WINDOW)


def wait_rates(prometheus: PrometheusServer, expected: dict[str, float]) -> None:
    """rate() divides by the whole window: wait until the series are older than the window."""
    query = shell.build_queries(WINDOW)["preemption_rate"]

    def settled(result: list[dict[str, Any]]) -> bool:
        got = {i["metric"]["namespace"]: float(i["value"][1]) for i in result}
        return all(abs(got.get(ns, 0) - v) <= 0.1 * v for ns, v in expected.items())

    prometheus.wait_for(query, settled)


def wait_peaks(prometheus: PrometheusServer, at_least: dict[str, float]) -> None:
    """The token rates are a subquery sampled every 15 s of wall-clock time
    (`max_over_time(irate(...)[10m:15s])`): wait until a sampled step holds two scrapes and the
    peak (which only grows while the rate holds) has reached `at_least` per namespace."""
    query = shell.build_queries(WINDOW)["peak_prompt_token_rate"]

    def reached(result: list[dict[str, Any]]) -> bool:
        got = {i["metric"]["namespace"]: float(i["value"][1]) for i in result}
        return all(ns in got and got[ns] >= low for ns, low in at_least.items())

    prometheus.wait_for(query, reached, timeout=45.0)


@pytest.mark.parametrize(
    ("config", "split", "capacity"),
    [
        ({"naming": "current", "cache_info": "tokens", "kv_cache_size_tokens": 250_000}, True, 250_000),
        ({"naming": "current", "cache_info": "blocks", "num_gpu_blocks": 10_000, "block_size": 16}, True, 160_000),
        ({"naming": "legacy", "cache_info": "blocks", "num_gpu_blocks": 5_000, "block_size": 32}, False, 160_000),
        ({"naming": "transition", "cache_info": "none"}, False, None),
        ({"naming": "current", "escaped": True, "cache_info": "tokens", "kv_cache_size_tokens": 99_000}, True, 99_000),
        ({"naming": "legacy", "escaped": True, "cache_info": "blocks", "num_gpu_blocks": 100, "block_size": 16}, False, 1_600),
    ],
    ids=["current", "current-old-cache-info", "legacy", "transition-no-cache-info", "escaped", "escaped-legacy"],
)
def test_every_generation_reads_the_same(prometheus, emulators, config, split, capacity) -> None:
    ns_a, ns_b = unique("a"), unique("b")  # series outlive their targets for a while
    emulators(ns_a, "pod-0", BUSY, **config)
    emulators(ns_b, "pod-0", Levels(kv_usage=0.1, running=1, preemptions_per_second=0.1), **config)
    wait_rates(prometheus, {ns_a: 0.5, ns_b: 0.1})
    wait_peaks(prometheus, {ns_a: 850.0, ns_b: 0.0})
    snap = fetch(prometheus)
    assert snap.error is None
    assert snap.queries == len(shell.QUERIES) == 10
    a, b = snap.pods[(ns_a, "pod-0")], snap.pods[(ns_b, "pod-0")]
    assert (a.kv_usage, a.running, a.waiting) == (0.8, 12.0, 5.0)
    assert (b.kv_usage, b.running) == (0.1, 1.0)
    if split:
        assert a.waiting_capacity == 3.0
    else:
        assert math.isnan(a.waiting_capacity)
    assert a.preemption_rate == pytest.approx(0.5, rel=0.15)
    assert a.prefix_cache_hit_rate == pytest.approx(0.25, rel=0.05)
    assert math.isnan(b.prefix_cache_hit_rate)  # 0/0: no prompts, no hit rate
    # a steady rate: its peak over the last 10 minutes is the rate itself, give or take the
    # jitter of one 1 s scrape (irate divides one scrape's increase by the scrape timestamps,
    # and the emulator counts to the moment it renders: a late render reads high)
    assert 850 <= a.peak_prompt_token_rate <= 1500
    assert 170 <= a.peak_generation_token_rate <= 300
    assert b.peak_prompt_token_rate == 0.0 and b.peak_generation_token_rate == 0.0
    assert abs(a.sample_time - snap.time) < 30
    if capacity is None:
        assert math.isnan(a.kv_capacity_tokens)
    else:
        assert a.kv_capacity_tokens == capacity
    sample = shell.pod_sample(snap, ns_a, "pod-0", ready=True)
    assert sample.kv_usage == 0.8 and sample.ready
    assert (sample.peak_prompt_token_rate, sample.peak_generation_token_rate) == (
        a.peak_prompt_token_rate,
        a.peak_generation_token_rate,
    )


def test_token_rates_keep_the_peak_after_a_burst(prometheus, emulators) -> None:
    """The compute floor reads each pod's busiest scrape interval of the last 10 minutes: after a
    burst of 5,000 prompt tokens/s falls to 500, the plain rate follows and the peak stays."""
    ns = unique("burst")
    server = emulators(ns, "p", Levels(kv_usage=0.2, prompt_tokens_per_second=5000))

    def at(low: float, high: float) -> Any:
        def check(result: list[dict[str, Any]]) -> bool:
            got = [float(i["value"][1]) for i in result if i["metric"].get("namespace") == ns]
            return bool(got) and low <= got[0] <= high

        return check

    # irate over 1 s scrapes carries one scrape's jitter (see above): bounds, not a tolerance
    queries = shell.build_queries(WINDOW)
    prometheus.wait_for(queries["peak_prompt_token_rate"], at(4250, 1e9), timeout=45.0)
    server.set_levels(Levels(kv_usage=0.2, prompt_tokens_per_second=500))
    prometheus.wait_for(
        f'sum by (namespace) (rate(vllm:prompt_tokens_total{{namespace="{ns}"}}[{WINDOW}]))',
        at(450, 550),
    )
    got = fetch(prometheus).pods[(ns, "p")]
    assert 4250 <= got.peak_prompt_token_rate <= 7500  # the burst's, not today's 500


def test_new_name_wins_when_a_server_exports_both(prometheus, emulators) -> None:
    """A 0.9 server exports kv_cache_usage_perc and the deprecated gpu_cache_usage_perc: one
    value per pod, not an average of duplicates (and not a sum)."""
    ns = unique("t")
    emulators(ns, "p", Levels(kv_usage=0.4), naming="transition")
    prometheus.wait_scraped(ns, "p")
    snap = fetch(prometheus)
    assert snap.pods[(ns, "p")].kv_usage == 0.4
    raw = prometheus.query(f'{{__name__=~"vllm:(kv|gpu)_cache_usage_perc", namespace="{ns}"}}')
    assert len(raw) == 2


def test_one_query_per_signal_covers_many_pods(prometheus, emulators) -> None:
    nss = [unique(f"m{i}") for i in range(3)]
    for i in range(6):
        emulators(nss[i % 3], f"pod-{i}", Levels(kv_usage=i / 10, running=i))
    selector = "|".join(nss)
    prometheus.wait_for(
        f'count(vllm:kv_cache_usage_perc{{namespace=~"{selector}"}})',
        lambda r: bool(r) and float(r[0]["value"][1]) == 6,
    )
    snap = fetch(prometheus)
    assert snap.queries == 10
    ours = {k: round(v.kv_usage, 2) for k, v in snap.pods.items() if k[0] in nss}
    assert ours == {(nss[i % 3], f"pod-{i}"): i / 10 for i in range(6)}


def test_prometheus_down_is_an_error_not_an_exception() -> None:
    port = free_port()
    started = time.monotonic()
    snap = shell.fetch(shell.connect(shell.ClientConfig(url=f"http://127.0.0.1:{port}", timeout_seconds=2)))
    assert snap.error is not None and "connection failed" in snap.error
    assert snap.pods == {} and snap.queries == 1  # stops at the first failure
    assert time.monotonic() - started < 5


def test_bad_query_answer_is_an_error(prometheus) -> None:
    client = shell.connect(shell.ClientConfig(url=prometheus.url + "/nonexistent-prefix"))
    snap = shell.fetch(client)
    assert snap.error is not None and "404" in snap.error
