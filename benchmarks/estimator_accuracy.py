"""kvcap vs vLLM's own startup logs, next to three published approaches (reimplemented, cited).

Usage: python benchmarks/estimator_accuracy.py [--per-launch]

Validation set: benchmarks/data/vllm_launches.yaml (real public launches, each with its source).
Metrics
  A. KV memory given (as --kv-cache-memory-bytes would fix it): error of the "GPU KV cache size" token
     line and of the "Maximum concurrency" line, in percent.
  B. KV memory not given: |predicted - logged| "Available KV cache memory", GiB (launches with a known
     vLLM version and GPU memory).
  C. Launches vLLM refused for lack of KV memory that the method flags as not fitting.
Peers (our reimplementations of their documented formulas, not their code):
  textbook  KV/token = 2 x layers x kv_heads/TP x head_dim x dtype bytes; available = total x util -
            params x 2 / TP; tokens = available / (KV/token); concurrency = tokens / max_model_len.
  llm-d     llm-d capacity planner (llm-d config_explorer `capacity_planner.py`): MLA-aware KV/token
            (layers x (kv_lora_rank + qk_rope_head_dim) x bytes), weights from the checkpoint, a constant
            activation per architecture (Llama 4.8 GiB, Qwen2/3 5.6, other dense 5.5, MoE 8.0,
            multimodal 2.5) and non-torch 0.15 GiB (TP 1) / 0.6 GiB (TP >= 2).
  hf-mem    hf-mem (alvarobartt/hf-mem): exact weight bytes from safetensors headers plus textbook KV,
            no runtime overhead: available = total x util - weights.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from validation import Case, load_cases

from kvcap.capacity.arch import ModelArch
from kvcap.capacity.catalog import GIB
from kvcap.capacity.memory import estimate, weight_bytes_per_gpu, with_dtype
from kvcap.capacity.vllm_version import profile


def _util(c: Case) -> float:
    return c.args.gpu_memory_utilization or profile(c.args.vllm_version).default_gpu_memory_utilization


def _textbook_per_token(a: ModelArch, tp: int, kv_bytes: int) -> int:
    heads = max(1, a.num_kv_heads // tp) if not a.is_mla else a.num_attention_heads // tp
    head_dim = a.head_dim_v if a.is_mla else a.head_dim
    return 2 * len(a.layer_kinds) * heads * head_dim * kv_bytes


def _kv_bytes(c: Case, a: ModelArch) -> int:
    return 1 if c.args.kv_cache_dtype.startswith("fp8") else a.dtype_bytes


Result = tuple[float, float, float, bool]  # available bytes, KV tokens, concurrency, fits


def _result(c: Case, a: ModelArch, available: float, per_token: float) -> Result:
    """A peer's verdict: it fits when the KV memory holds one max-length request."""
    tokens = available / per_token
    concurrency = tokens / (c.args.max_model_len or a.max_position_embeddings)
    return available, tokens, concurrency, available > 0 and concurrency >= 1


def peer_textbook(c: Case, available: float | None) -> Result:
    a = with_dtype(c.arch, c.args.dtype)
    tp = c.args.tensor_parallel_size * c.args.pipeline_parallel_size
    per = _textbook_per_token(a, c.args.tensor_parallel_size, _kv_bytes(c, a)) / c.args.pipeline_parallel_size
    if available is None:
        available = c.gpu.memory_bytes * _util(c) - a.num_parameters * a.dtype_bytes / tp
    return _result(c, a, available, per)


def peer_llmd(c: Case, available: float | None) -> Result:
    a = with_dtype(c.arch, c.args.dtype)
    tp, pp = c.args.tensor_parallel_size, c.args.pipeline_parallel_size
    kvb = _kv_bytes(c, a)
    if a.is_mla:
        per = len(a.layer_kinds) * a.mla_latent_dim * kvb
    else:
        per = len(a.layer_kinds) * 2 * a.head_dim * a.num_kv_heads * kvb / tp
    per /= pp
    if available is None:
        arch0 = a.architectures[0] if a.architectures else ""
        profiles = {"LlamaForCausalLM": 4.8, "Qwen2ForCausalLM": 5.6, "Qwen3ForCausalLM": 5.6,
                    "PixtralForConditionalGeneration": 2.5, "Mistral3ForConditionalGeneration": 2.5}
        act = profiles.get(arch0, 8.0 if a.is_moe else (2.5 if a.vision_parameters else 5.5))
        non_torch = 0.15 if tp == 1 else 0.6
        weights = weight_bytes_per_gpu(a, tp, pp, c.args.quantization)
        available = c.gpu.memory_bytes * _util(c) - weights - (act + non_torch) * GIB
    return _result(c, a, available, per)


def peer_hfmem(c: Case, available: float | None) -> Result:
    a = with_dtype(c.arch, c.args.dtype)
    tp, pp = c.args.tensor_parallel_size, c.args.pipeline_parallel_size
    per = _textbook_per_token(a, tp, _kv_bytes(c, a)) / pp
    if available is None:
        available = c.gpu.memory_bytes * _util(c) - weight_bytes_per_gpu(a, tp, pp, c.args.quantization)
    return _result(c, a, available, per)


def kvcap(c: Case, available: float | None) -> Result:
    args = c.args if available is None else replace(c.args, kv_cache_memory_bytes=int(available))
    est = estimate(c.arch, c.gpu, args)
    return est.available_kv_bytes, est.kv_tokens, est.max_concurrency, est.fits


METHODS = {"kvcap": kvcap, "textbook": peer_textbook, "llm-d": peer_llmd, "hf-mem": peer_hfmem}


def _pct(pred: float, obs: float) -> float:
    return abs(pred / obs - 1) * 100


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-launch", action="store_true")
    ns = ap.parse_args()
    cases, skipped = load_cases()
    cases = [c for c in cases if c.gpu is not None or c.observed.get("available_kv_gib") is not None]
    from kvcap.capacity.catalog import get_gpu
    cases = [c if c.gpu else replace(c, gpu=get_gpu("H100-80GB")) for c in cases]
    tok_err = {m: [] for m in METHODS}
    conc_err = {m: [] for m in METHODS}
    avail_err = {m: [] for m in METHODS}
    flagged = {m: 0 for m in METHODS}
    refused = 0
    rows = []
    for c in cases:
        o = c.observed
        given = o.get("available_kv_gib")
        hybrid = len(set(c.arch.layer_kinds)) > 1
        for name, fn in METHODS.items():
            if given is not None and not c.refused:
                _, tokens, conc, _ = fn(c, given * GIB)
                if o.get("kv_cache_tokens") and not hybrid:
                    tok_err[name].append(_pct(tokens, o["kv_cache_tokens"]))
                if o.get("max_concurrency"):
                    conc_err[name].append(_pct(conc, o["max_concurrency"]))
                    if name == "kvcap":
                        rows.append((c.id, conc, o["max_concurrency"]))
            if c.version_known and given is not None and not c.refused and c.raw.get("gpu_total_gib"):
                avail, _, _, _ = fn(c, None)
                avail_err[name].append(abs(avail / GIB - given))
        if c.refused:
            refused += 1
            for name, fn in METHODS.items():
                flagged[name] += not fn(c, None)[3]

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):.2f}" if xs else "-"

    def p90(xs: list[float]) -> str:
        return f"{sorted(xs)[int(0.9 * (len(xs) - 1))]:.2f}" if xs else "-"

    def within(xs: list[float], bound: float) -> str:
        return f"{sum(x <= bound for x in xs)}/{len(xs)}" if xs else "-"

    print(f"Validation set: {len(cases)} launches usable ({len(skipped)} skipped: model not in catalog)")
    print()
    print("A. KV memory given — error vs the logged lines (percent)")
    print(f"{'method':<10} {'tokens med':>10} {'p90':>7} {'<=1%':>8}   {'concurrency med':>15} {'p90':>7} {'<=1%':>8}")
    for m in METHODS:
        print(f"{m:<10} {med(tok_err[m]):>10} {p90(tok_err[m]):>7} {within(tok_err[m], 1):>8}   "
              f"{med(conc_err[m]):>15} {p90(conc_err[m]):>7} {within(conc_err[m], 1):>8}")
    print()
    print("B. KV memory not given — |available KV cache memory - logged| (GiB)")
    print(f"{'method':<10} {'median':>8} {'p90':>8} {'<=0.5 GiB':>10}")
    for m in METHODS:
        print(f"{m:<10} {med(avail_err[m]):>8} {p90(avail_err[m]):>8} {within(avail_err[m], 0.5):>10}")
    print()
    print(f"C. Launches vLLM refused for KV memory, flagged as not fitting (of {refused})")
    for m in METHODS:
        print(f"{m:<10} {flagged[m]}/{refused}")
    if ns.per_launch:
        print()
        for cid, pred, obs in rows:
            print(f"{cid:<70} {pred:10.2f} {obs:10.2f} {_pct(pred, obs):6.2f}%")


if __name__ == "__main__":
    main()
