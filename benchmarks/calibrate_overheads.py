"""Fit kvcap's non-KV overhead model (data/overheads.yaml, V1 eras) on real vLLM launches.

Usage: python benchmarks/calibrate_overheads.py   (prints the fitted `eras:` block for overheads.yaml)

What is fitted, per launch of benchmarks/data/vllm_launches.yaml with a V1 version, a GPU and its memory:
  activation (GiB) = c + h x T x hidden x dtype/2 + s_era x R x vocab + moe x [MoE] + amd x [AMD]
                     + the fused-MoE workspace (MoE, V1; a rule, not fitted: taken off the targets)
The workspace is vLLM's Triton fused-MoE buffers, `memory.fused_moe_workspace_bytes`:
T' x top_k x (max(I/TP, H) + max(2I/TP, H)) + T' x H elements, T' = min(T, 16,384). It reproduces
the v0.19 MoE activation peaks within 0.1 GiB and took leave-one-source-out from 0.65 to 0.52 GiB
median once the H200/B200 totals were the CUDA runtime's (with nvidia-smi totals it made H100 worse,
0.29 -> 0.49). Charging it only to unquantized experts was worse (0.67; v0.19 0.31). Not charged
where vLLM's kernel oracle picks FlashInfer's fused MoE (fp8/NVFP4 experts on Blackwell from
0.16, `memory.profile_moe_workspace_bytes`): 0.52 -> 0.51, B200 0.98 -> 0.76; gpt-oss's mxfp4
experts by their own backend (OpenAI Triton kernels on Hopper): 0.51 -> 0.45; Nemotron-H's
non-gated experts: 0.45 -> 0.44.
(tried and left out: a term in T x top_k x expert width / TP fits with a negative sign; tying
non-torch memory of TP 4 to TP 2 makes leave-one-source-out worse, tying TP 8 to TP 4 -- kept --
makes it better: 1.17 -> 1.04 GiB median.)
  non-torch  (GiB) = nt_era[TP 1 | TP 2 | TP 4 | TP >= 8 | PP-only]
with T = max_num_batched_tokens, R = min(max_num_seqs, T) dummy sampler requests (vLLM's defaults when
the log does not say). Each launch contributes the rows it has: the logged activation peak, the logged
non-torch increase, and otherwise total x util - weights (logged, else predicted) - CUDA graphs -
logged available KV memory = activation + non-torch.

Least squares with a Huber re-weighting (a few launches are odd: OOM after allocation, unlogged flags),
shrunk toward weak priors that do not come from the launch set: the sampler's bytes per
(request x vocab) from PR #32558's memory table (sort path 1.25 GB / (256 x 131072) ~ 37 B; Triton
0.38 GB -> ~11.5 B + 4 B of float32 logits ~ 15 B), non-torch 0.25 GiB at TP 1 and 1 GiB with TP, MoE
0.3 GiB. Each prior weighs as much as one launch, so data wins wherever there is some.

`fit(cases)` is what `estimator_accuracy.py` calls for the leave-one-source-out figures.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from validation import ROOT, Case, load_cases

from kvcap.capacity.catalog import GIB
from kvcap.capacity.memory import (
    OverheadModel,
    default_batch_limits,
    overhead_bytes,
    overhead_models,
    profile_moe_workspace_bytes,
    sampler_requests,
    weight_bytes_per_gpu,
    with_dtype,
)
from kvcap.capacity.vllm_version import profile

ERAS = ("v1-sort", "v1")
NT_SLOTS = ("1", "2", "4", "8", "pp")
SHARED = ("c", "h", "moe", "amd")
PARAMS = (*SHARED, *(f"s:{e}" for e in ERAS),
          *(f"nt{slot}:{e}" for e in ERAS for slot in NT_SLOTS))
IDX = {p: i for i, p in enumerate(PARAMS)}

# (value, scale of the prior row in GiB per unit): weak priors from outside the launch set.
PRIORS: dict[str, tuple[float, float]] = {
    "c": (0.05, 1.0), "h": (0.0, 8192 * 4096 / GIB), "moe": (0.3, 1.0), "amd": (0.0, 1.0),
    "s:v1-sort": (37.0, 1024 * 150_000 / GIB), "s:v1": (15.0, 1024 * 150_000 / GIB),
    **{f"nt1:{e}": (0.25, 1.0) for e in ERAS}, **{f"nt2:{e}": (1.0, 1.0) for e in ERAS},
    **{f"nt4:{e}": (1.0, 1.0) for e in ERAS},
    **{f"ntpp:{e}": (0.1, 1.0) for e in ERAS},
}


def _nt_slot(c: Case) -> str:
    tp = c.args.tensor_parallel_size
    if tp >= 8:
        return "8"
    if tp >= 4:
        return "4"
    if tp >= 2:
        return "2"
    return "pp" if c.args.pipeline_parallel_size > 1 else "1"


def usable(c: Case) -> bool:
    return (c.gpu is not None and c.version_known and profile(c.args.vllm_version).engine == "V1"
            and c.args.kv_cache_memory_bytes is None)


def limits(c: Case) -> tuple[int, int]:
    assert c.gpu is not None
    prof = profile(c.args.vllm_version)
    d_seqs, d_tokens = default_batch_limits(c.gpu, prof)
    return c.args.max_num_seqs or d_seqs, c.args.max_num_batched_tokens or d_tokens


def _features(c: Case) -> tuple[list[float], list[float]]:
    """(activation row, non-torch row) in GiB per parameter unit."""
    prof = profile(c.args.vllm_version)
    era = prof.profiler_era
    arch = with_dtype(c.arch, c.args.dtype)
    seqs, tokens = limits(c)
    act = [0.0] * len(PARAMS)
    act[IDX["c"]] = 1.0
    act[IDX["h"]] = tokens * arch.hidden_size * arch.dtype_bytes / 2 / GIB
    act[IDX[f"s:{era}"]] = sampler_requests(seqs, tokens, prof) * arch.vocab_size / GIB
    act[IDX["moe"]] = 1.0 if arch.is_moe else 0.0
    assert c.gpu is not None
    act[IDX["amd"]] = 1.0 if c.gpu.vendor == "amd" else 0.0
    nt = [0.0] * len(PARAMS)
    nt[IDX[f"nt{_nt_slot(c)}:{era}"]] = 1.0
    return act, nt


def _graph_gib(c: Case) -> float:
    prof = profile(c.args.vllm_version)
    seqs, tokens = limits(c)
    return overhead_bytes(c.arch, c.args.tensor_parallel_size, c.args.pipeline_parallel_size,
                          tokens, seqs, prof, c.args.enforce_eager)[2] / GIB


def _moe_workspace_gib(c: Case) -> float:
    """The fused-MoE workspace (a rule, not fitted: `memory.fused_moe_workspace_bytes`), taken off
    the activation targets before the fit."""
    _, tokens = limits(c)
    arch = with_dtype(c.arch, c.args.dtype)
    assert c.gpu is not None
    return profile_moe_workspace_bytes(arch, c.gpu, c.args.tensor_parallel_size, tokens,
                                       profile(c.args.vllm_version), c.args.quantization) / GIB


def rows(c: Case) -> list[tuple[list[float], float]]:
    """Least-squares rows (features, target GiB) one launch contributes."""
    if not usable(c):
        return []
    o = c.observed
    act_f, nt_f = _features(c)
    out: list[tuple[list[float], float]] = []
    if o.get("activation_peak_gib") is not None:
        out.append((act_f, float(o["activation_peak_gib"]) - _moe_workspace_gib(c)))
    if o.get("non_torch_gib") is not None:
        out.append((nt_f, float(o["non_torch_gib"])))
    avail = o.get("available_kv_gib")
    util = c.args.gpu_memory_utilization
    if out or avail is None or util is None or o.get("error"):
        return out
    assert c.gpu is not None
    arch = with_dtype(c.arch, c.args.dtype)
    weights = o.get("model_weights_gib")
    if weights is None:
        weights = weight_bytes_per_gpu(arch, c.args.tensor_parallel_size,
                                       c.args.pipeline_parallel_size, c.args.quantization) / GIB
    target = (c.gpu.memory_bytes / GIB * util - float(weights) - _graph_gib(c) - float(avail)
              - _moe_workspace_gib(c))
    out.append(([a + n for a, n in zip(act_f, nt_f, strict=True)], target))
    return out


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (the normal equations are small)."""
    n = len(b)
    m = [[*row, b[i]] for i, row in enumerate(a)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[piv] = m[piv], m[col]
        if abs(m[col][col]) < 1e-18:
            continue
        for r in range(n):
            if r != col and m[r][col]:
                f = m[r][col] / m[col][col]
                m[r] = [x - f * y for x, y in zip(m[r], m[col], strict=True)]
    return [m[i][n] / m[i][i] if abs(m[i][i]) > 1e-18 else 0.0 for i in range(n)]


def fit_params(cases: list[Case], huber_gib: float = 0.5) -> dict[str, float]:
    data = [r for c in cases for r in rows(c)]
    for name, (value, scale) in PRIORS.items():
        feat = [0.0] * len(PARAMS)
        feat[IDX[name]] = scale
        data.append((feat, value * scale))
    # Non-torch memory at TP 8 with no data of its own is taken as at TP 4 (NCCL and all-reduce
    # buffers grow with the group), one soft row per era, as much as one launch.
    for era in ERAS:
        feat = [0.0] * len(PARAMS)
        feat[IDX[f"nt8:{era}"]], feat[IDX[f"nt4:{era}"]] = 1.0, -1.0
        data.append((feat, 0.0))
    n = len(PARAMS)
    weights = [1.0] * len(data)
    theta = [0.0] * n
    for _ in range(6):
        ata = [[0.0] * n for _ in range(n)]
        atb = [0.0] * n
        for (x, y), w in zip(data, weights, strict=True):
            for i in range(n):
                if x[i]:
                    atb[i] += w * x[i] * y
                    for j in range(n):
                        if x[j]:
                            ata[i][j] += w * x[i] * x[j]
        theta = _solve(ata, atb)
        weights = []
        for x, y in data:
            r = abs(sum(a * t for a, t in zip(x, theta, strict=True)) - y)
            weights.append(1.0 if r <= huber_gib else huber_gib / r)
    return dict(zip(PARAMS, theta, strict=True))


def models_from(params: dict[str, float]) -> dict[str, OverheadModel]:
    """The fitted V1 eras on top of the shipped models (V0 and the CUDA-graph terms stay)."""
    out = dict(overhead_models())
    for era in ERAS:
        base = out[era]
        out[era] = replace(
            base,
            act_const_gib=params["c"], act_per_token_hidden=params["h"],
            act_per_seq_vocab=params[f"s:{era}"], act_moe_const_gib=params["moe"],
            amd_extra_gib=params["amd"],
            non_torch_gib={1: params[f"nt1:{era}"], 2: params[f"nt2:{era}"],
                           4: params[f"nt4:{era}"], 8: params[f"nt8:{era}"]},
            non_torch_pp_only_gib=params[f"ntpp:{era}"],
        )
    return out


def fit(cases: list[Case]) -> dict[str, OverheadModel]:
    return models_from(fit_params(cases))


OVERHEADS = ROOT / "operator" / "kvcap" / "capacity" / "data" / "overheads.yaml"


_GRAPH_EST = re.compile(r"CUDA graph pool memory: [0-9.]+ GiB \(actual\), ([0-9.]+) GiB \(estimated\)")


def fit_cudagraph(cases: list[Case]) -> tuple[float, float, float, int]:
    """(constant GiB, MiB per layer on the GPU, MoE extra GiB, launches) of the CUDA-graph memory
    estimate that v0.21+ subtracts before sizing the cache (`profile_cudagraph_memory`). v0.19 logs
    print that very estimate beside the measured pool ("CUDA graph pool memory: X GiB (actual), Y GiB
    (estimated)"), so it is fitted on them: Y = a + b x layers / PP + c x [MoE]."""
    data: list[tuple[list[float], float]] = []
    for c in cases:
        m = _GRAPH_EST.search(str(c.raw.get("log_excerpt") or ""))
        if not m:
            continue
        layers = len(c.arch.layer_kinds) / c.args.pipeline_parallel_size
        data.append(([1.0, layers, 1.0 if c.arch.is_moe else 0.0], float(m.group(1))))
    n = 3
    ata = [[sum(x[i] * x[j] for x, _ in data) + (1e-6 if i == j else 0.0) for j in range(n)]
           for i in range(n)]
    atb = [sum(x[i] * y for x, y in data) for i in range(n)]
    a, b, moe = _solve(ata, atb)
    return a, b * 1024, moe, len(data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true",
                    help="replace the fitted eras in kvcap/capacity/data/overheads.yaml")
    ns = ap.parse_args()
    cases, _ = load_cases()
    used = [c for c in cases if rows(c)]
    params = fit_params(cases)
    header = f"fitted on {len(used)} launches from {len({c.source_id for c in used})} sources"
    graph_a, graph_mib, graph_moe, graph_n = fit_cudagraph(cases)
    header += f"; CUDA-graph estimate on {graph_n} v0.19 logs"
    graph = (f"    cudagraph_gib: {graph_a:.3f}\n    cudagraph_per_layer_mib: {graph_mib:.2f}\n"
             f"    cudagraph_moe_gib: {graph_moe:.3f}")
    lines = [f"  {era}:" + "\n" + _era_block(params, era) for era in ERAS]
    lines[-1] += "\n" + graph
    if not ns.write:
        print(f"# {header}\neras:\n" + "\n".join(lines))
        return
    text = OVERHEADS.read_text()
    head, _, _ = text.partition("  v1-sort:\n")
    text = re.sub(r"Last fit: [^\n]*\.", f"Last fit: {header}.", head)
    OVERHEADS.write_text(text + "\n".join(lines) + "\n")
    print(f"wrote {OVERHEADS} ({header})")


def _era_block(params: dict[str, float], era: str) -> str:
    return "\n".join([
        f"    act_const_gib: {params['c']:.3f}",
        f"    act_per_token_hidden: {params['h']:.2f}",
        f"    act_per_seq_vocab: {params[f's:{era}']:.2f}",
        f"    act_moe_const_gib: {params['moe']:.3f}",
        f"    amd_extra_gib: {params['amd']:.3f}",
        f"    non_torch_gib: {{1: {params[f'nt1:{era}']:.2f}, 2: {params[f'nt2:{era}']:.2f}, "
        f"4: {params[f'nt4:{era}']:.2f}, 8: {params[f'nt8:{era}']:.2f}}}",
        f"    non_torch_pp_only_gib: {params[f'ntpp:{era}']:.2f}",
    ])


if __name__ == "__main__":
    main()
