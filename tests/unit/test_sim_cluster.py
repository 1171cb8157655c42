"""Whole simulations: the issue's sanity properties, the trace formats, the CLI/JSON contract."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvcap.api.errors import InvalidArgument
from kvcap.api.models import ModelDeploymentSpec, parse_manifest
from kvcap.capacity.configs import load_model
from kvcap.cli import main
from kvcap.sim.run import POLICIES, SimOptions, run
from kvcap.sim.trace import Trace, TraceRequest, cut, read_trace, scale

MANIFEST: dict[str, Any] = {
    "apiVersion": "kvcap.io/v1alpha1", "kind": "ModelDeployment",
    "metadata": {"name": "sim"},
    "spec": {
        "model": {"name": "Qwen/Qwen3-8B"},
        "workload": {"maxContextTokens": 32768, "targetConcurrency": 32,
                     "contextPercentiles": {"p50": 2000, "p90": 6000, "p99": 7000},
                     "longContextThresholdTokens": 8192},
        "gpu": {"products": ["L40S"]},
        "vllm": {"kvCacheMemory": "6Gi", "kvMemoryPolicy": "Bytes"},
        "autoscaling": {"policy": "KVHeadroom", "minReplicas": 1, "maxReplicas": 12,
                        "scaleDownDelaySeconds": 120},
    },
}


def _spec() -> ModelDeploymentSpec:
    return parse_manifest(MANIFEST).spec


def _trace(seed: int = 1, n: int = 900, span: float = 900.0) -> Trace:
    """Bursty synthetic Mooncake-like traffic: a quiet start, a burst, a quiet end."""
    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        t = rng.random() * span
        burst = span / 3 < t < 2 * span / 3
        prompt = int(rng.lognormvariate(7.3, 0.9)) + 1
        if rng.random() < 0.04:
            prompt = rng.randint(9000, 30000)  # the long tail, for the long pool
        if not burst and rng.random() < 0.6:
            continue
        hashes = tuple([0] + [rng.randint(1, 50) for _ in range(prompt // 512)])
        reqs.append(TraceRequest(t, prompt, rng.randint(20, 400), hashes))
    reqs.sort(key=lambda r: r.arrival)
    return Trace("synthetic", "mooncake", tuple(reqs))


@pytest.fixture(scope="module")
def runs() -> tuple[dict[str, Any], list[Any]]:
    spec = _spec()
    return run(spec, _trace(), load_model(spec.model.name), SimOptions())


@pytest.mark.parametrize("policy", POLICIES)
def test_conservation_every_request_is_finished_rejected_or_unfinished(
        runs: tuple[dict[str, Any], list[Any]], policy: str) -> None:
    doc, _ = runs
    m = doc["policies"][policy]
    assert m["finished"] + m["rejected"] + m["unfinished"] == m["requests"] == len(_trace().requests)
    assert m["finished"] > 0


@pytest.mark.parametrize("policy", POLICIES)
def test_kv_blocks_never_exceed_capacity(runs: tuple[dict[str, Any], list[Any]],
                                         policy: str) -> None:
    _, results = runs
    res = next(r for r in results if r.policy == policy)
    for pr in res.pools:
        for rep in (*pr.replicas, *pr.gone):
            assert 0 <= rep.peak_blocks <= rep.cfg.total_blocks
            assert rep.used_blocks == 0  # everything finished and freed its blocks
    for tl in res.timelines:
        assert all(u <= c + 1e-6 for u, c in zip(tl.kv_used, tl.kv_capacity, strict=True))


def test_two_pools_route_by_length(runs: tuple[dict[str, Any], list[Any]]) -> None:
    doc, results = runs
    assert [p["name"] for p in doc["pools"]] == ["default", "long"]
    long_limit = doc["pools"][0]["max_model_len"]
    for r in results[0].requests:
        assert (r.pool == 1) == (r.prompt + r.output > long_limit)


def test_same_seed_same_result() -> None:
    spec = _spec()
    arch = load_model(spec.model.name)
    a, _ = run(spec, scale(_trace(), 1.5, 7), arch, SimOptions(seed=7))
    b, _ = run(spec, scale(_trace(), 1.5, 7), arch, SimOptions(seed=7))
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_higher_rate_never_lowers_static_gpu_hours() -> None:
    spec = _spec()
    arch = load_model(spec.model.name)
    hours = []
    for k in (0.5, 1.0, 1.5, 2.0, 3.0):
        doc, _ = run(spec, scale(_trace(), k, 3), arch, SimOptions(policies=("static",), seed=3))
        hours.append(doc["policies"]["static"]["gpu_hours"])
    assert hours == sorted(hours)
    assert hours[-1] > hours[0]


def test_scale_superposes_nested_copies() -> None:
    tr = _trace()
    two, three = scale(tr, 2, 5), scale(tr, 3, 5)
    assert len(two.requests) == 2 * len(tr.requests)
    assert len(three.requests) == 3 * len(tr.requests)
    assert set(two.requests) <= set(three.requests)
    assert max(r.arrival for r in three.requests) <= tr.duration
    assert len(scale(tr, 0.5, 5).requests) < len(tr.requests)
    assert len(cut(tr, 100).requests) < len(tr.requests)


def test_readers_parse_the_three_formats(tmp_path: Path) -> None:
    azure = tmp_path / "azure.csv"
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                     "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n")
    moon = tmp_path / "m.jsonl"
    moon.write_text('{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]}\n'
                    '{"timestamp": 3000, "input_length": 10, "output_length": 7, "hash_ids": [0]}\n')
    lengths = tmp_path / "l.csv"
    lengths.write_text("num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n"
                       "100,20,120,5\n200,10,210,20\n")
    a = read_trace(azure)
    assert a.format == "azure" and [r.prompt for r in a.requests] == [374, 396]
    assert a.requests[1].arrival == pytest.approx(4.314579, abs=1e-4)
    m = read_trace(moon)
    assert m.format == "mooncake" and m.requests[1].arrival == 3.0
    assert m.requests[0].hashes == (0, 1)
    ln = read_trace(lengths, poisson_rate=4.0, seed=1)
    assert ln.format == "lengths" and ln.requests[0].arrival > 0
    assert read_trace(lengths, poisson_rate=4.0, seed=1) == ln


@pytest.mark.parametrize(("text", "fragment"), [
    ("hello,world\n1,2\n", "not a known trace format"),
    ('{"timestamp": 0, "input_length": "x", "output_length": 1}\n', "whole number"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,1\n", "TIMESTAMP"),
])
def test_bad_traces_get_specific_errors(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(InvalidArgument, match=fragment):
        read_trace(path)


def test_cli_json_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "md.yaml"
    manifest.write_text(yaml.safe_dump(MANIFEST))
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(
        json.dumps({"timestamp": r.arrival * 1000, "input_length": r.prompt,
                    "output_length": r.output, "hash_ids": list(r.hashes)}) + "\n"
        for r in _trace(n=200, span=300).requests))
    code = main(["simulate", "-f", str(manifest), "--trace", str(trace), "--policy", "kvcap",
                 "--policy", "static", "--rate-multiplier", "1.5", "--seed", "2", "-o", "json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["policies"]) == {"kvcap", "static"}
    for m in doc["policies"].values():
        for key in ("gpu_hours", "slo_attainment", "ttft_p99_s", "tpot_p99_s", "preemptions",
                    "rejected", "scale_events"):
            assert key in m
    assert doc["slo"]["tpot_s"] == 0.1 and doc["seed"] == 2


def test_cli_plot_without_matplotlib_says_how_to_install(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    manifest = tmp_path / "md.yaml"
    manifest.write_text(yaml.safe_dump(MANIFEST))
    code = main(["simulate", "-f", str(manifest), "--trace", "/nonexistent", "--plot",
                 str(tmp_path)])
    assert code == 2
    assert "pip install 'kvcap[sim]'" in capsys.readouterr().err


def test_kvcap_adapter_builds_the_scaling_spec_the_operator_builds() -> None:
    """The simulator's kvcap policy feeds `decide` the same ScalingSpec as the operator's
    controller (kvcap/controller/scaling.py), start-up time aside (the simulator passes the pool's
    modelled start-up; the operator a setting)."""
    from dataclasses import replace as dc_replace

    from kvcap.capacity.planner import plan_deployment
    from kvcap.controller.scaling import scaling_spec
    from kvcap.sim.policies import Kvcap
    from kvcap.sim.run import make_policy, pool_setups

    spec = _spec()
    plan = plan_deployment(spec)
    setups = pool_setups(spec, plan, load_model(spec.model.name), _trace(), None)
    policy = make_policy("kvcap", spec, setups, {}, SimOptions())
    assert isinstance(policy, Kvcap)
    for setup, pool in zip(setups, plan.pools, strict=True):
        ours = policy.spec(setup)
        theirs = scaling_spec(spec, pool, spec.gpu.max_total, setup.startup_s)
        # Both price tokens with the same step-time model (a catalog model: the operator
        # resolves its architecture), so the specs are equal, prices included.
        assert ours.prefill_seconds_per_token and ours.decode_seconds_per_token
        assert ours == dc_replace(theirs, startup_seconds=setup.startup_s)
        # the benchmark's "no token prices" row runs the operator's spec for a model it cannot
        # price (a Hub or ConfigMap model)
        unpriced = dc_replace(policy, price_tokens=False).spec(setup)
        assert unpriced == dc_replace(theirs, startup_seconds=setup.startup_s,
                                      prefill_seconds_per_token=None,
                                      decode_seconds_per_token=None)


@pytest.mark.parametrize(("flag", "value"), [
    ("--scrape-interval", "0"), ("--rate-multiplier", "-1"), ("--duration", "0"),
    ("--max-replicas", "0"), ("--slo-tpot", "nan"), ("--startup-seconds", "-5"),
])
def test_cli_rejects_bad_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str,
                                 value: str) -> None:
    manifest = tmp_path / "md.yaml"
    manifest.write_text(yaml.safe_dump(MANIFEST))
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "-f", str(manifest), "--trace", str(manifest), flag, value])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


class _Recorder:
    """A policy that keeps its replicas and records the pool's peak prompt-token rate."""

    name = "recorder"
    interval_s = 15.0

    def __init__(self) -> None:
        self.seen: list[tuple[float, float]] = []

    def initial(self, pool: int, setup: Any) -> int:
        return 1

    def desired(self, pool: int, setup: Any, now: float, replicas: int, pods: list[Any]) -> int:
        if pool == 0:
            self.seen.append((now, sum(p.peak_prompt_token_rate for p in pods)))
        return replicas


def test_policies_see_the_peak_token_rate_of_the_last_ten_minutes() -> None:
    """The token rates are max_over_time(irate(...)[10m:15s]), as the operator queries them: a
    burst stays visible for ten minutes at the rate of its busiest scrape interval, then goes."""
    from kvcap.capacity.planner import plan_deployment
    from kvcap.sim.cluster import simulate
    from kvcap.sim.model import ClusterConfig
    from kvcap.sim.run import pool_setups

    spec = _spec()
    arch = load_model(spec.model.name)
    burst = tuple(TraceRequest(100.0 + i * 0.01, 2000, 10, ()) for i in range(50))
    late = TraceRequest(1190.0, 10, 2, ())  # keeps the simulation going past the window
    trace = Trace("burst", "lengths", (*burst, late), span=1200.0)
    setups = pool_setups(spec, plan_deployment(spec, arch=arch), arch, trace, 30.0)
    rec = _Recorder()
    simulate(trace, setups, rec, ClusterConfig(drain_s=0.0))
    before = [v for t, v in rec.seen if t < 100]
    during = [v for t, v in rec.seen if 135 <= t <= 700]
    after = [v for t, v in rec.seen if 735 <= t < 1190]
    assert before and set(before) == {0.0}
    # 100k prompt tokens within one or two 15 s scrape intervals: the busiest holds at least half
    assert during and len(set(during)) == 1 and during[0] >= 100_000 / 15 / 2
    assert during[0] <= 100_000 / 15 + 1e-6
    assert after and set(after) == {0.0}
