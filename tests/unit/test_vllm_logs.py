"""kvcap against real vLLM startup logs (benchmarks/data/vllm_launches.yaml, each entry cited).

Given the KV memory vLLM reported, kvcap must reproduce its token count and concurrency lines; without
it, the predicted available KV memory must be close; launches vLLM refused for lack of KV memory must be
predicted not to fit.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from validation import load_cases

from kvcap.capacity.catalog import GIB
from kvcap.capacity.memory import estimate

CASES, SKIPPED = load_cases()
GIVEN = [c for c in CASES if c.observed.get("available_kv_gib") is not None
         and not c.refused and (c.observed.get("kv_cache_tokens") or c.observed.get("max_concurrency"))]


def test_validation_set_is_substantial():
    assert len(CASES) >= 40, f"only {len(CASES)} launches usable; skipped: {SKIPPED[:5]}"
    assert len(GIVEN) >= 30


# Launches whose KV layout kvcap does not yet reproduce to 1 %, each with the measured gap and why; the
# bound keeps the gap from growing unnoticed. Fixing one means moving it back to the exact test.
KNOWN_GAPS = {
    # Llama 4 Maverick on MI300X (ROCm, v0.11.2): 1.1 % fewer blocks than the arithmetic gives.
    "llama-4-maverick-17b-128e-instruct-mi300x": 0.02,
    # MiniMax-M2.7 AWQ on two GB10 (unified memory) at v0.29: 1.3 %; GPU memory not logged.
    "minimax-m2.7-awq-2xgb10": 0.02,
    # DeepSeek-R1-0528 at 163,840 tokens on v0.20: 2.3 % fewer tokens than the logged KV memory holds.
    "deepseek-r1-0528-h200-tp8-len163840": 0.03,
}


def _gap(case) -> float | None:
    return next((v for k, v in KNOWN_GAPS.items() if case.id.startswith(k)), None)


@pytest.mark.parametrize("case", GIVEN, ids=[c.id for c in GIVEN])
def test_tokens_and_concurrency_exact_when_kv_memory_is_given(case):
    o = case.observed
    est = estimate(case.arch, case.gpu or _any_gpu(), replace(
        case.args, kv_cache_memory_bytes=int(o["available_kv_gib"] * GIB)))
    # The log rounds the memory to 0.01 GiB; with pipeline parallelism it prints one rank's memory
    # while vLLM keeps the minimum over ranks, so those logs only bound the result.
    tolerance = 0.02 if case.args.pipeline_parallel_size > 1 else 0.01
    if case.id.startswith("qwen3-235b"):
        tolerance = 0.015  # version unknown; the log shows one of four ranks
    tolerance = _gap(case) or tolerance
    if o.get("max_concurrency"):
        assert est.max_concurrency == pytest.approx(o["max_concurrency"], rel=tolerance, abs=0.011)
    if o.get("kv_cache_tokens") and len(est.groups) == 1:
        assert est.kv_tokens == pytest.approx(o["kv_cache_tokens"], rel=tolerance)


def test_known_gaps_are_few():
    gaps = [c.id for c in GIVEN if _gap(c) is not None]
    assert len(gaps) <= 0.05 * len(GIVEN), gaps


def _available_errors(source: str | None = None) -> list[float]:
    errors = []
    for c in CASES:
        o = c.observed
        if c.gpu is None or o.get("available_kv_gib") is None or c.refused or not c.version_known:
            continue
        if source is not None and c.source_id != source:
            continue
        est = estimate(c.arch, c.gpu, c.args)
        errors.append(abs(est.available_kv_bytes / GIB - o["available_kv_gib"]))
    return errors


def test_available_kv_memory_error_in_sample():
    """The shipped overhead fit (data/overheads.yaml) on the launches it was fitted to; the
    leave-one-source-out figures are benchmarks/estimator_accuracy.py's headline."""
    errors = _available_errors()
    assert len(errors) >= 100
    assert statistics.median(errors) < 0.4
    # The DEBUG-level llm-d campaign (full profiler breakdown, v0.19, H100) is reproduced closely.
    campaign = _available_errors("llm-d-planner-pr205")
    assert len(campaign) >= 40 and statistics.median(campaign) < 0.2


def test_weights_match_model_loading_took():
    """kvcap's weights per GPU against every logged "Model loading took X GiB" (not fitted). DeepSeek
    V3/R1/V3.2 on NVIDIA at TP 8 were 1.4-2.4 GiB short before the replicated-weight rule
    (`arch.replicated_weights`: routers, MLA down-projections, DSA indexer, MLA's dequantized
    kv_b_proj); they are now within 0.4 GiB."""
    from kvcap.capacity.memory import weight_bytes_per_gpu, with_dtype

    errors, deepseek = [], []
    for c in CASES:
        logged = c.observed.get("model_weights_gib")
        if logged is None:
            continue
        a = with_dtype(c.arch, c.args.dtype)
        got = weight_bytes_per_gpu(a, c.args.tensor_parallel_size, c.args.pipeline_parallel_size,
                                   c.args.quantization) / GIB
        errors.append(abs(got - float(logged)))
        if a.name in ("deepseek-ai/DeepSeek-R1-0528", "deepseek-ai/DeepSeek-V3.2") \
                and c.gpu is not None and c.gpu.vendor == "nvidia":
            deepseek.append(abs(got - float(logged)))
    assert len(errors) >= 300 and statistics.median(errors) < 0.2
    assert sum(e <= 1.0 for e in errors) >= 0.85 * len(errors)
    assert len(deepseek) >= 40 and max(deepseek) < 0.45


def test_launches_refused_for_kv_memory_are_flagged():
    refused = [c for c in CASES if c.refused and c.gpu is not None]
    assert refused
    missed = [c.id for c in refused if estimate(c.arch, c.gpu, c.args).fits]
    # A launch whose log does not print the version is evaluated at the newest version; vllm #27508
    # (gpt-oss-120b, util 0.95, 1,024 batched tokens) ran a 0.11-era build and is flagged at that
    # version (tests/unit/test_versions.py) once the data records it.
    unknown_version = {c.id for c in refused if not c.version_known}
    assert not [m for m in missed if m not in unknown_version], missed


def _any_gpu():
    from kvcap.capacity.catalog import get_gpu
    return get_gpu("H100-80GB")
