""""What would fit" names concrete configurations that fit when re-estimated, cheapest first."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kvcap.capacity import catalog
from kvcap.capacity.configs import load_model
from kvcap.capacity.hints import what_would_fit
from kvcap.capacity.memory import ServeArgs, estimate


@pytest.mark.parametrize(("model", "gpu", "args", "first_kind", "first_gpus"), [
    # 131 GiB of bf16 weights on 22 GiB GPUs: 8 of them hold the weights, with room for ~15k tokens.
    ("meta-llama/Llama-3.1-70B-Instruct", "L4", ServeArgs(), "shorter-context", 8),
    # On H100 two GPUs hold the weights but not a 131k request: the cheapest is a shorter context.
    ("meta-llama/Llama-3.1-70B-Instruct", "H100-80GB", ServeArgs(), "shorter-context", 2),
    # 8k context: 2 x H100 fits outright.
    ("meta-llama/Llama-3.1-70B-Instruct", "H100-80GB", ServeArgs(max_model_len=8192),
     "tensor-parallel", 2),
    # gpt-oss-120b at util 0.95 / 1,024 batched tokens on a 0.11-era vLLM (vllm #27508): the real
    # cause is the profile run's 1,024-request sampler batch, so fewer --max-num-seqs fit on the
    # same GPU at the full context (the issue's own ways out were a shorter context or a 2nd GPU).
    ("openai/gpt-oss-120b", "H100-80GB",
     ServeArgs(gpu_memory_utilization=0.95, max_num_batched_tokens=1024, vllm_version="0.11.0"),
     "fewer-seqs", 1),
])
def test_cheapest_concrete_fit_first(model, gpu, args, first_kind, first_gpus):
    arch = load_model(model)
    g = catalog.get_gpu(gpu)
    assert not estimate(arch, g, args).fits
    base = replace(args, max_model_len=args.max_model_len or arch.max_position_embeddings)
    fits = what_would_fit(arch, g, base, catalog.all_gpus())
    assert fits
    assert (fits[0].kind, fits[0].gpu, fits[0].gpus) == (first_kind, g.name, first_gpus)
    assert fits[0].flags(base).startswith(f"--gpu {g.name}")
    if first_kind == "shorter-context":
        assert f"--max-model-len {fits[0].max_model_len}" in fits[0].flags(base)
    if first_kind == "fewer-seqs":
        assert fits[0].max_num_seqs is not None
        assert fits[0].flags(base).endswith(f"--max-num-seqs {fits[0].max_num_seqs}")
        # the largest that fits: one more does not
        more = replace(base, max_num_seqs=fits[0].max_num_seqs + 1)
        assert not estimate(arch, g, more).fits
    assert [f.cost_gib for f in fits] == sorted(f.cost_gib for f in fits)
    for f in fits:  # every hint is a configuration that does fit
        est = estimate(arch, catalog.get_gpu(f.gpu), replace(
            base, tensor_parallel_size=f.tensor_parallel_size,
            pipeline_parallel_size=f.pipeline_parallel_size, kv_cache_dtype=f.kv_cache_dtype,
            max_model_len=f.max_model_len, max_num_seqs=f.max_num_seqs or base.max_num_seqs))
        assert est.fits, f
        assert est.max_concurrency >= 1


def test_fp8_kv_offered_only_when_it_saves_gpus():
    # 64k tokens of Llama-3.1-8B need 8 GiB of bf16 KV (4 GiB in fp8); one L4 has ~4.5 GiB left.
    arch = load_model("meta-llama/Llama-3.1-8B-Instruct")
    g = catalog.get_gpu("L4")
    base = ServeArgs(max_model_len=65536)
    assert not estimate(arch, g, base).fits
    fits = what_would_fit(arch, g, base, catalog.all_gpus())
    kinds = [f.kind for f in fits]
    assert "fp8-kv" in kinds
    fp8 = next(f for f in fits if f.kind == "fp8-kv")
    full = [f for f in fits if f.kind in ("tensor-parallel", "pipeline-parallel")]
    assert fp8.gpus == 1 and fits[0] is fp8  # cheapest: same GPU, same context
    assert all(fp8.cost_gib < f.cost_gib for f in full)
    # At 131k fp8 needs two GPUs like bf16 does: not worth offering.
    fits = what_would_fit(arch, g, ServeArgs(max_model_len=131072), catalog.all_gpus())
    assert "fp8-kv" not in [f.kind for f in fits]


def test_other_gpus_are_larger_and_same_vendor():
    arch = load_model("meta-llama/Llama-3.1-70B-Instruct")
    g = catalog.get_gpu("L4")
    fits = what_would_fit(arch, g, ServeArgs(max_model_len=131072), catalog.all_gpus())
    for f in fits:
        other = catalog.get_gpu(f.gpu)
        assert other.vendor == g.vendor and other.memory_bytes >= g.memory_bytes


# --- the planner's infeasible message uses the same mechanism -------------------------------------

def _md(model: str, max_ctx: int, products: list[str], per_node: int, vllm: dict | None = None):
    from kvcap.api.models import ModelDeploymentSpec
    return {"model": {"name": model}, "workload": {"maxContextTokens": max_ctx,
                                                   "targetConcurrency": 1},
            "gpu": {"products": products, "perNode": per_node}, "vllm": vllm or {}}, \
        ModelDeploymentSpec


def _apply(doc: dict, hint: str) -> dict:
    """The spec with one hint's named changes applied."""
    import copy
    import re
    out = copy.deepcopy(doc)
    for field, value in re.findall(r"`([a-zA-Z.]+): ([^`]+)`", hint):
        section, key = field.split(".")
        out.setdefault(section, {})[key] = (
            [value.strip("[]")] if key == "products" else
            int(value) if value.isdigit() else value)
    return out


@pytest.mark.parametrize(("model", "max_ctx", "products", "per_node", "vllm", "first", "kinds"), [
    # 131 GiB of bf16 weights, one 22 GiB GPU per node: 8 L4 (PP 8) hold ~33k tokens; a larger GPU
    # product holds the full context.
    ("meta-llama/Llama-3.1-70B-Instruct", 131072, ["L4"], 1, None,
     "`workload.maxContextTokens: ", ["workload.maxContextTokens", "gpu.products"]),
    # 405B bf16 does not fit 32 L4 at all: only a larger GPU product does.
    ("meta-llama/Llama-3.1-405B-Instruct", 131072, ["L4"], 4, None,
     "`gpu.products: [", ["gpu.products"]),
])
def test_planner_infeasible_names_re_estimated_configs_cheapest_first(
        model, max_ctx, products, per_node, vllm, first, kinds):
    import re

    from kvcap.capacity.planner import plan_deployment
    doc, spec_cls = _md(model, max_ctx, products, per_node, vllm)
    plan = plan_deployment(spec_cls.model_validate(doc))
    assert not plan.feasible and plan.reason == "InsufficientGpuMemory"
    _head, _, tail = plan.message.partition("; would fit (re-estimated, cheapest first): ")
    assert tail, plan.message
    hints = tail.split("; or ")
    assert hints[0].startswith(first), hints
    for kind in kinds:
        assert any(f"`{kind}: " in h for h in hints), (kind, hints)
    costs = [float(re.search(r"(\d+) GiB provisioned", h).group(1)) for h in hints]
    assert costs == sorted(costs)
    # every hint is a configuration the planner then plans
    for hint in hints:
        again = plan_deployment(spec_cls.model_validate(_apply(doc, hint)))
        assert again.feasible, (hint, again.message)


@pytest.mark.parametrize(("fit", "expected"), [
    (dict(kind="another-gpu", gpu="H100-80GB", tensor_parallel_size=2, pipeline_parallel_size=1,
          kv_cache_dtype="auto", max_model_len=8192, gpus=2, cost_gib=158.0, max_concurrency=3.5),
     "`gpu.products: [H100-80GB]` -> 2 x H100-80GB per replica (TP 2, 158 GiB provisioned, 3.50x"),
    (dict(kind="fp8-kv", gpu="L4", tensor_parallel_size=4, pipeline_parallel_size=2,
          kv_cache_dtype="fp8", max_model_len=8192, gpus=8, cost_gib=180.0, max_concurrency=1.2),
     "`vllm.kvCacheDtype: FP8` -> 8 x L4 per replica (TP 4 PP 2,"),
    (dict(kind="shorter-context", gpu="L4", tensor_parallel_size=1, pipeline_parallel_size=8,
          kv_cache_dtype="auto", max_model_len=32912, gpus=8, cost_gib=180.0, max_concurrency=1.1),
     "`workload.maxContextTokens: 32912` -> 8 x L4 per replica (TP 1 PP 8,"),
    (dict(kind="fewer-seqs", gpu="H100-80GB", tensor_parallel_size=1, pipeline_parallel_size=1,
          kv_cache_dtype="auto", max_model_len=8192, gpus=1, cost_gib=79.0, max_concurrency=1.0,
          max_num_seqs=565),
     "`vllm.maxNumSeqs: 565` -> 1 x H100-80GB per replica (TP 1,"),
    (dict(kind="pipeline-parallel", gpu="L4", tensor_parallel_size=2, pipeline_parallel_size=3,
          kv_cache_dtype="auto", max_model_len=8192, gpus=6, cost_gib=135.0, max_concurrency=1.0),
     "TP 2 x PP 3 -> 6 x L4 per replica"),
])
def test_spec_change_names_the_spec_fields(fit, expected):
    from kvcap.capacity.hints import Fit, spec_change
    base = ServeArgs(max_model_len=8192 if fit["kind"] != "shorter-context" else 131072)
    assert spec_change(Fit(**fit), base).startswith(expected)
