"""Table-driven tests of the planner (pure: spec in, plan out)."""

from __future__ import annotations

import math

import pytest

from kvcap.api.errors import InvalidArgument
from kvcap.api.models import ModelDeploymentSpec
from kvcap.capacity.configs import load_model
from kvcap.capacity.planner import LengthModel, plan_deployment, valid_tp_sizes


def spec(model="meta-llama/Llama-3.1-8B-Instruct", max_ctx=8192, conc=16, pct=None, products=None,
         per_node=8, **workload):
    w = {"maxContextTokens": max_ctx, "targetConcurrency": conc, **workload}
    if pct:
        w["contextPercentiles"] = dict(zip(("p50", "p90", "p99"), pct, strict=True))
    return ModelDeploymentSpec.model_validate({
        "model": {"name": model}, "workload": w,
        "gpu": {"products": products or ["H100-80GB"], "perNode": per_node}})


@pytest.mark.parametrize(("name", "s", "pools", "check"), [
    ("one pool, worst case lengths", spec(conc=64), ["default"],
     lambda p: p.pools[0].max_model_len == 8192),
    ("long tail splits", spec(max_ctx=131072, conc=64, pct=(1500, 6000, 16000)), ["default", "long"],
     lambda p: p.pools[0].max_model_len == 16000 and p.pools[1].min_context_tokens == 16000
     and "x p99" in p.split_decision),
    ("policy Disabled keeps one pool", spec(max_ctx=131072, conc=64, pct=(1500, 6000, 16000),
                                            longContextPolicy="Disabled"), ["default"],
     lambda p: "disabled" in p.split_decision),
    ("user threshold splits", spec(max_ctx=65536, conc=32, longContextThresholdTokens=8192),
     ["default", "long"], lambda p: p.pools[1].max_model_len == 65536),
    ("70B needs TP", spec(model="meta-llama/Llama-3.1-70B-Instruct", conc=8), ["default"],
     lambda p: p.pools[0].tensor_parallel_size >= 2),
    ("MLA model on H200", spec(model="deepseek-ai/DeepSeek-V3", max_ctx=32768, conc=8,
                               products=["H200-141GB"]), ["default"],
     lambda p: p.pools[0].tensor_parallel_size == 8),
])
def test_plans(name, s, pools, check):
    plan = plan_deployment(s)
    assert plan.feasible, plan.message
    assert [p.name for p in plan.pools] == pools
    assert check(plan), plan.to_dict()
    assert plan.total_gpus == sum(p.replicas * p.gpus_per_replica for p in plan.pools)
    assert 1 <= plan.lower_bound_gpus <= plan.total_gpus
    for pool in plan.pools:
        args = pool.vllm_args
        assert args[args.index("--tensor-parallel-size") + 1] == str(pool.tensor_parallel_size)
        assert args[args.index("--max-model-len") + 1] == str(pool.max_model_len)
        assert args[args.index("--max-num-seqs") + 1] == str(pool.max_num_seqs)
        assert pool.headroom_percent >= 0


def test_replicas_grow_with_concurrency():
    small = plan_deployment(spec(conc=16))
    large = plan_deployment(spec(conc=400))
    assert large.total_gpus > small.total_gpus


def test_fp8_kv_never_needs_more_gpus():
    base = spec(max_ctx=32768, conc=128)
    fp8 = ModelDeploymentSpec.model_validate({**base.model_dump(by_alias=True),
                                              "vllm": {"kvCacheDtype": "FP8"}})
    assert plan_deployment(fp8).total_gpus <= plan_deployment(base).total_gpus


def test_infeasible_says_what_would_fit():
    plan = plan_deployment(spec(model="meta-llama/Llama-3.1-405B-Instruct", max_ctx=131072, conc=1,
                                products=["L4"], per_node=4))
    assert not plan.feasible
    assert plan.reason == "InsufficientGpuMemory"
    assert "no allowed GPU holds one 131072-token request" in plan.message


def test_multi_node_replica_uses_pipeline_parallel():
    plan = plan_deployment(spec(model="meta-llama/Llama-3.1-405B-Instruct", max_ctx=8192, conc=4,
                                products=["H100-80GB"], per_node=8))
    assert plan.feasible
    pool = plan.pools[0]
    assert pool.pipeline_parallel_size >= 2 and pool.gpus_per_replica > 8
    assert any("LeaderWorkerSet" in n for n in pool.notes)


def test_cluster_inventory_produces_warning_when_short():
    plan = plan_deployment(spec(conc=2000), cluster_gpus={"NVIDIA-H100-80GB-HBM3": 2})
    assert any("allocatable" in w for w in plan.warnings)


def test_required_policy_without_threshold_is_rejected():
    with pytest.raises(InvalidArgument, match="Required"):
        plan_deployment(ModelDeploymentSpec.model_construct(**{
            **spec().__dict__, "workload": spec().workload.model_copy(
                update={"long_context_policy": "Required"})}))


def test_tp_sizes_respect_heads_and_node():
    arch = load_model("Qwen/Qwen2.5-7B-Instruct")  # 28 heads
    assert valid_tp_sizes(arch, 8) == [1, 2, 4]


def test_length_model_matches_percentiles():
    m = LengthModel.from_percentiles(1000, 4000, 16000, 131072)
    assert math.isclose(m.tail(1000), 0.5, rel_tol=1e-6)
    assert m.tail(16000) == pytest.approx(0.01, rel=1e-3)  # p99 sets the tail (it implies the larger sigma)
    assert 1000 < m.mean() < 16000


def test_gpu_budget_is_a_hard_limit():
    s = ModelDeploymentSpec.model_validate({
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
        "workload": {"maxContextTokens": 8192, "targetConcurrency": 2000},
        "gpu": {"products": ["H100-80GB"], "maxTotal": 4}})
    plan = plan_deployment(s)
    assert not plan.feasible and plan.reason == "ExceedsGpuBudget"
    assert "above `gpu.maxTotal` 4" in plan.message


def test_the_plan_prices_tokens_the_way_the_autoscaler_would_for_any_model():
    """Every pool carries its token prices; for a catalog model they equal what the autoscaler
    computes from the catalog, and a model given as a config.json (Hub, ConfigMap) is priced too."""
    import json
    from dataclasses import replace

    from kvcap.capacity.catalog import DATA
    from kvcap.controller.scaling import token_costs_for

    s = spec(conc=64)
    pool = plan_deployment(s).pools[0]
    assert pool.prefill_seconds_per_token and pool.decode_seconds_per_token
    unpriced = replace(pool, prefill_seconds_per_token=None, decode_seconds_per_token=None)
    assert token_costs_for(s, unpriced) == pytest.approx(
        (pool.prefill_seconds_per_token, pool.decode_seconds_per_token), rel=1e-9)
    config = json.loads((DATA / "models" / "meta-llama--Llama-3.1-8B-Instruct.json").read_text())
    hub = spec(model="example-org/private-llama", conc=64)
    hub_pool = plan_deployment(hub, config=config["config"]).pools[0]
    # the same shapes; the catalog's parameter count differs from the one counted from the shapes
    assert (hub_pool.prefill_seconds_per_token, hub_pool.decode_seconds_per_token) == pytest.approx(
        (pool.prefill_seconds_per_token, pool.decode_seconds_per_token), rel=1e-3)
    assert token_costs_for(hub, replace(hub_pool, prefill_seconds_per_token=None,
                                        decode_seconds_per_token=None)) is None
