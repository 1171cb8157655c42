"""The version table: each memory-accounting rule switches at the release that introduced it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kvcap.api.models import VllmSpec
from kvcap.capacity.catalog import GIB, Gpu
from kvcap.capacity.configs import load_model
from kvcap.capacity.memory import ServeArgs, default_batch_limits, estimate
from kvcap.capacity.vllm_version import DEFAULT_VERSION, NEWEST_VERSION, parse_version, profile

H100 = Gpu("H100-80GB", (), "nvidia", int(79.19 * GIB), 3350, 989, True)
A100 = Gpu("A100-80GB", (), "nvidia", int(79.15 * GIB), 2039, 312, False)
L40S = Gpu("L40S", (), "nvidia", int(44.4 * GIB), 864, 362, True)
MI300X = Gpu("MI300X", (), "amd", int(191.5 * GIB), 5300, 1307, True)


@pytest.mark.parametrize(("version", "engine", "util", "hybrid", "graphs", "sampler", "era"), [
    ("0.6.4", "V0", 0.9, False, False, "none", "v0"),
    ("0.7.3", "V0", 0.9, False, False, "none", "v0"),
    ("0.8.0", "V1", 0.9, False, False, "sort", "v1-sort"),   # V1 default; PR #13594 sampler
    ("0.9.2", "V1", 0.9, False, False, "sort", "v1-sort"),
    ("0.10.0", "V1", 0.9, True, False, "sort", "v1-sort"),   # hybrid allocator on (PR #17996)
    ("0.11.2", "V1", 0.9, True, False, "sort", "v1-sort"),
    ("0.15.1", "V1", 0.9, True, False, "sort", "v1-sort"),
    ("0.16.0", "V1", 0.9, True, False, "sort", "v1-sort"),
    ("0.17.0", "V1", 0.9, True, False, "triton", "v1"),      # PR #33538 Triton top-k/top-p
    ("0.20.2", "V1", 0.9, True, True, "triton", "v1"),       # CUDA-graph estimate: PSAP v0.20 logs
    ("0.21.0", "V1", 0.92, True, True, "triton", "v1"),      # PR #38284 / #30515
    ("v0.32.0", "V1", 0.92, True, True, "triton", "v1"),
    ("0.40.1", "V1", 0.92, True, True, "triton", "v1"),      # later than the table: newest rules
])
def test_rules_switch_at_the_release_that_introduced_them(version, engine, util, hybrid, graphs,
                                                           sampler, era):
    p = profile(version)
    assert (p.engine, p.default_gpu_memory_utilization, p.hybrid_allocator,
            p.subtracts_cudagraph_memory, p.sampler, p.profiler_era) == (
        engine, util, hybrid, graphs, sampler, era)


@pytest.mark.parametrize(("version", "gpu", "limits"), [
    ("0.7.3", H100, (256, 8192)),    # PR #12369: H100/H200 by name, tokens only
    ("0.7.3", MI300X, (256, 2048)),
    ("0.8.5", A100, (1024, 8192)),   # PR #17073: >= 70 GiB, A100 included
    ("0.8.5", MI300X, (1024, 8192)),
    ("0.9.0", A100, (256, 2048)),    # PR #17885: A100 back to the small defaults
    ("0.9.0", H100, (1024, 8192)),
    ("0.19.0", L40S, (256, 2048)),
    ("0.32.0", MI300X, (1024, 8192)),
])
def test_batch_defaults_per_gpu_and_version(version, gpu, limits):
    assert default_batch_limits(gpu, profile(version)) == limits


def test_default_is_the_newest_supported_version():
    assert DEFAULT_VERSION == NEWEST_VERSION
    assert profile(None).version == parse_version(NEWEST_VERSION)


def test_sampler_sort_era_explains_gpt_oss_120b_refusal():
    """vllm #27508: gpt-oss-120b, one H100, --gpu-memory-utilization 0.95 --max-num-batched-tokens
    1024 on a 0.11-era build logged 1.71 GiB and refused the 131,072-token max length. The profile
    run's 1,024 dummy requests x 201,088 vocab through the PyTorch sort sampler (~37 B each) cost
    ~7 GiB; with the Triton sampler (v0.17+) the same flags fit."""
    arch = load_model("openai/gpt-oss-120b")  # the catalog's cited config.json
    args = ServeArgs(gpu_memory_utilization=0.95, max_num_batched_tokens=1024)
    old = estimate(arch, H100, replace(args, vllm_version="0.11.0"))
    new = estimate(arch, H100, replace(args, vllm_version="0.19.0"))
    assert not old.fits and "To serve at least one request" in old.reason
    # within the fitted overhead model's spread for MoE (data/overheads.yaml)
    assert abs(old.available_kv_bytes / GIB - 1.71) < 0.75
    assert new.fits
    assert old.activation_bytes - new.activation_bytes > 3 * GIB


def test_sampler_batch_is_capped_by_batched_tokens():
    """V1 `_dummy_run` builds min(max_num_batched_tokens, max_num_seqs) requests."""
    arch = load_model("openai/gpt-oss-120b")  # the catalog's cited config.json
    few = estimate(arch, H100, ServeArgs(max_num_batched_tokens=256, max_num_seqs=1024,
                                         vllm_version="0.11.0"))
    many = estimate(arch, H100, ServeArgs(max_num_batched_tokens=256, max_num_seqs=256,
                                          vllm_version="0.11.0"))
    assert few.activation_bytes == many.activation_bytes


@pytest.mark.parametrize(("image", "version", "expected"), [
    ("vllm/vllm-openai:v0.19.0", None, "0.19.0"),
    ("vllm/vllm-openai:v0.10.1.1", None, "0.10.1"),
    ("registry.local:5000/vllm/vllm-openai:0.21.0-cu128", None, "0.21.0"),
    ("vllm/vllm-openai:latest", None, None),  # planner falls back to the newest version
    ("vllm/vllm-openai:v0.19.0", "0.11.2", "0.11.2"),  # spec.vllm.version wins
])
def test_operator_takes_the_version_from_the_image_tag(image, version, expected):
    spec = VllmSpec(image=image, version=version)
    assert spec.resolved_version() == expected
    assert profile(spec.resolved_version()).label == (expected or NEWEST_VERSION)


def test_hybrid_token_line_follows_the_version():
    """v0.19 prints blocks // groups x block size for hybrids (vllm #40691); from 0.24 the line is
    int(concurrency x max_model_len). The pool and the concurrency do not change."""
    arch = load_model("google/gemma-2-9b-it")
    kv = ServeArgs(max_model_len=32768, kv_cache_memory_bytes=20 * GIB)
    old = estimate(arch, H100, replace(kv, vllm_version="0.19.0"))
    new = estimate(arch, H100, replace(kv, vllm_version="0.24.0"))
    assert len(old.groups) > 1
    assert old.num_blocks == new.num_blocks and old.max_concurrency == new.max_concurrency
    assert old.kv_tokens == old.num_blocks // len(old.groups) * old.block_size
    assert new.kv_tokens == int(new.max_concurrency * 32768)
    assert new.kv_tokens != old.kv_tokens


@pytest.mark.parametrize(("version", "served"), [
    ("0.10.2", True),   # the last release with the V0 encoder-decoder runner
    ("0.11.0", False),  # vllm-project/vllm#24907 removed it
    (None, False),      # the default, newest version
])
def test_llama_3_2_vision_is_served_only_where_vllm_still_has_it(version, served):
    from kvcap.api.errors import InvalidArgument

    arch = load_model("meta-llama/Llama-3.2-11B-Vision-Instruct")
    args = ServeArgs(vllm_version=version, max_model_len=8192)
    from kvcap.capacity.catalog import get_gpu
    h100 = get_gpu("H100-80GB")
    if served:
        assert estimate(arch, h100, args).fits
        return
    with pytest.raises(InvalidArgument) as err:
        estimate(arch, h100, args)
    assert "cannot serve MllamaForConditionalGeneration" in err.value.message
    assert "#24907" in err.value.message and "--vllm-version 0.10.2" in err.value.message


def test_the_planner_names_the_release_that_still_serves_a_removed_model():
    from kvcap.api.errors import InvalidArgument
    from kvcap.api.models import ModelDeploymentSpec
    from kvcap.capacity.planner import plan_deployment

    def md(image: str | None) -> ModelDeploymentSpec:
        return ModelDeploymentSpec.model_validate({
            "model": {"name": "meta-llama/Llama-3.2-11B-Vision-Instruct"},
            "workload": {"maxContextTokens": 8192, "targetConcurrency": 8},
            "gpu": {"products": ["H100-80GB"]},
            **({"vllm": {"image": image}} if image else {})})

    with pytest.raises(InvalidArgument) as err:
        plan_deployment(md(None))  # the default image, v0.32.0
    assert err.value.message.endswith("(`spec.vllm.image: vllm/vllm-openai:v0.10.2`)")
    assert plan_deployment(md("vllm/vllm-openai:v0.10.2")).feasible
