# ruff: noqa: RUF001  (the policy's messages use the multiplication sign on purpose)
"""The controller side of autoscaling, on plain data: scale_pools (decide's ScaleFn), the join of
Prometheus values to pods, the settings, the folded conditions and the scale events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kvcap.api import constants as kc
from kvcap.api.models import ModelDeploymentSpec
from kvcap.autoscale import policy as ap
from kvcap.autoscale import prometheus as prom
from kvcap.capacity.plan_types import CapacityPlan, PoolPlan
from kvcap.controller import autoscaler as asc
from kvcap.controller.conditions import Check, autoscaling_conditions, transition_events
from kvcap.controller.decide import PoolScale
from kvcap.controller.scaling import ObjectMetrics, PoolLive, length_model, scale_pools

NOW = 1_800_000_000.0


def pool(name: str = "default", replicas: int = 2, gpus: int = 1, kv: int = 1_000_000) -> PoolPlan:
    return PoolPlan(
        name=name, gpu_product="H100-80GB", gpu_labels=("NVIDIA-H100-80GB-HBM3",),
        tensor_parallel_size=gpus, pipeline_parallel_size=1, replicas=replicas,
        gpus_per_replica=gpus, max_model_len=8192, min_context_tokens=0, max_num_seqs=256,
        kv_tokens_per_replica=kv, kv_bytes_per_gpu=1, gpu_memory_utilization=0.9,
        concurrency_per_replica=200.0, target_concurrency=400, headroom_percent=10.0, vllm_args=(),
    )


def plan(*pools: PoolPlan) -> CapacityPlan:
    return CapacityPlan(True, "PlanFits", "ok", "m", pools=pools or (pool(),))


def spec(policy: str = "KVHeadroom", **auto: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
        "workload": {"maxContextTokens": 8192, "targetConcurrency": 400},
        "gpu": auto.pop("gpu", {}),
        "autoscaling": {"policy": policy, "minReplicas": 1, "maxReplicas": 6,
                        "targetKvUtilizationPercent": 75, "scaleDownDelaySeconds": 60, **auto},
    })


def sample(name: str, usage: float, ready: bool = True, **kw: Any) -> ap.PodSample:
    return ap.PodSample(name=name, ready=ready, kv_usage=usage, running=10.0, waiting=0.0,
                        sample_time=NOW, **kw)


def live(replicas: int, usage: float, **kw: Any) -> ObjectMetrics:
    pods = tuple(sample(f"p{i}", usage, **kw) for i in range(replicas))
    return ObjectMetrics(now=NOW, error=None, pools={"default": PoolLive(replicas, pods)})


def test_disabled_changes_nothing() -> None:
    assert scale_pools(spec("Disabled"), plan(), live(2, 0.99), {}) == {}


def test_kv_headroom_scales_up_with_the_sentence_in_status() -> None:
    out = scale_pools(spec(), plan(), live(2, 0.95), {})["default"]
    assert out.replicas == 3
    assert out.status["desiredReplicas"] == 3 and out.status["currentReplicas"] == 2
    assert out.status["decision"].startswith("KV demand ")
    assert out.status["decision"].endswith("→ 3 replicas")
    assert out.status["kvTokensInUse"] == 1_900_000
    assert out.status["lastScaleTime"] == "2027-01-15T08:00:00Z"
    assert out.checks[kc.METRICS_AVAILABLE] == Check("True", kc.METRICS_CURRENT, out.checks[kc.METRICS_AVAILABLE].message)


@pytest.mark.parametrize("where", ["pools", "plan"])  # status.pools[]; status.plan.pools[] before
def test_state_round_trips_through_status(where: str) -> None:
    first = scale_pools(spec(), plan(), live(3, 0.05), {})["default"]
    assert first.replicas == 3 and first.status["autoscaler"] == {"lowSince": NOW}
    entries = [{"name": "default", **first.status}]
    stored = {"pools": entries} if where == "pools" else {"plan": {"pools": entries}}
    later = ObjectMetrics(now=NOW + 61, error=None, pools={"default": PoolLive(3, tuple(
        ap.PodSample(name=f"p{i}", ready=True, kv_usage=0.05, running=1.0, waiting=0.0, sample_time=NOW + 61)
        for i in range(3)))})
    second = scale_pools(spec(), plan(), later, stored)["default"]
    assert second.replicas == 2, second.status["decision"]


def test_external_leaves_replicas_out_but_reports() -> None:
    out = scale_pools(spec("External"), plan(), live(5, 0.95), {})["default"]
    assert out.replicas is None
    assert out.status["currentReplicas"] == 5 and out.status["desiredReplicas"] == 6


def test_prometheus_down_holds_and_says_so() -> None:
    metrics = ObjectMetrics(now=NOW, error="connection failed", pools={"default": PoolLive(4, ())})
    out = scale_pools(spec(), plan(), metrics, {})["default"]
    assert out.replicas == 4
    assert out.checks[kc.METRICS_AVAILABLE].reason == kc.PROMETHEUS_UNAVAILABLE


def test_no_metrics_object_holds() -> None:
    out = scale_pools(spec(), plan(pool(replicas=9)), None, {})["default"]
    assert out.replicas == 6  # no workload yet: the planned 9, within maxReplicas
    assert out.checks[kc.METRICS_AVAILABLE].status == "False"


def test_gpu_budget_counts_the_other_pools() -> None:
    two = plan(pool("default", gpus=4), pool("long", gpus=4))
    metrics = ObjectMetrics(now=NOW, error=None, pools={
        "default": PoolLive(2, tuple(sample(f"d{i}", 1.0, waiting_capacity=5.0) for i in range(2))),
        "long": PoolLive(1, (sample("l0", 0.5),)),
    })
    out = scale_pools(spec(gpu={"maxTotal": 12}), two, metrics, {})
    assert out["default"].replicas == 2  # 12 GPUs - 4 for 'long' = 8 = 2 x 4
    assert "limit is 2" in out["default"].status["decision"]


def test_capacity_mismatch_check_and_observed_figure() -> None:
    out = scale_pools(spec(), plan(), live(2, 0.5, kv_capacity_tokens=600_000.0), {})["default"]
    check = out.checks[kc.CAPACITY_VERIFIED]
    assert (check.status, check.reason) == ("False", kc.PLAN_MISMATCH)
    assert "600000" in check.message and "1000000" in check.message
    assert out.status["observedKvTokensPerReplica"] == 600_000


def test_length_model_from_plan() -> None:
    lm = length_model(pool())
    total = 1_000_000 * 0.9 / 200
    assert lm.mean_prompt_tokens + lm.mean_output_tokens == pytest.approx(total)


def k8s_pod(name: str, pool_name: str, ready: bool, role: str = kc.ROLE_SERVER, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {kc.LABEL_POOL: pool_name, kc.LABEL_ROLE: role}, **meta},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_live_pools_joins_metrics_to_serving_pods() -> None:
    snap = prom.Snapshot(time=NOW, pods={("ns", "a"): prom.PodMetrics(kv_usage=0.5), ("other", "a"): prom.PodMetrics(kv_usage=0.9)})
    deployment = {"kind": "Deployment", "metadata": {"labels": {kc.LABEL_POOL: "default"},
                  "ownerReferences": [{"uid": "u1", "controller": True}]}, "spec": {"replicas": 3}}
    foreign = {"kind": "Deployment", "metadata": {"labels": {kc.LABEL_POOL: "default"}}, "spec": {"replicas": 9}}
    pods = [
        k8s_pod("a", "default", True),
        k8s_pod("b", "default", False),
        k8s_pod("w", "default", True, role=kc.ROLE_WORKER),
        k8s_pod("gone", "default", True, deletionTimestamp="2026-01-01T00:00:00Z"),
    ]
    pools = asc.live_pools(snap, "ns", "u1", [foreign, deployment], pods)
    assert pools["default"].replicas == 3
    assert next((s.name, s.ready, s.kv_usage) for s in pools["default"].pods) == ("a", True, 0.5)
    assert [s.name for s in pools["default"].pods] == ["a", "b"]


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"KVCAP_PROMETHEUS_URL": "prometheus:9090"}, "http(s) URL"),
        ({"KVCAP_PROMETHEUS_URL_PREFIXES": "thanos.example.com"}, "URL prefixes"),
        ({"KVCAP_PROMETHEUS_RATE_WINDOW": "two minutes"}, "Prometheus duration"),
        ({"KVCAP_AUTOSCALE_INTERVAL_SECONDS": "0.1"}, "at least 0.5"),
    ],
)
def test_settings_errors(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(asc.AutoscaleSettingsError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        asc.parse_autoscale_settings(env)


def test_settings_prefixes() -> None:
    assert asc.parse_autoscale_settings({}).url_prefixes is None
    assert asc.parse_autoscale_settings({"KVCAP_PROMETHEUS_URL_PREFIXES": "None"}).url_prefixes == ()
    got = asc.parse_autoscale_settings({"KVCAP_PROMETHEUS_URL_PREFIXES": "https://a.example/, http://b:9090"})
    assert got.url_prefixes == ("https://a.example/", "http://b:9090")


def test_resolve_url_rejects_outside_the_allowlist() -> None:
    settings = asc.parse_autoscale_settings({})
    url, why = asc.resolve_url(settings, spec(prometheusUrl="http://169.254.169.254/"))
    assert url == "http://169.254.169.254/" and why is not None and "not allowed" in why
    assert asc.resolve_url(settings, spec()) == (settings.prometheus_url, None)


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_conditions_fold_worst_pool_and_vanish_when_disabled() -> None:
    ok = {kc.METRICS_AVAILABLE: Check("True", kc.METRICS_CURRENT, "a fine"),
          kc.CAPACITY_VERIFIED: Check("Unknown", kc.CAPACITY_NOT_REPORTED, "no report")}
    bad = {kc.METRICS_AVAILABLE: Check("False", kc.METRICS_STALE, "b stale"),
           kc.CAPACITY_VERIFIED: Check("False", kc.PLAN_MISMATCH, "b mismatch")}
    conds = autoscaling_conditions([{"type": kc.READY, "status": "True"}], [ok, bad], generation=3, now=T0)
    by = {c["type"]: c for c in conds}
    assert (by[kc.METRICS_AVAILABLE]["status"], by[kc.METRICS_AVAILABLE]["reason"]) == ("False", kc.METRICS_STALE)
    assert by[kc.CAPACITY_VERIFIED]["reason"] == kc.PLAN_MISMATCH
    assert [c["type"] for c in conds] == [kc.READY, kc.METRICS_AVAILABLE, kc.CAPACITY_VERIFIED]
    assert [c["type"] for c in autoscaling_conditions(conds, [], generation=3, now=T0)] == [kc.READY]


def status_with(replicas: int, decision: str | None, conds: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": "default", "replicas": replicas, "gpuProduct": "H100-80GB",
                             "tensorParallelSize": 1, "pipelineParallelSize": 1, "maxModelLen": 8192,
                             "minContextTokens": 0, "maxNumSeqs": 256, "gpusPerReplica": 1}
    status = {"replicas": replicas, "plan": {"feasible": True, "pools": [entry]}, "conditions": conds or []}
    if decision:
        status["pools"] = [{"name": "default", "desiredReplicas": replicas, "decision": decision}]
    return status


def test_scale_event_carries_the_decision() -> None:
    events = transition_events(status_with(2, "x"), status_with(3, "KV demand 1.91M tokens > 75 % of 2 × 1.27M → 3 replicas"))
    scaled = [e for e in events if e.reason == kc.EVENT_SCALED_UP]
    assert len(scaled) == 1
    assert scaled[0].message == "Pool 'default' 2 -> 3: KV demand 1.91M tokens > 75 % of 2 × 1.27M → 3 replicas"


def test_plan_mismatch_event_once() -> None:
    mismatch = [{"type": kc.CAPACITY_VERIFIED, "status": "False", "reason": kc.PLAN_MISMATCH, "message": "600000 vs 1000000"}]
    events = transition_events(status_with(2, None), status_with(2, None, mismatch))
    assert [e.reason for e in events] == [kc.EVENT_PLAN_MISMATCH]
    assert transition_events(status_with(2, None, mismatch), status_with(2, None, mismatch)) == []


def test_tick_fetches_each_url_once_and_drops_objects_that_are_gone() -> None:
    import asyncio

    autoscaler = asc.Autoscaler(asc.parse_autoscale_settings({}))
    fetched: list[str] = []

    async def fake_snapshot(url: str, *, max_age: float | None = None) -> prom.Snapshot:
        fetched.append(url)
        return prom.Snapshot(time=NOW)

    autoscaler.snapshot = fake_snapshot  # type: ignore[method-assign]
    autoscaler.objects = {("a", "x"): "http://p1", ("a", "y"): "http://p1", ("b", "z"): "http://p2"}
    queued: list[tuple[str, str]] = []
    asyncio.run(autoscaler.tick(queued.append, known=lambda key: key != ("a", "y")))
    assert fetched == ["http://p1", "http://p2"]
    assert queued == [("a", "x"), ("b", "z")]
    assert ("a", "y") not in autoscaler.objects


# --- status.pools[]: what is written, and when (issue 7 follow-up) ---


def crd_pool_keys() -> set[str]:
    from pathlib import Path

    import yaml

    crd_path = Path(__file__).resolve().parents[2] / "crds" / "modeldeployments.kvcap.io.yaml"
    crd = yaml.safe_load(crd_path.read_text())
    (version,) = crd["spec"]["versions"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    return set(status["pools"]["items"]["properties"])


def test_pool_status_writes_exactly_the_crd_fields() -> None:
    metrics = live(2, 0.95, kv_capacity_tokens=1_000_000.0, preemption_rate=0.5, waiting_capacity=3.0)
    out = scale_pools(spec(), plan(), metrics, {})["default"]
    assert {"name", *out.status} == crd_pool_keys()
    assert out.status["plannedKvTokensPerReplica"] == 1_000_000
    assert out.status["capacityWaiting"] == 6 and out.status["preemptionRate"] == 1.0
    assert out.status["metricsTime"] == "2027-01-15T08:00:00Z"


def live_at(now: float, replicas: int, usage: float) -> ObjectMetrics:
    pods = tuple(ap.PodSample(name=f"p{i}", ready=True, kv_usage=usage, running=10.0, waiting=0.0,
                              sample_time=now) for i in range(replicas))
    return ObjectMetrics(now=now, error=None, pools={"default": PoolLive(replicas, pods)})


@pytest.mark.parametrize(
    ("later", "usage", "replicas", "rewritten"),
    [
        (15.0, 0.51, 2, False),  # figures moved, nothing else: keep the stored entry, no write
        (59.0, 0.40, 2, False),
        (60.0, 0.51, 2, True),  # the figures are a minute old: refresh them
        (15.0, 0.95, 2, True),  # desired replicas change: written at once
        (15.0, 0.51, 3, True),  # the workload's replicas changed (someone scaled): written
        (15.0, 0.05, 2, True),  # demand went low: the policy state (lowSince) changed
    ],
)
def test_status_entry_is_rewritten_only_when_it_matters(
    later: float, usage: float, replicas: int, rewritten: bool
) -> None:
    first = scale_pools(spec(), plan(), live_at(NOW, 2, 0.5), {})["default"]
    stored = {"pools": [{"name": "default", **first.status}]}
    again = scale_pools(spec(), plan(), live_at(NOW + later, replicas, usage), stored)["default"]
    assert (again.status != first.status) is rewritten, again.status
    if not rewritten:
        assert again.status["kvTokensInUse"] == first.status["kvTokensInUse"]


def test_trend_is_kept_in_memory_not_in_status() -> None:
    from kvcap.controller.scaling import scale_pools_with_state

    out, states, _ = astuple_outcome(scale_pools_with_state(spec(), plan(), live_at(NOW, 2, 0.5), {}))
    assert "trend" not in out["default"].status["autoscaler"]
    assert states["default"].trend == ((NOW, pytest.approx(1_000_000 + 20 * 0.155 * 0.9 * 5000 / 2)),)
    remembered = ObjectMetrics(now=NOW + 15, error=None, pools=live_at(NOW + 15, 2, 0.5).pools,
                               memory=states)
    states = scale_pools_with_state(spec(), plan(), remembered, {}).states
    assert [t for t, _ in states["default"].trend] == [NOW, NOW + 15]


H100 = "NVIDIA-H100-80GB-HBM3"


@pytest.mark.parametrize(
    ("inventory", "gpus", "per_node", "other", "fits"),
    [
        (None, 1, 8, 0, None),  # no inventory: no cap
        ({H100: [8, 8]}, 1, 8, 0, 16),
        ({H100: [8, 8]}, 4, 8, 0, 4),
        ({H100: [8, 6]}, 4, 8, 0, 3),  # a 6-GPU node fits one 4-GPU pod, not one and a half
        ({H100: [8, 8]}, 4, 8, 2, 2),  # the other pool's 2 x 4 GPUs on the same product
        ({H100: [8, 8], "NVIDIA-L4": [8]}, 1, 8, 0, 16),  # products the pool may not use
        ({H100: [8, 8]}, 16, 8, 0, 1),  # a replica of two 8-GPU pods
        ({}, 1, 8, 0, None),  # no node of the product: Unschedulable pods stop growth instead
        ({"NVIDIA-L4": [8]}, 1, 8, 0, None),
    ],
)
def test_inventory_replicas(
    inventory: dict[str, list[int]] | None, gpus: int, per_node: int, other: int, fits: int | None
) -> None:
    from kvcap.controller.scaling import inventory_replicas

    two = plan(pool("default", gpus=gpus), pool("long", gpus=4))
    got, text = inventory_replicas(
        spec(gpu={"perNode": per_node}), two, two.pools[0], {"default": 1, "long": other}, inventory
    )
    assert got == fits
    assert (text == "") is (fits is None)


def test_inventory_caps_scale_up_in_scale_pools() -> None:
    metrics = ObjectMetrics(now=NOW, error=None, pools={"default": PoolLive(2, tuple(
        sample(f"p{i}", 1.0, waiting_capacity=50.0) for i in range(2)))})
    out = scale_pools(spec(), plan(), metrics, {}, {H100: [1, 1, 1]})["default"]
    assert out.replicas == 3
    assert "the node inventory (3 x NVIDIA-H100-80GB-HBM3 allocatable on Ready nodes) holds 3" in (
        out.status["decision"])


def test_live_pools_marks_unschedulable_pods() -> None:
    pending = {"metadata": {"name": "c", "labels": {kc.LABEL_POOL: "default", kc.LABEL_ROLE: kc.ROLE_SERVER}},
               "status": {"phase": "Pending", "conditions": [
                   {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}]}}
    pools = asc.live_pools(prom.Snapshot(time=NOW), "ns", "u1", [], [k8s_pod("a", "default", True), pending])
    assert [(s.name, s.unschedulable) for s in pools["default"].pods] == [("a", False), ("c", True)]


@pytest.mark.parametrize(
    ("scales", "stored", "expected"),
    [
        ({"long": PoolScale(2, {"desiredReplicas": 2}), "default": PoolScale(1, {"desiredReplicas": 1})},
         {}, [{"name": "default", "desiredReplicas": 1}, {"name": "long", "desiredReplicas": 2}]),
        ({}, {"pools": [{"name": "default"}]}, None),  # autoscaling turned off: delete the list
        ({}, {}, "absent"),  # never autoscaled: no field at all (the CRD's exact status)
    ],
)
def test_status_pools_follow_the_plan(scales: dict[str, Any], stored: dict[str, Any], expected: Any) -> None:
    from kvcap.controller.decide import _merge_pool_status

    status: dict[str, Any] = {"plan": {"pools": [{"name": "default"}, {"name": "long"}]}}
    _merge_pool_status(status, scales, stored)
    assert status.get("pools", "absent") == expected


def test_apply_scales_external_shows_the_replicas_it_has_and_zero_is_zero() -> None:
    from kvcap.controller.decide import apply_scales

    two = plan(pool("default", replicas=2), pool("long", replicas=1))
    scaled, external = apply_scales(two, {"default": PoolScale(None, {"currentReplicas": 5}),
                                          "long": PoolScale(0)})
    assert [p.replicas for p in scaled.pools] == [5, 0] and external == {"default"}
    assert scaled.total_gpus == 5


def astuple_outcome(outcome: Any) -> tuple[Any, Any, Any]:
    return outcome.scales, outcome.states, outcome.fresh


@pytest.mark.parametrize(
    ("sentence", "other", "same"),
    [
        ("KV demand 1.21M tokens ≤ 75 % of 2 × 1.00M = 1.50M → hold 2 replicas",
         "KV demand 1.34M tokens ≤ 75 % of 2 × 1.00M = 1.50M → hold 2 replicas", True),
        ("KV demand 1.21M tokens ≤ 75 % of 2 × 1.00M = 1.50M → hold 2 replicas",
         "KV demand 1.21M tokens ≤ 75 % of 2 × 1.00M = 1.50M; 3 waiting for capacity, 0 preemptions/s"
         " → hold 2 replicas", False),
        ("KV demand 1.21M tokens ≤ 75 % of 2 × 1.00M = 1.50M → hold 2 replicas",
         "Prometheus unavailable → hold 2 replicas", False),
    ],
)
def test_decision_shape(sentence: str, other: str, same: bool) -> None:
    from kvcap.controller.scaling import decision_shape

    assert (decision_shape(sentence) == decision_shape(other)) is same


def test_prometheus_going_away_is_written_at_once() -> None:
    first = scale_pools(spec(), plan(), live_at(NOW, 2, 0.5), {})["default"]
    stored = {"pools": [{"name": "default", **first.status}]}
    down = ObjectMetrics(now=NOW + 5, error="connection refused", pools={"default": PoolLive(2, ())})
    again = scale_pools(spec(), plan(), down, stored)["default"]
    assert again.status["decision"].startswith("Prometheus unavailable")


def test_decision_shape_ignores_the_look_ahead_figure() -> None:
    from kvcap.controller.scaling import decision_shape

    plain = "KV demand 118k tokens ≤ 75 % of 2 × 131k = 197k → hold 2 replicas"
    ahead = "KV demand 156k tokens (incl. 30k trend look-ahead) ≤ 75 % of 2 × 131k = 197k → hold 2 replicas"
    assert decision_shape(plain) == decision_shape(ahead)


@pytest.mark.parametrize(
    ("model", "gpu_product", "vllm_args", "priced"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", "H100-80GB", (), True),  # catalog model and GPU
        ("meta-llama/Llama-3.1-8B-Instruct", "H100-80GB", ("--max-num-batched-tokens", "2048"), True),
        ("example-org/not-in-the-catalog", "H100-80GB", (), False),  # Hub/ConfigMap: no arch here
        ("meta-llama/Llama-3.1-8B-Instruct", "Unknown-GPU", (), False),  # no catalog GPU
    ],
    ids=["catalog", "catalog-chunk-2048", "hub-model", "unknown-gpu"],
)
def test_scaling_spec_prices_tokens_when_the_arch_resolves(
    model: str, gpu_product: str, vllm_args: tuple[str, ...], priced: bool
) -> None:
    from dataclasses import replace

    from kvcap.controller.scaling import scaling_spec

    s = spec()
    s = s.model_copy(update={"model": s.model.model_copy(update={"name": model})})
    p = replace(pool(), gpu_product=gpu_product, vllm_args=vllm_args)
    got = scaling_spec(s, p, None)
    if not priced:
        assert got.prefill_seconds_per_token is None and got.decode_seconds_per_token is None
        return
    prefill, decode = got.prefill_seconds_per_token, got.decode_seconds_per_token
    assert prefill is not None and decode is not None
    # an 8B model on one H100: well under a millisecond per prefill token, and a decode token
    # (a step over the batch at the KV target) costs more than a prefill token
    assert 0 < prefill < 1e-3 and prefill < decode < 0.1
    assert scaling_spec(s, p, None) == got  # cached, same answer


def test_scaling_spec_chunk_comes_from_the_pool_args() -> None:
    from dataclasses import replace

    from kvcap.controller.scaling import scaling_spec

    small = scaling_spec(spec(), replace(pool(), vllm_args=("--max-num-batched-tokens=512",)), None)
    large = scaling_spec(spec(), replace(pool(), vllm_args=("--max-num-batched-tokens", "16384")), None)
    # the prefill price is a full chunk's step over its tokens: the pool's flag sets the chunk
    # (a longer chunk attends over more tokens, so it is dearer per token here)
    assert small.prefill_seconds_per_token and large.prefill_seconds_per_token
    assert small.prefill_seconds_per_token < large.prefill_seconds_per_token
    assert large.decode_seconds_per_token == small.decode_seconds_per_token
