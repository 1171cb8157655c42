# ruff: noqa: RUF001  (the policy's messages use the multiplication sign on purpose)
"""Table tests of the pure KV-headroom policy (kvcap.autoscale.policy)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from kvcap.autoscale import policy as p

NAN = float("nan")
CAP = 1_000_000  # planned KV tokens per replica
LEN = p.LengthModel(mean_prompt_tokens=2000, mean_output_tokens=400)


def spec(**kw: object) -> p.ScalingSpec:
    base: dict[str, object] = dict(
        kv_tokens_per_replica=CAP,
        length=LEN,
        min_replicas=1,
        max_replicas=6,
        target_kv_utilization_percent=75,
        scale_down_delay_seconds=300,
        startup_seconds=600,
    )
    base.update(kw)
    return p.ScalingSpec(**base)  # type: ignore[arg-type]


def pod(i: int, usage: float = 0.1, *, ready: bool = True, t: float = 1000.0, **kw: object) -> p.PodSample:
    fields: dict[str, object] = dict(
        name=f"pod-{i}", ready=ready, kv_usage=usage, running=0.0, waiting=0.0, sample_time=t
    )
    fields.update(kw)
    return p.PodSample(**fields)  # type: ignore[arg-type]


def obs(replicas: int, pods: list[p.PodSample], now: float = 1000.0, **kw: object) -> p.PoolObservation:
    return p.PoolObservation(now=now, replicas=replicas, pods=tuple(pods), **kw)  # type: ignore[arg-type]


# Token prices for the compute floor (rule 4): 100 us per prompt token, 1 ms per generated token.
PRICED: dict[str, object] = {"prefill_seconds_per_token": 1e-4, "decode_seconds_per_token": 1e-3}

CASES = [
    # id, spec overrides, observation, state, expected desired, expected action, message fragment
    ("hold-within-target", {}, obs(2, [pod(0, 0.6), pod(1, 0.6)]), p.PoolState(), 2, "hold", "≤ 75 % of 2 × 1.00M"),
    # 2 x 0.9 x 1M = 1.8M in use > 0.75 x 2M -> ceil(1.8/0.75) = 3
    ("up-on-kv-tokens", {}, obs(2, [pod(0, 0.9), pod(1, 0.9)]), p.PoolState(), 3, "up", "KV demand 1.80M tokens > 75 % of 2 × 1.00M → 3 replicas"),
    ("up-capped-by-max", {"max_replicas": 3, "target_kv_utilization_percent": 50}, obs(2, [pod(0, 1.0), pod(1, 1.0)]), p.PoolState(), 3, "up", "wanted 4"),
    # GPU budget 8 with 4 GPUs per replica: at most 2 replicas
    ("gpu-budget-holds", {"gpu_budget": 8, "gpus_per_replica": 4}, obs(2, [pod(0, 1.0), pod(1, 1.0)]), p.PoolState(), 2, "hold", "limit is 2"),
    # the queue: 10 capacity-waiting x (2000 + 400) = 24k tokens, plus the +1 for pressure
    ("up-on-capacity-waiting", {}, obs(2, [pod(0, 0.3, waiting_capacity=10.0, waiting=12.0), pod(1, 0.3)]), p.PoolState(), 3, "up", "10 waiting for capacity"),
    # deferred-only waiting is no pressure when the server splits its queue
    ("deferred-is-not-pressure", {}, obs(2, [pod(0, 0.6, waiting_capacity=0.0, waiting=5.0), pod(1, 0.6)]), p.PoolState(), 2, "hold", "≤"),
    # an old server without the split: num_requests_waiting counts
    ("old-server-waiting-is-pressure", {}, obs(2, [pod(0, 0.6, waiting=5.0), pod(1, 0.6)]), p.PoolState(), 3, "up", "5 waiting for capacity"),
    ("up-on-preemptions", {}, obs(2, [pod(0, 0.5, preemption_rate=0.2), pod(1, 0.5)]), p.PoolState(), 3, "up", "0.2 preemptions/s"),
    # a replica still loading counts as coming capacity: no extra replica for the same pressure
    ("starting-replica-suppresses-cascade", {}, obs(3, [pod(0, 0.6, waiting=3.0), pod(1, 0.6), pod(2, NAN, ready=False)]), p.PoolState(), 3, "hold", "1 replica starting"),
    ("no-ready-replicas-holds", {}, obs(2, [pod(0, NAN, ready=False), pod(1, NAN, ready=False)]), p.PoolState(), 2, "hold", "starting, none Ready"),
    ("prometheus-down-holds", {}, obs(3, [pod(0), pod(1), pod(2)], prometheus_error="connection refused"), p.PoolState(low_since=0.0), 3, "hold", "Prometheus unavailable"),
    ("prometheus-down-still-respects-max", {"max_replicas": 2}, obs(3, [pod(0), pod(1), pod(2)], prometheus_error="timeout"), p.PoolState(), 2, "down", "maxReplicas"),
    ("below-min-goes-to-min", {"min_replicas": 2}, obs(1, [pod(0, 0.1)]), p.PoolState(), 2, "up", "minReplicas"),
    # low demand: the window starts, no step yet
    ("low-starts-window", {}, obs(3, [pod(0), pod(1), pod(2)]), p.PoolState(), 3, "hold", "low for 0s of 300s"),
    ("low-inside-window", {}, obs(3, [pod(0), pod(1), pod(2)]), p.PoolState(low_since=800.0), 3, "hold", "low for 200s of 300s"),
    # window elapsed: one step down even though 1 replica would do
    ("low-window-elapsed-one-step", {}, obs(3, [pod(0), pod(1), pod(2)]), p.PoolState(low_since=700.0), 2, "down", "halfway down from 3"),
    ("never-below-min", {"min_replicas": 3}, obs(3, [pod(0), pod(1), pod(2)]), p.PoolState(low_since=0.0), 3, "hold", "≤"),
    # missing data for a Ready pod: no scale-down, even with the window elapsed
    ("missing-blocks-scale-down", {}, obs(3, [pod(0), pod(1), pod(2, NAN)]), p.PoolState(low_since=0.0), 3, "hold", "MetricsMissing"),
    ("stale-blocks-scale-down", {}, obs(3, [pod(0), pod(1), pod(2, t=500.0)]), p.PoolState(low_since=0.0), 3, "hold", "MetricsStale"),
    # ... but a scale-up the known pods justify still happens
    ("missing-still-scales-up", {}, obs(2, [pod(0, 1.0, running=50.0), pod(1, NAN)]), p.PoolState(), 2, "hold", "≤"),
    ("missing-scales-up-when-known-pods-say-so", {}, obs(2, [pod(0, 1.0, waiting=20.0), pod(1, NAN)]), p.PoolState(), 3, "up", "waiting for capacity"),
    # the servers report half the planned capacity: arithmetic uses the reported figure
    ("observed-capacity-used", {}, obs(2, [pod(0, 0.8, kv_capacity_tokens=500_000.0), pod(1, 0.8, kv_capacity_tokens=500_000.0)]), p.PoolState(), 3, "up", "of 2 × 500k"),
    # max_num_seqs: 2 x 250 running + 0 waiting at 75 % of 256 seqs -> 3 replicas, even with KV low
    ("up-on-sequence-slots", {"max_num_seqs": 256}, obs(2, [pod(0, 0.2, running=250.0), pod(1, 0.2, running=250.0)]), p.PoolState(), 3, "up", "500 requests > 75 % of 2 × 256 seqs"),
    # decode growth: 1000 running x 400/2 = 200k tokens on top of 1.3M in use -> 1.5M <= 1.5M
    ("decode-growth-counts", {}, obs(2, [pod(0, 0.65, running=500.0), pod(1, 0.65, running=500.0)]), p.PoolState(), 2, "hold", "KV demand 1.50M"),
    ("decode-growth-tips-over", {}, obs(2, [pod(0, 0.66, running=500.0), pod(1, 0.66, running=500.0)]), p.PoolState(), 3, "up", "KV demand 1.52M"),
    # minReplicas 0: an idle pool steps down to zero after the window, and zero holds at zero
    ("min-zero-scales-to-zero", {"min_replicas": 0}, obs(1, [pod(0, 0.0)]), p.PoolState(low_since=0.0), 0, "down", "→ 0 replicas"),
    ("min-zero-holds-at-zero", {"min_replicas": 0}, obs(0, []), p.PoolState(), 0, "hold", "no KV or queue signal"),
    # the node inventory of the allowed products holds 3 replicas: scale-up stops there
    ("up-capped-by-inventory", {"inventory_replicas": 3, "inventory_text": "the node inventory (3 x H100 allocatable on Ready nodes)"}, obs(2, [pod(0, 1.0, waiting=200.0), pod(1, 1.0)]), p.PoolState(), 3, "up", "wanted 4; the node inventory (3 x H100 allocatable on Ready nodes) holds 3 replicas"),
    ("inventory-full-holds", {"inventory_replicas": 2}, obs(2, [pod(0, 1.0), pod(1, 1.0)]), p.PoolState(), 2, "hold", "node inventory holds 2 replicas"),
    # the inventory caps growth only: running replicas above it are never removed for it
    ("inventory-never-scales-down", {"inventory_replicas": 1}, obs(3, [pod(0, 0.7), pod(1, 0.7), pod(2, 0.7)]), p.PoolState(), 3, "hold", "≤"),
    # a Pending replica the scheduler cannot place is not capacity that is coming, and no more
    # replicas are added while it waits for a GPU
    ("unschedulable-stops-scale-up", {}, obs(3, [pod(0, 1.0, waiting=300.0), pod(1, 1.0), pod(2, NAN, ready=False, unschedulable=True)]), p.PoolState(), 3, "hold", "1 replica cannot be scheduled"),
    ("unschedulable-only-holds", {}, obs(2, [pod(0, NAN, ready=False, unschedulable=True), pod(1, NAN, ready=False, unschedulable=True)]), p.PoolState(), 2, "hold", "2 replicas unschedulable"),
    # window elapsed, 6 replicas where 1 would do: halfway (6 - floor(5/2) = 4), not one step
    ("low-window-elapsed-halfway", {}, obs(6, [pod(i) for i in range(6)]), p.PoolState(low_since=700.0), 4, "down", "4 replicas (halfway down from 6)"),
    # --- with token prices (rule 4's compute floor and rule 5's priced pressure) ---
    # compute floor on the peak rates (each pod's busiest scrape interval of the last 10 min):
    # 2 x 10k prompt tokens/s x 100 us = 2.0 s of steps per s, at 90 % busy -> ceil(2.22) = 3
    ("up-on-compute-floor", PRICED, obs(2, [pod(0, 0.1, peak_prompt_token_rate=10_000.0), pod(1, 0.1, peak_prompt_token_rate=10_000.0)]), p.PoolState(), 3, "up", "peak token rates need 2.00 replica-seconds/s of steps > 90% busy of 2 replicas → 3 replicas"),
    # decode counts too: + 2 x 500 generated tokens/s x 1 ms = 3.0 s/s -> ceil(3.0 / 0.9) = 4
    ("up-on-compute-floor-with-decode", PRICED, obs(2, [pod(i, 0.1, peak_prompt_token_rate=10_000.0, peak_generation_token_rate=500.0) for i in range(2)]), p.PoolState(), 4, "up", "3.00 replica-seconds/s"),
    # the floor holds replicas KV alone would release: 3 x 8k x 100 us = 2.4 s/s -> 3 at 90 %
    ("compute-floor-blocks-scale-down", PRICED, obs(3, [pod(i, 0.01, peak_prompt_token_rate=8_000.0) for i in range(3)]), p.PoolState(low_since=0.0), 3, "hold", "≤"),
    # ... a lower peak releases them: 3 x 5k x 100 us = 1.5 s/s -> 2 at 90 %
    ("lower-peak-releases-replicas", PRICED, obs(3, [pod(i, 0.01, peak_prompt_token_rate=5_000.0) for i in range(3)]), p.PoolState(low_since=0.0), 2, "down", "peak token rates need 2 replicas at 90% busy"),
    # ... and is where the halfway step-down aims: 6 x 2k x 100 us = 1.2 s/s -> 2; 6 - 2 = 4
    ("compute-floor-is-the-step-down-target", PRICED, obs(6, [pod(i, 0.01, peak_prompt_token_rate=2_000.0) for i in range(6)]), p.PoolState(low_since=0.0), 4, "down", "peak token rates need 2 replicas at 90% busy"),
    # without token prices the peak rates are not read: KV alone, 1 replica is enough
    ("unpriced-ignores-peak-rates", {}, obs(3, [pod(i, 0.01, peak_prompt_token_rate=8_000.0) for i in range(3)]), p.PoolState(low_since=0.0), 2, "down", "halfway down from 3"),
    # 2 capacity-waiting requests: 4.8k tokens fit the free KV, 2 x 2000 x 100 us / 2 = 0.2 s of
    # queued prefill per replica <= 0.5 s: fresh arrivals, not pressure (vLLM PR #38435)
    ("priced-short-queue-is-not-pressure", PRICED, obs(2, [pod(0, 0.3, waiting_capacity=2.0, waiting=2.0), pod(1, 0.3)]), p.PoolState(), 2, "hold", "low for 0s of 300s"),
    # ... the same queue without prices is pressure (the only compute signal left)
    ("unpriced-short-queue-is-pressure", {}, obs(2, [pod(0, 0.3, waiting_capacity=2.0, waiting=2.0), pod(1, 0.3)]), p.PoolState(), 3, "up", "2 waiting for capacity"),
    # 4 waiting: 0.4 s of queued prefill per replica <= 0.5 s, 9.6k tokens fit: not pressure
    ("priced-queue-under-limit-is-not-pressure", PRICED, obs(2, [pod(0, 0.3, waiting_capacity=4.0, waiting=4.0), pod(1, 0.3)]), p.PoolState(), 2, "hold", "low for 0s of 300s"),
    # 10 waiting: 10 x 2000 x 100 us / 2 = 1.0 s of queued prefill per replica > 0.5 s
    ("priced-queue-seconds-are-pressure", PRICED, obs(2, [pod(0, 0.3, waiting_capacity=10.0, waiting=10.0), pod(1, 0.3)]), p.PoolState(), 3, "up", "1.0s of queued prefill per Ready replica > 0.5s"),
    # long prompts: one 20k-token request takes a replica 2.0 s to prefill, so one request per
    # Ready replica waiting for the next step is a fresh arrival, not a queue ...
    ("priced-one-long-request-per-replica-is-not-pressure", {**PRICED, "length": p.LengthModel(mean_prompt_tokens=20_000, mean_output_tokens=400)}, obs(2, [pod(0, 0.3, waiting_capacity=2.0, waiting=2.0), pod(1, 0.3)]), p.PoolState(), 2, "hold", "low for 0s of 300s"),
    # ... three for two replicas are (3.0 s of queued prefill per replica > 2.0 s)
    ("priced-long-queue-is-pressure", {**PRICED, "length": p.LengthModel(mean_prompt_tokens=20_000, mean_output_tokens=400)}, obs(2, [pod(0, 0.3, waiting_capacity=3.0, waiting=3.0), pod(1, 0.3)]), p.PoolState(), 3, "up", "3.0s of queued prefill per Ready replica > 2s"),
    # peak rates kept 2 replicas 85 % busy (2 x 8.5k x 100 us = 1.7 s/s; the floor, 1.7 / 0.9,
    # still says 2): one waiting request there is a compute-bound queue (>= 80 %), so pressure
    ("priced-queue-on-saturated-replicas-is-pressure", PRICED, obs(2, [pod(0, 0.3, waiting_capacity=1.0, waiting=1.0, peak_prompt_token_rate=8_500.0), pod(1, 0.3, peak_prompt_token_rate=8_500.0)]), p.PoolState(), 3, "up", "peak token rates kept the Ready replicas 85% busy ≥ 80%"),
    # ... the same busy replicas with nothing waiting: no pressure, the floor holds 2
    ("priced-saturated-without-queue-holds", PRICED, obs(2, [pod(i, 0.3, peak_prompt_token_rate=8_500.0) for i in range(2)]), p.PoolState(), 2, "hold", "≤"),
    # ... and one waiting request on replicas 75 % busy is a fresh arrival
    ("priced-queue-below-saturation-is-not-pressure", PRICED, obs(2, [pod(0, 0.3, waiting_capacity=1.0, waiting=1.0, peak_prompt_token_rate=7_500.0), pod(1, 0.3, peak_prompt_token_rate=7_500.0)]), p.PoolState(), 2, "hold", "≤"),
    # 20 waiting x 2.4k = 48k tokens > 40k free KV (2 x 2% of 1M): pressure at any prefill speed
    ("priced-queue-over-free-kv-is-pressure", {**PRICED, "prefill_seconds_per_token": 1e-9, "target_kv_utilization_percent": 100}, obs(2, [pod(0, 0.98, waiting_capacity=20.0, waiting=20.0), pod(1, 0.98)]), p.PoolState(), 3, "up", "48k queued tokens > 40k free"),
    # a Ready replica's preemptions stay pressure with prices
    ("priced-preemptions-are-pressure", PRICED, obs(2, [pod(0, 0.3, preemption_rate=0.1), pod(1, 0.3)]), p.PoolState(), 3, "up", "0.1 preemptions/s"),
]


@pytest.mark.parametrize(
    ("overrides", "observation", "state", "desired", "action", "fragment"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decide_table(
    overrides: dict[str, object],
    observation: p.PoolObservation,
    state: p.PoolState,
    desired: int,
    action: str,
    fragment: str,
) -> None:
    decision = p.decide(spec(**overrides), observation, state)
    assert (decision.desired_replicas, decision.action) == (desired, action), decision.message
    assert fragment in decision.message, decision.message
    assert "\n" not in decision.message


@pytest.mark.parametrize(
    ("observation", "status", "reason"),
    [
        (obs(2, [pod(0), pod(1)]), "True", p.METRICS_CURRENT),
        (obs(2, [pod(0), pod(1)], prometheus_error="HTTP 503"), "False", p.PROMETHEUS_UNAVAILABLE),
        (obs(2, [pod(0), pod(1, NAN)]), "False", p.METRICS_MISSING),
        (obs(2, [pod(0), pod(1, running=NAN)]), "False", p.METRICS_MISSING),
        (obs(2, [pod(0), pod(1, t=0.0)]), "False", p.METRICS_STALE),
        (obs(2, [pod(0), pod(1, NAN, ready=False)]), "True", p.METRICS_CURRENT),  # not Ready: not needed
        (obs(1, [pod(0, ready=False)]), "Unknown", p.NO_READY_REPLICAS),
    ],
)
def test_metrics_verdict(observation: p.PoolObservation, status: str, reason: str) -> None:
    verdict = p.check_metrics(spec(), observation)
    assert (verdict.status, verdict.reason) == (status, reason), verdict.message


@pytest.mark.parametrize(
    ("reported", "status", "reason", "observed"),
    [
        ([], "Unknown", p.CAPACITY_NOT_REPORTED, None),
        ([NAN, NAN], "Unknown", p.CAPACITY_NOT_REPORTED, None),
        ([1_019_000.0], "True", p.CAPACITY_MATCHES_PLAN, 1_019_000),  # +1.9 %
        ([1_021_000.0], "False", p.PLAN_MISMATCH, 1_021_000),  # +2.1 %
        ([980_000.0, 979_000.0, 990_000.0], "True", p.CAPACITY_MATCHES_PLAN, 980_000),  # median
        ([600_000.0, 600_000.0], "False", p.PLAN_MISMATCH, 600_000),
    ],
)
def test_capacity_verdict(reported: list[float], status: str, reason: str, observed: int | None) -> None:
    pods = [pod(i, kv_capacity_tokens=v) for i, v in enumerate(reported)]
    verdict = p.verify_capacity(spec(), pods)
    assert (verdict.status, verdict.reason, verdict.observed_tokens) == (status, reason, observed)
    assert verdict.planned_tokens == CAP
    if status == "False":
        assert str(observed) in verdict.message and str(CAP) in verdict.message


def test_scale_down_is_one_step_per_window() -> None:
    """From 4 replicas at idle: one step per elapsed window, never two in one window."""
    s, state, replicas, steps = spec(), p.PoolState(), 4, []
    for now in range(0, 1300, 30):
        pods = [pod(i, 0.01, t=float(now)) for i in range(replicas)]
        d = p.decide(s, obs(replicas, pods, now=float(now)), state)
        state, replicas = d.state, d.desired_replicas
        if d.action == "down":
            steps.append(now)
    assert replicas == 1
    assert steps == [300, 600, 900]


def test_scale_down_halves_the_excess_per_window() -> None:
    """From 9 replicas at idle: 9 -> 5 -> 3 -> 2 -> 1, one step per elapsed window."""
    s, state, replicas, path = spec(max_replicas=9), p.PoolState(), 9, [9]
    for now in range(0, 1600, 30):
        pods = [pod(i, 0.01, t=float(now)) for i in range(replicas)]
        d = p.decide(s, obs(replicas, pods, now=float(now)), state)
        state, replicas = d.state, d.desired_replicas
        if d.action == "down":
            path.append(replicas)
    assert path == [9, 5, 3, 2, 1]


def test_trend_follows_running_demand_not_the_queue() -> None:
    """A backlog draining into flat running demand is not a trend: no look-ahead, and the trend
    keeps in-use + decode growth only."""
    state = p.PoolState(trend=((900.0, 400_000.0), (950.0, 400_000.0)))
    # in use 2 x 0.2 x 1M = 400k, no running; 100 waiting x 2.4k = 240k queued
    d = p.decide(spec(), obs(2, [pod(0, 0.2, waiting_capacity=100.0), pod(1, 0.2)]), state)
    assert d.figures.demand_tokens == pytest.approx(400_000 + 240_000)
    assert d.state.trend[-1] == (1000.0, pytest.approx(400_000.0))
    assert "look-ahead" not in d.message


def test_token_costs_price_a_chunk_and_a_decode_batch_at_the_target() -> None:
    from kvcap.api.models import parse_manifest
    from kvcap.capacity.catalog import get_gpu
    from kvcap.capacity.configs import load_model
    from kvcap.capacity.latency import pairs
    from kvcap.capacity.planner import step_model_for

    md = parse_manifest({
        "apiVersion": "kvcap.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"},
        "spec": {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
                 "workload": {"maxContextTokens": 8192, "targetConcurrency": 16},
                 "gpu": {"products": ["H100-80GB"]}},
    }).spec
    step, _ = step_model_for(load_model(md.model.name), get_gpu("H100-80GB"), md, 1, 1, 8192)
    length = p.LengthModel(mean_prompt_tokens=1800, mean_output_tokens=400)  # context 2000
    kw = dict(chunk_tokens=8192, kv_tokens_per_replica=400_000, length=length,
              target_kv_utilization_percent=80)
    prefill, decode = p.token_costs(step, max_num_seqs=1024, **kw)  # type: ignore[arg-type]
    assert prefill == pytest.approx(step.step_time(8192, pairs(0, 8192), 0, 0) / 8192)
    # batch at the target: 0.8 x 400k / 2000 = 160 sequences
    assert decode == pytest.approx(step.decode_step(160, 160 * 2000) / 160)
    # an H100 prefills an 8B model at 10-50k tokens/s; a decode token costs more than a prompt token
    assert 1 / 50_000 < prefill < 1 / 10_000 < decode
    # max_num_seqs caps the batch, and a smaller batch costs more per token
    _, one = p.token_costs(step, max_num_seqs=1, **kw)  # type: ignore[arg-type]
    assert one == pytest.approx(step.decode_step(1, 2000)) and one > decode


def test_pressure_gap_restarts_window() -> None:
    s = spec()
    low = p.decide(s, obs(3, [pod(0), pod(1), pod(2)], now=1000.0), p.PoolState(low_since=900.0))
    assert low.state.low_since == 900.0
    busy = p.decide(s, obs(3, [pod(0, 0.8), pod(1, 0.8), pod(2, 0.8)], now=1000.0), low.state)
    assert busy.state.low_since is None


def test_trend_looks_ahead_by_startup_time() -> None:
    """Demand rising 1k tokens/s with a 600 s start-up: the look-ahead adds up to 600k tokens."""
    s = spec()
    state = p.PoolState()
    for now, usage in ((900.0, 0.50), (960.0, 0.53), (1020.0, 0.56)):
        d = p.decide(s, obs(2, [pod(0, usage, t=now), pod(1, usage, t=now)], now=now), state)
        state = d.state
    # 2 x 0.56 x 1M = 1.12M now, slope 1000 tokens/s x 600 s = 600k, capped at 50 % = 560k
    # -> 1.68M > 1.5M
    assert d.action == "up" and d.desired_replicas == 3, d.message
    assert "trend look-ahead" in d.message
    assert math.isclose(d.figures.demand_tokens, 1_680_000, rel_tol=1e-6)


def test_a_step_over_two_close_ticks_is_not_a_trend() -> None:
    """Two ticks 15 s apart, 0.1 -> 0.5: no extrapolation over the start-up time."""
    state = p.PoolState()
    for now, usage in ((985.0, 0.1), (1000.0, 0.5)):
        d = p.decide(spec(), obs(2, [pod(0, usage, t=now), pod(1, usage, t=now)], now=now), state)
        state = d.state
    assert d.figures.demand_tokens == pytest.approx(2 * 0.5 * CAP)
    assert d.action == "hold"


def test_trend_lookahead_is_bounded_by_demand() -> None:
    state = p.PoolState(trend=((900.0, 0.0),))
    d = p.decide(spec(), obs(2, [pod(0, 0.1), pod(1, 0.1)]), state)
    assert d.figures.demand_tokens == pytest.approx(1.5 * 2 * 0.1 * CAP)


def test_prefix_cache_hits_discount_the_queue() -> None:
    cold = p.decide(spec(), obs(2, [pod(0, 0.5, waiting_capacity=100.0), pod(1, 0.5)]), p.PoolState())
    warm = p.decide(
        spec(),
        obs(2, [pod(0, 0.5, waiting_capacity=100.0, prefix_cache_hit_rate=0.9), pod(1, 0.5)]),
        p.PoolState(),
    )
    # queue: 100 x (2000 + 400) = 240k cold, 100 x (200 + 400) = 60k warm
    assert math.isclose(cold.figures.demand_tokens - warm.figures.demand_tokens, 180_000)


def test_state_round_trips_through_json() -> None:
    state = p.PoolState(low_since=12.5, last_scale_time=3.0, trend=((1.0, 2.0), (3.0, 4.5)))
    assert p.PoolState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert p.PoolState.from_dict(None) == p.PoolState()
    assert p.PoolState.from_dict({"trend": "garbage"}) == p.PoolState()


def test_decide_is_pure() -> None:
    args = (spec(), obs(2, [pod(0, 0.9), pod(1, 0.9)]), p.PoolState())
    assert p.decide(*args) == p.decide(*args)


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"min_replicas": 5, "max_replicas": 4}, "min_replicas <= max_replicas"),
        ({"target_kv_utilization_percent": 0}, "1..100"),
        ({"kv_tokens_per_replica": 0}, ">= 1"),
        ({"prefill_seconds_per_token": -1.0}, "prefill_seconds_per_token must be finite"),
        ({"decode_seconds_per_token": NAN}, "decode_seconds_per_token must be finite"),
    ],
)
def test_spec_rejects_nonsense(kw: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        spec(**kw)


def test_format_tokens() -> None:
    assert [p.format_tokens(v) for v in (1_910_000, 850_000, 1234, 999, NAN)] == [
        "1.91M", "850k", "1.2k", "999", "?"
    ]


def test_upper_bound() -> None:
    assert spec(gpu_budget=10, gpus_per_replica=4).upper_bound == 2
    assert spec(gpu_budget=None).upper_bound == 6
    assert replace(spec(), gpu_budget=2, gpus_per_replica=4).upper_bound == 0
