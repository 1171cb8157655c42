"""Step time of one vLLM replica from a roofline model (pure; no I/O).

One engine step (vLLM V1 runs prefill chunks and decodes in one forward pass) costs

    step = max(compute, memory) + tensor-parallel all-reduces + a fixed per-step overhead

* compute: 2 FLOPs per active parameter per token (GEMMs) plus attention (4 FLOPs per
  query-key pair per head dimension per layer), over peak dense BF16 FLOPs x an MFU that differs for
  prefill and decode tokens;
* memory: the weights (once per step; for MoE only the experts the batch touches) plus the KV the
  batch reads and writes, over peak HBM bandwidth x a bandwidth efficiency;
* all-reduce: two per layer (attention output and MLP) of tokens x hidden x 2 bytes, ring algorithm
  over the GPU's interconnect, plus a fixed latency per call;
* overhead: scheduling, sampling, CUDA-graph launch, output processing.

TTFT as a client sees it adds an API-server overhead (HTTP, tokenization, the first streamed chunk).

Every constant below says where it comes from. The model is validated against published
single-request / low-load measurements in tests/unit/test_latency.py (within 20 %); the numbers it
misses are listed in docs/simulator.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kvcap.capacity.arch import ModelArch
from kvcap.capacity.catalog import Gpu
from kvcap.capacity.plan_types import PoolPlan

# Model FLOPs utilisation (prefill, decode) per GPU family. Source: BLIS (inference-sim) v0.7.15
# hardware_config.json, "MFU values calibrated per Discussion #589"
# (https://github.com/inference-sim/inference-sim/discussions/589): H100 0.45 / 0.30,
# A100 0.38 / 0.18, L40S 0.32 / 0.08. Other products take the values of their architecture family;
# products of no listed family (Blackwell, AMD, Turing, Volta) take the A100 pair, unvalidated.
MFU_BY_FAMILY: dict[str, tuple[float, float]] = {
    "hopper": (0.45, 0.30),
    "ampere": (0.38, 0.18),
    "ada": (0.32, 0.08),
}
FAMILY_OF: dict[str, str] = {
    "H100-80GB": "hopper", "H100-PCIe": "hopper", "H100-NVL": "hopper", "H200-141GB": "hopper",
    "A100-40GB": "ampere", "A100-80GB": "ampere", "A10G": "ampere", "A10": "ampere",
    "RTX-3090": "ampere", "RTX-A6000": "ampere",
    "L40S": "ada", "L40": "ada", "L4": "ada", "RTX-4090": "ada", "RTX-6000-Ada": "ada",
}
DEFAULT_MFU = MFU_BY_FAMILY["ampere"]

# Share of peak HBM bandwidth a decode step achieves. 0.85: decode of Llama-3.1-8B at one request on
# an A100 40GB runs at 75 tok/s, 77 % of the bandwidth ceiling *including* the fixed per-step
# overhead (https://johnmusgrave.com/p/vllm-throughput-latency-sweep-on, vLLM 0.23); with the
# overhead below taken out, the weight stream itself runs at ~85 %. The same figure holds for the
# H100 and L4 points of the validation table.
BANDWIDTH_EFFICIENCY = 0.85

# Fixed cost of one engine step (scheduler, sampler, CUDA-graph replay, detokenize). 1.7 ms: the
# TPOT floor of sub-1B models where the weights take < 0.5 ms -- Qwen3-0.6B on H100 (vLLM 0.19,
# 2.39 ms TPOT, ovg-project/kvcached PR #331 H100_results.md) and Qwen2.5-0.5B on L4 (vLLM 0.23,
# 5.1 ms ITL of which ~3.9 ms is the weight stream, https://ai.wmx.dev/benchmarks). One constant for
# both: the first is 11 % under, the second 10 % over (tests/unit/test_latency.py).
STEP_OVERHEAD_S = 1.7e-3

# Client-visible TTFT beyond the engine: HTTP, tokenization, first streamed chunk. 20 ms, calibrated
# on the Qwen2.5-0.5B / L4 point (27 ms p50 TTFT at one request, 256-token prompts; the engine's
# prefill step is ~7 ms there). Validated on Mistral-7B / H100 (LambdaLabsML/vllm-benchmark).
API_OVERHEAD_S = 20e-3

# Interconnect bandwidth per direction used by a ring all-reduce (GB/s), vendor specs:
# H100/H200 SXM NVLink 4: 900 GB/s total = 450 per direction (https://www.nvidia.com/en-us/data-center/h100/);
# A100 SXM NVLink 3: 600 GB/s total = 300 (https://www.nvidia.com/en-us/data-center/a100/);
# B200/GB200 NVLink 5: 1.8 TB/s total = 900 (https://www.nvidia.com/en-us/data-center/dgx-b200/);
# MI300X Infinity Fabric: 896 GB/s peak aggregate, ~448 per direction
# (https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html); H100 NVL bridge
# 600 GB/s total; everything else over PCIe: Gen4 x16 = 32 GB/s per direction, Gen5 = 64.
LINK_GBPS: dict[str, float] = {
    "H100-80GB": 450, "H200-141GB": 450, "A100-80GB": 300, "A100-40GB": 300, "B200": 900,
    "GB200": 900, "MI300X": 448, "MI308X": 448, "MI325X": 448, "H100-NVL": 300, "H100-PCIe": 64,
}
PCIE_GBPS = 32.0
# Fixed latency of one all-reduce call: NCCL small-message all-reduce within a node is on the order
# of 10-20 us (nccl-tests all_reduce_perf at 8 bytes); 15 us assumed. Not covered by the validation
# points (all TP 1): treat TP > 1 predictions as less certain.
ALLREDUCE_LATENCY_S = 15e-6


@dataclass(frozen=True, slots=True)
class StepModel:
    """Per-GPU coefficients of one replica's step time; `step_time` is O(1)."""

    dense_weight_bytes: float  # read every step, per GPU of a stage
    expert_weight_bytes: float  # routed experts on one GPU of a stage (0 for dense models)
    num_experts: int
    experts_per_token: int
    kv_bytes_per_token: float  # per GPU, all layers of the stage
    linear_flops_per_token: float  # per GPU
    attn_flops_per_pair: float  # per GPU: 4 x heads x head_dim x layers / TP
    prefill_flops_per_s: float
    decode_flops_per_s: float
    bytes_per_s: float
    comm_s_per_token: float  # all-reduce bandwidth term, all layers
    comm_s_fixed: float  # all-reduce latency term, all layers
    overhead_s: float
    pipeline_stages: int
    api_overhead_s: float = API_OVERHEAD_S

    def step_time(self, prefill_tokens: int, prefill_pairs: float, decode_seqs: int,
                  decode_ctx: int) -> float:
        """Seconds for one step that prefills `prefill_tokens` (with `prefill_pairs` query-key pairs
        of attention) and decodes one token for each of `decode_seqs` requests holding `decode_ctx`
        tokens of KV between them."""
        tokens = prefill_tokens + decode_seqs
        if tokens <= 0:
            return 0.0
        compute = (
            (self.linear_flops_per_token * prefill_tokens
             + self.attn_flops_per_pair * prefill_pairs) / self.prefill_flops_per_s
            + (self.linear_flops_per_token * decode_seqs + self.attn_flops_per_pair * decode_ctx)
            / self.decode_flops_per_s
        )
        weights = self.dense_weight_bytes
        if self.expert_weight_bytes:
            # Experts touched by `tokens` tokens routing to k of E experts each.
            untouched = (1.0 - self.experts_per_token / self.num_experts) ** tokens
            weights += self.expert_weight_bytes * (1.0 - untouched)
        kv = self.kv_bytes_per_token * (decode_ctx + tokens)
        memory = (weights + kv) / self.bytes_per_s
        comm = self.comm_s_fixed + self.comm_s_per_token * tokens if self.comm_s_fixed else 0.0
        return (max(compute, memory) + comm) * self.pipeline_stages + self.overhead_s

    def decode_step(self, batch: int, ctx_tokens: int) -> float:
        return self.step_time(0, 0.0, batch, ctx_tokens)

    def prefill_time(self, prompt: int, chunk: int, decode_batch: int = 0,
                     decode_ctx: int = 0) -> float:
        """Seconds to prefill one prompt in chunks of `chunk` tokens while `decode_batch` other
        requests (holding `decode_ctx` tokens) decode alongside."""
        t, done = 0.0, 0
        chunk = max(1, chunk - decode_batch)
        while done < prompt:
            n = min(chunk, prompt - done)
            t += self.step_time(n, pairs(done, n), decode_batch, decode_ctx)
            done += n
        return t

    def ttft(self, prompt: int, chunk: int, decode_batch: int = 0, decode_ctx: int = 0) -> float:
        """Client-visible time to first token of one request that does not queue."""
        return self.prefill_time(prompt, chunk, decode_batch, decode_ctx) + self.api_overhead_s


def pairs(start: int, n: int) -> float:
    """Causal query-key pairs of a chunk of `n` tokens that starts at position `start`."""
    return n * start + n * (n + 1) / 2


def mfu(gpu: Gpu) -> tuple[float, float]:
    family = FAMILY_OF.get(gpu.name)
    return MFU_BY_FAMILY[family] if family else DEFAULT_MFU


def step_model(arch: ModelArch, gpu: Gpu, *, tp: int, pp: int = 1, weight_bytes_per_gpu: int,
               kv_bytes_per_token: int) -> StepModel:
    """Coefficients for `arch` on `tp` x `pp` GPUs of `gpu`. `weight_bytes_per_gpu` and
    `kv_bytes_per_token` are the memory model's per-GPU figures (`memory.Estimate`)."""
    n_layers = max(1, len(arch.layer_kinds))
    layers_per_stage = math.ceil(n_layers / pp)
    # GEMM parameters a token passes through: everything but the input embedding; the LM head is
    # a GEMM too (counted even when tied). MoE: only the routed experts a token uses.
    linear = float(arch.num_parameters - arch.embedding_parameters)
    if arch.is_moe and arch.expert_parameters and arch.num_experts and arch.experts_per_token:
        linear -= arch.expert_parameters * (1 - arch.experts_per_token / arch.num_experts)
    linear += arch.vocab_size * arch.hidden_size
    if arch.num_active_parameters:
        linear = min(linear, arch.num_active_parameters)
    attn_dim = arch.num_attention_heads * max(arch.head_dim, 1)
    attn_layers = max(1, arch.num_attention_layers)
    expert_bytes = 0.0
    if arch.is_moe and arch.expert_parameters and arch.num_parameters:
        expert_bytes = weight_bytes_per_gpu * arch.expert_parameters / arch.num_parameters
    pre, dec = mfu(gpu)
    peak = gpu.bf16_tflops * 1e12
    link = LINK_GBPS.get(gpu.name, PCIE_GBPS) * 1e9
    comm_tok = comm_fixed = 0.0
    if tp > 1:
        ring = 2 * (tp - 1) / tp
        comm_tok = 2 * layers_per_stage * ring * arch.hidden_size * arch.dtype_bytes / link
        comm_fixed = 2 * layers_per_stage * ALLREDUCE_LATENCY_S
    return StepModel(
        dense_weight_bytes=weight_bytes_per_gpu - expert_bytes,
        expert_weight_bytes=expert_bytes,
        num_experts=max(arch.num_experts, 1),
        experts_per_token=arch.experts_per_token or 1,
        kv_bytes_per_token=float(kv_bytes_per_token),
        linear_flops_per_token=2.0 * linear / (tp * pp),
        attn_flops_per_pair=4.0 * attn_dim * attn_layers / (tp * pp),
        prefill_flops_per_s=peak * pre,
        decode_flops_per_s=peak * dec,
        bytes_per_s=gpu.bandwidth_gbps * 1e9 * BANDWIDTH_EFFICIENCY,
        comm_s_per_token=comm_tok,
        comm_s_fixed=comm_fixed,
        overhead_s=STEP_OVERHEAD_S,
        pipeline_stages=pp,
    )


# --- token prices: what the autoscaler's compute floor charges per token ---


@dataclass(frozen=True, kw_only=True)
class LengthModel:
    """Mean request lengths of the pool's traffic, in tokens."""

    mean_prompt_tokens: float
    mean_output_tokens: float

    def __post_init__(self) -> None:
        if not (self.mean_prompt_tokens >= 0 and self.mean_output_tokens >= 0):
            raise ValueError("LengthModel: mean token counts must be finite and >= 0")


# Share of a request's tokens that are output when nothing better is known: the Azure LLM
# inference trace 2023, conversation set (mean prompt 1,154.7, mean output 211.1 tokens; see
# /work/shared/traces/stats.json), the most output-heavy of the public chat traces kvcap uses.
OUTPUT_SHARE = 0.155


def length_model_for(pool: PoolPlan) -> LengthModel:
    """Mean prompt and output tokens of a planned pool's traffic, from the request length the plan
    sized each sequence for (KV per replica x (1 - headroom) / sequences per replica), split by
    OUTPUT_SHARE."""
    per_request = pool.kv_tokens_per_replica * (1 - pool.headroom_percent / 100)
    if pool.concurrency_per_replica > 0:
        per_request /= pool.concurrency_per_replica
    per_request = max(1.0, min(per_request, float(pool.max_model_len)))
    return LengthModel(
        mean_prompt_tokens=per_request * (1 - OUTPUT_SHARE),
        mean_output_tokens=per_request * OUTPUT_SHARE,
    )


def token_costs(
    step: StepModel,
    *,
    chunk_tokens: int,
    max_num_seqs: int,
    kv_tokens_per_replica: int,
    length: LengthModel,
    target_kv_utilization_percent: int,
) -> tuple[float, float]:
    """(prefill, decode) seconds of replica step time per prompt token and per generated token,
    from the step-time model the planner and simulator use: a full `chunk_tokens` prefill step
    over its tokens, and one decode step of the batch a replica holds at the KV target (mean
    context = prompt + half the output) over that batch. The batch at the target, not the
    observed one: the observed batch shrinks as replicas are added, and per-token decode cost
    with it, which would feed back into more replicas."""
    chunk = max(1, chunk_tokens)
    prefill = step.step_time(chunk, pairs(0, chunk), 0, 0) / chunk
    ctx = max(1, int(length.mean_prompt_tokens + length.mean_output_tokens / 2))
    at_target = target_kv_utilization_percent / 100 * kv_tokens_per_replica / ctx
    batch = max(1, min(max_num_seqs, int(at_target)))
    decode = step.decode_step(batch, batch * ctx) / batch
    return prefill, decode
