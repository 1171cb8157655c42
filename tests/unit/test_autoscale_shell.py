"""Narrow unit tests of the autoscaler's shell pieces that are pure functions: the emulator's
text rendering and scenario, the parsing of Prometheus answers (canned JSON), the URL allowlist."""

from __future__ import annotations

import math
import re

import pytest

from kvcap.autoscale import emulator as em
from kvcap.autoscale import prometheus as shell

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def families(text: str) -> dict[str, str]:
    """metric family name -> TYPE, and checks every line is valid text format 0.0.4."""
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif line.startswith("# HELP "):
            continue
        else:
            assert SAMPLE.match(line), line
    return types


@pytest.mark.parametrize(
    ("naming", "escaped", "present", "absent"),
    [
        ("current", False, {"vllm:kv_cache_usage_perc", "vllm:num_requests_waiting_by_reason", "vllm:prefix_cache_hits"}, {"vllm:gpu_cache_usage_perc"}),
        ("legacy", False, {"vllm:gpu_cache_usage_perc", "vllm:gpu_prefix_cache_hits"}, {"vllm:kv_cache_usage_perc", "vllm:num_requests_waiting_by_reason"}),
        ("transition", False, {"vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc"}, {"vllm:num_requests_waiting_by_reason"}),
        ("current", True, {"vllm_kv_cache_usage_perc", "vllm_num_preemptions"}, {"vllm:kv_cache_usage_perc"}),
    ],
)
def test_emulator_generations(naming: str, escaped: bool, present: set[str], absent: set[str]) -> None:
    config = em.ServerConfig(naming=naming, escaped=escaped)  # type: ignore[arg-type]
    text = em.render_metrics(config, em.Levels(kv_usage=0.5), em.Counters())
    types = families(text)
    assert present <= set(types)
    assert not absent & set(types)
    prefix = "vllm_" if escaped else "vllm:"
    assert types[f"{prefix}num_preemptions"] == "counter"
    assert f"{prefix}num_preemptions_total{{" in text
    assert types[f"{prefix}num_requests_running"] == "gauge"


@pytest.mark.parametrize(
    ("cache_info", "labels"),
    [
        ("tokens", {"num_gpu_blocks", "block_size", "kv_cache_size_tokens", "kv_cache_max_concurrency"}),
        ("blocks", {"num_gpu_blocks", "block_size"}),
    ],
)
def test_cache_config_info_labels(cache_info: str, labels: set[str]) -> None:
    config = em.ServerConfig(cache_info=cache_info, num_gpu_blocks=100, block_size=16)  # type: ignore[arg-type]
    text = em.render_metrics(config, em.Levels(), em.Counters())
    line = next(x for x in text.splitlines() if x.startswith("vllm:cache_config_info{"))
    found = set(re.findall(r'(\w+)="', line))
    assert labels <= found and "model_name" not in found and "engine" in found
    if cache_info == "blocks":
        assert "kv_cache_size_tokens" not in found
    assert line.endswith(" 1.0")


def test_no_cache_config_info() -> None:
    text = em.render_metrics(em.ServerConfig(cache_info="none"), em.Levels(), em.Counters())
    assert "cache_config_info" not in text


def test_counters_integrate_rates() -> None:
    counters = em.Counters()
    counters.advance(em.Levels(preemptions_per_second=2, prompt_tokens_per_second=100, prefix_hit_rate=0.5), 10)
    assert (counters.preemptions, counters.prefix_queries, counters.prefix_hits) == (20, 1000, 500)


def test_scenario_steps_carry_over_and_loop() -> None:
    scenario = em.Scenario.from_dict(
        {"loop": True, "steps": [{"at": 0, "kvUsage": 0.1, "running": 2}, {"at": 10, "kvUsage": 0.9}, {"at": 20}]}
    )
    assert scenario.levels_at(5).kv_usage == 0.1
    assert scenario.levels_at(15) == em.Levels(kv_usage=0.9, running=2)  # running carried over
    assert scenario.levels_at(25).kv_usage == 0.1  # looped


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"steps": []}, "non-empty"),
        ({"steps": [{"kvUsage": 1}]}, "`at`"),
        ({"steps": [{"at": 0, "kvUsage": 1.5}]}, "<= 1"),
        ({"steps": [{"at": 0, "bogus": 1}]}, "unknown level 'bogus'"),
        ({"steps": [{"at": 5}, {"at": 1}]}, "increasing"),
    ],
)
def test_scenario_errors(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        em.Scenario.from_dict(data)


def test_emulated_server_clock_and_override() -> None:
    now = [100.0]
    server = em.EmulatedServer(
        scenario=em.Scenario.from_dict({"steps": [{"at": 0, "preemptionsPerSecond": 1}, {"at": 5, "kvUsage": 0.7}]}),
        clock=lambda: now[0],
    )
    try:
        now[0] = 106.0
        assert server.levels().kv_usage == 0.7
        assert "vllm:num_preemptions_total{" in server.metrics_text()
        assert server.counters.preemptions == pytest.approx(6.0)
        server.set_levels(em.Levels(kv_usage=0.99))
        assert server.levels().kv_usage == 0.99
        server.set_levels(None)
        assert server.levels().kv_usage == 0.7
    finally:
        server.stop()


def vec(signal_values: dict[tuple[str, str], str], **extra: str) -> list[dict[str, object]]:
    return [
        {"metric": {"namespace": ns, "pod": pod, **extra}, "value": [1.0, value]}
        for (ns, pod), value in signal_values.items()
    ]


def test_parse_results_distributes_by_namespace_and_pod() -> None:
    results = {
        "kv_usage": vec({("a", "p0"): "0.5", ("b", "p0"): "NaN"}),
        "running": vec({("a", "p0"): "3"}),
        "cache_config": [
            {"metric": {"namespace": "a", "pod": "p0", "engine": "0", "num_gpu_blocks": "100", "block_size": "16"}, "value": [1, "1"]},
            {"metric": {"namespace": "b", "pod": "p0", "engine": "0", "num_gpu_blocks": "100", "block_size": "16", "kv_cache_size_tokens": "1234"}, "value": [1, "1"]},
            {"metric": {"namespace": "b", "pod": "p0", "engine": "1", "kv_cache_size_tokens": "1000"}, "value": [1, "1"]},
            {"metric": {"pod": "orphan"}, "value": [1, "1"]},
        ],
    }
    pods = shell.parse_results(results)
    assert pods[("a", "p0")].kv_usage == 0.5 and pods[("a", "p0")].running == 3
    assert pods[("a", "p0")].kv_capacity_tokens == 1600  # blocks x block size
    assert math.isnan(pods[("b", "p0")].kv_usage)
    assert pods[("b", "p0")].kv_capacity_tokens == 2234  # token label preferred; engines summed
    assert set(pods) == {("a", "p0"), ("b", "p0")}


@pytest.mark.parametrize(
    ("url", "prefixes", "ok"),
    [
        ("http://prometheus-operated.monitoring.svc:9090", None, True),
        ("https://prom.monitoring.svc.cluster.local", None, True),
        ("http://127.0.0.1:9090", None, True),
        ("http://localhost:9090", None, True),
        ("http://169.254.169.254/latest/meta-data", None, False),
        ("http://evil.example.com", None, False),
        ("http://prometheus.monitoring:9090", None, False),  # two labels: could be any domain
        ("http://user:pw@prom.monitoring.svc", None, False),
        ("ftp://prom.monitoring.svc", None, False),
        ("https://thanos.example.com/api", ["https://thanos.example.com/"], True),
        ("https://thanos.example.com.evil.io/", ["https://thanos.example.com/"], False),
        ("http://127.0.0.1:9090", [], False),
    ],
)
def test_url_allowed(url: str, prefixes: list[str] | None, ok: bool) -> None:
    why = shell.url_allowed(url, prefixes)
    assert (why is None) == ok, why
    if why is not None:
        assert "prometheusUrl" in why


def test_queries_aggregate_by_namespace_and_pod_and_read_every_spelling() -> None:
    queries = shell.build_queries("2m")
    assert len(queries) == 10
    for promql in queries.values():
        assert "by (namespace, pod" in promql
    usage = queries["kv_usage"]
    assert usage.index("vllm:kv_cache_usage_perc") < usage.index("vllm:gpu_cache_usage_perc")
    for name in ("vllm_kv_cache_usage_perc", "vllm_gpu_cache_usage_perc"):
        assert name in usage
    assert 'reason="capacity"' in queries["waiting_capacity"]
    # the token rates are peaks: each pod's busiest scrape interval of the last 10 minutes
    for signal, name in (("peak_prompt_token_rate", "prompt_tokens_total"),
                         ("peak_generation_token_rate", "generation_tokens_total")):
        for prefix in ("vllm:", "vllm_"):
            assert f"max_over_time(irate({prefix}{name}[2m])[10m:15s])" in queries[signal]
        assert queries[signal].startswith("sum by (namespace, pod) (")


def test_connect_sends_the_token_and_trusts_the_ca(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    client = shell.connect(shell.ClientConfig(url="https://prom.monitoring.svc:9090/", token="s3cret", ca_file=str(ca)))
    assert client.url == "https://prom.monitoring.svc:9090"
    assert client.headers == {"Authorization": "Bearer s3cret"}
    assert client._session.verify == str(ca)
    plain = shell.connect(shell.ClientConfig(url="http://127.0.0.1:9090"))
    assert plain.headers is None


def test_autoscaler_reads_the_token_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kvcap.controller import autoscaler as asc

    token = tmp_path / "token"
    token.write_text("abc\n")
    a = asc.Autoscaler(asc.parse_autoscale_settings({"KVCAP_PROMETHEUS_TOKEN_FILE": str(token)}))
    assert a._client("http://127.0.0.1:9").headers == {"Authorization": "Bearer abc"}
