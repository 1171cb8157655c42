"""vLLM's GPU memory accounting, reimplemented as pure arithmetic.

Given a model (`ModelArch`), a GPU and the `vllm serve` flags, predict what vLLM prints at startup:
"Available KV cache memory: X GiB", "GPU KV cache size: N tokens", "Maximum concurrency for L tokens
per request: Cx", or its refusal to start. The KV part follows vLLM V1's
`vllm/v1/core/kv_cache_utils.py` (`get_kv_cache_groups`, `get_kv_cache_config_from_groups`,
`_report_kv_cache_config`, `get_max_concurrency_for_kv_cache_config`,
`_check_enough_kv_cache_memory`) and the per-layer specs of
`vllm/v1/kv_cache_interface.py`; V0 follows `vllm/worker/cache_engine.py` (`get_cache_block_size`).
The non-KV part (activation peak, non-torch memory, CUDA graphs) is a calibrated model: see
`kvcap/capacity/data/overheads.yaml` and `benchmarks/calibrate_overheads.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from kvcap.api.errors import InvalidArgument
from kvcap.capacity.arch import CHUNKED, CROSS, DTYPE_BYTES, FULL, MAMBA, MLA, SLIDING, ModelArch
from kvcap.capacity.catalog import GIB, Gpu
from kvcap.capacity.vllm_version import VllmProfile, profile, unserved_reason

KV_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16", "float16", "fp8_inc", "fp8_ds_mla")
DEFAULT_BLOCK_SIZE = 16  # vllm/config/cache.py DEFAULT_BLOCK_SIZE
_BLOCK_SIZES = (1, 8, 16, 32, 64, 128, 256, 512, 1024)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True, slots=True)
class ServeArgs:
    """The `vllm serve` flags that affect memory, spelled as vLLM spells them (None = vLLM's
    default)."""

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    decode_context_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    kv_cache_dtype: str = "auto"
    block_size: int | None = None
    quantization: str | None = None
    kv_cache_memory_bytes: int | None = None
    vllm_version: str | None = None
    enforce_eager: bool = False
    disable_hybrid_kv_cache_manager: bool = False
    dtype: str = "auto"  # --dtype: 'auto' (checkpoint dtype; float32 served as bf16) or explicit
    # a team's own measurements (kvcap calibrate); the one matching model, GPU and version applies
    calibrations: tuple[Calibration, ...] = ()


@dataclass(frozen=True, slots=True)
class Calibration:
    """Corrections measured on a real launch (`kvcap calibrate --write-override`): what vLLM logged
    minus what kvcap predicted, per component, for one model on one GPU product and vLLM version.
    Applied on top of the model's prediction, so they carry over to other flags of the same
    setup."""

    model: str
    gpu: str
    vllm_version: str
    weights_delta_bytes: int = 0
    activation_delta_bytes: int = 0
    non_torch_delta_bytes: int = 0
    cudagraph_delta_bytes: int = 0
    source: str = ""

    def matches(self, model: str, gpu: str, version: str) -> bool:
        return (self.model.lower() == model.lower() and self.gpu == gpu
                and self.vllm_version == version)


@dataclass(frozen=True, slots=True)
class KvGroup:
    kind: str
    layers: int  # layers in this group on the worker that sizes the cache
    blocks_per_request: int  # blocks one max_model_len request needs in this group


@dataclass(frozen=True, slots=True)
class Estimate:
    """What vLLM would do with these flags on this GPU. Byte counts are per GPU."""

    model: str
    gpu: str
    vllm_version: str
    engine: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    decode_context_parallel_size: int
    gpus_per_replica: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    kv_cache_dtype: str
    kv_dtype_bytes: int
    gpu_memory_utilization: float
    gpu_total_bytes: int
    weights_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    cudagraph_bytes: int
    available_kv_bytes: int
    kv_memory_given: bool
    kv_bytes_per_token: int  # all KV layers on this GPU, one token, full-attention equivalent
    page_bytes: int  # bytes of one block of one layer (after page-size unification)
    group_size: int
    groups: tuple[KvGroup, ...]
    num_blocks: int
    kv_tokens: int  # the "GPU KV cache size: N tokens" line
    max_concurrency: float  # the "Maximum concurrency for L tokens per request: Cx" line
    request_kv_bytes: int  # KV one max_model_len request needs on this GPU
    state_bytes_per_request: int  # Mamba / linear-attention state per request on this GPU
    fits: bool
    reason: str  # empty when fits
    estimated_max_model_len: int  # largest max_model_len that would fit (vLLM's own estimate)
    calibration: str = ""  # the applied calibration's source, empty when none applied

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "gpu": self.gpu,
            "vllm_version": self.vllm_version,
            "engine": self.engine,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "decode_context_parallel_size": self.decode_context_parallel_size,
            "gpus_per_replica": self.gpus_per_replica,
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "block_size": self.block_size,
            "kv_cache_dtype": self.kv_cache_dtype,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "gpu_memory_gib": round(self.gpu_total_bytes / GIB, 2),
            "kv_bytes_per_token_per_gpu": self.kv_bytes_per_token,
            "weights_gib_per_gpu": round(self.weights_bytes / GIB, 3),
            "activation_gib_per_gpu": round(self.activation_bytes / GIB, 3),
            "non_torch_gib_per_gpu": round(self.non_torch_bytes / GIB, 3),
            "cudagraph_gib_per_gpu": round(self.cudagraph_bytes / GIB, 3),
            "available_kv_gib_per_gpu": round(self.available_kv_bytes / GIB, 3),
            "kv_cache_memory_bytes": self.available_kv_bytes,
            "kv_memory_given": self.kv_memory_given,
            "num_gpu_blocks": self.num_blocks,
            "kv_cache_groups": len(self.groups),
            "kv_tokens": self.kv_tokens,
            "max_concurrency": round(self.max_concurrency, 2),
            "request_kv_gib": round(self.request_kv_bytes / GIB, 3),
            "fits": self.fits,
            "reason": self.reason,
            "estimated_max_model_len": self.estimated_max_model_len,
            "calibration": self.calibration,
        }


# ---------------------------------------------------------------------------------------------
# Defaults vLLM picks
# ---------------------------------------------------------------------------------------------

def default_batch_limits(gpu: Gpu, prof: VllmProfile) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) `vllm serve` picks (OPENAI_API_SERVER usage context).

    vllm/engine/arg_utils.py; the rule that applies depends on the version (`vllm_version._RULES`,
    "batch_defaults"). V0 profiled max(max_model_len, 2048) tokens without chunked prefill; the
    caller handles that.
    """
    name = gpu.name.upper()
    rule = prof.batch_defaults
    if rule == "h100":
        return 256, (8192 if ("H100" in name or "H200" in name) else 2048)
    large = rule in ("mem70", "mem70-no-a100") and gpu.memory_bytes >= 70 * GIB
    if large and (rule == "mem70" or "A100" not in name):
        return 1024, 8192
    return 256, 2048


def backend_block_size(arch: ModelArch, gpu: Gpu, prof: VllmProfile) -> int | None:
    """The block size the default attention backend forces when `--block-size` is not given (None:
    vLLM's DEFAULT_BLOCK_SIZE). MLA on Hopper runs FlashMLA, which supports only 64-token blocks
    (PR #13747 sets it; vllm/platforms/cuda.py); on Blackwell CUTLASS MLA, 128 (the override that
    PR #24692 copies for FlashInfer MLA)."""
    if not arch.is_mla or prof.engine != "V1" or gpu.vendor != "nvidia":
        return None
    name = gpu.name.upper()
    if any(k in name for k in ("B200", "B300", "GB200", "GB300")):
        return 128
    if any(k in name for k in ("H100", "H200", "H20", "H800", "GH200")):
        return 64
    return None


def kv_dtype_bytes(kv_cache_dtype: str, arch: ModelArch) -> int:
    if kv_cache_dtype not in KV_DTYPES:
        raise InvalidArgument(
            f"--kv-cache-dtype '{kv_cache_dtype}' is not supported; must be one of "
            f"{', '.join(KV_DTYPES)}"
        )
    if kv_cache_dtype.startswith("fp8"):
        return 1
    if kv_cache_dtype in ("bfloat16", "float16"):
        return 2
    return arch.dtype_bytes


def pp_layer_split(num_layers: int, pp: int) -> list[tuple[int, int]]:
    """Layer ranges per pipeline stage, as vllm/distributed/utils.py `get_pp_indices` splits them:
    even split, with the remainder going to the stages before the last one."""
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    ranges, start = [], 0
    for n in parts:
        ranges.append((start, start + n))
        start += n
    return ranges


# ---------------------------------------------------------------------------------------------
# KV cache layout (pure functions of the model and flags)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Layout:
    kinds: tuple[str, ...]  # effective kind per KV-holding layer (after version rules)
    attn_page_per_token: int  # bytes per token per attention layer on one GPU
    mamba_page: int  # padded state bytes per Mamba layer on one GPU (0 if none)
    block_size: int
    page_bytes: int  # unified page size per block per layer


def _effective_kinds(arch: ModelArch, prof: VllmProfile, disable_hybrid: bool) -> tuple[str, ...]:
    hybrid = prof.hybrid_allocator and not disable_hybrid and prof.engine == "V1"
    return _kinds_for(arch.layer_kinds, hybrid)


@cache
def _kinds_for(layer_kinds: tuple[str, ...], hybrid: bool) -> tuple[str, ...]:
    out = []
    for kind in layer_kinds:
        if kind in (SLIDING, CHUNKED) and not hybrid:
            kind = FULL  # without the hybrid allocator, local layers keep KV for every token
        if kind == CROSS:
            kind = FULL  # V0 (and mllama on V1) allocate self-attention-sized KV for these layers
        out.append(kind)
    return tuple(out)


def _layout(arch: ModelArch, tp: int, kv_bytes: int, block_size: int | None, prof: VllmProfile,
            disable_hybrid: bool, kv_cache_dtype: str) -> _Layout:
    kinds = _effective_kinds(arch, prof, disable_hybrid)
    if arch.is_mla:
        # MLA keeps one latent (kv_lora_rank + rope dims) per token, replicated on every TP rank.
        # fp8_ds_mla: MLAAttentionSpec's FlashMLA sparse fp8 layout, 656 bytes per token
        per_token = 656 if kv_cache_dtype == "fp8_ds_mla" else arch.mla_latent_dim * kv_bytes
        # DeepSeek sparse attention (V3.2, GLM-5): each MLA layer's lightning-indexer keys ride in
        # the same blocks (fp8 + scales, independent of --kv-cache-dtype). Checked against the
        # DeepSeek-V3.2 H200/B200 logs of the validation set: 61 x (1152 + 132) B per token.
        per_token += getattr(arch, "indexer_bytes_per_token", 0)
    else:
        # K and V, heads split by TP and replicated when kv_heads < TP (max(1, kv_heads // tp)).
        heads = max(1, arch.num_kv_heads // tp)
        per_token = heads * (arch.head_dim + arch.head_dim_v) * kv_bytes
    n_attn = sum(1 for k in kinds if k != MAMBA)
    bs = block_size or DEFAULT_BLOCK_SIZE
    mamba_page = 0
    if arch.mamba is not None and MAMBA in kinds:
        mamba_page = arch.mamba.bytes_per_rank(tp, arch.dtype_bytes)
        if block_size is None and n_attn:
            # HybridAttentionMambaModelConfig.verify_and_update_config: grow the attention block so
            # one attention page holds at least one Mamba state, in multiples of the kernel
            # alignment.
            align = 16
            attn_block = align * cdiv(mamba_page, align * per_token)
            bs = max(bs, attn_block)
        if n_attn:
            mamba_page = max(mamba_page, bs * per_token)  # Mamba page padded to the attention page
    page = bs * per_token if n_attn else mamba_page
    return _Layout(kinds, per_token, mamba_page, bs, page)


@cache  # pure and called for every estimate: the planner asks about the same model many times
def _group_layers(kinds: tuple[str, ...],
                  stage: tuple[int, int]) -> tuple[list[tuple[str, int]], int]:
    """Split layers into KV cache groups (`_get_kv_cache_groups_uniform_page_size`) and project them
    onto one pipeline stage. Returns [(kind, layers on this stage)] per group and the group
    count."""
    by_kind: dict[str, list[int]] = {}
    for idx, kind in enumerate(kinds):
        by_kind.setdefault(kind, []).append(idx)
    lo, hi = stage
    if len(by_kind) == 1:
        kind, idxs = next(iter(by_kind.items()))
        return [(kind, sum(1 for i in idxs if lo <= i < hi))], 1
    sizes = [len(v) for v in by_kind.values()]
    group_size = min(sizes)
    if max(sizes) < min(sizes) * 1.5:
        group_size = max(sizes)
    groups: list[tuple[str, int]] = []
    for kind, idxs in by_kind.items():
        n_groups = cdiv(len(idxs), group_size)
        for g in range(n_groups):
            members = idxs[g::n_groups]
            groups.append((kind, sum(1 for i in members if lo <= i < hi)))
    return groups, len(groups)


def _blocks_per_request(kind: str, arch: ModelArch, max_model_len: int, block_size: int,
                        max_num_batched_tokens: int, cp: int) -> int:
    """`max_memory_usage_bytes` of one layer's spec, in blocks."""
    if kind in (FULL, MLA, CROSS):
        length = cdiv(max_model_len, cp) if cp > 1 else max_model_len
        return cdiv(length, block_size)
    if kind == SLIDING:
        assert arch.sliding_window is not None
        tokens = min(arch.sliding_window - 1 + max_num_batched_tokens, max_model_len)
        return cdiv(tokens, block_size) + 1
    if kind == CHUNKED:
        assert arch.attention_chunk_size is not None
        chunk = min(arch.attention_chunk_size + max_num_batched_tokens, max_model_len)
        return cdiv(chunk, block_size)
    if kind == MAMBA:
        return 1  # mamba_cache_mode "none": one state page per request
    raise AssertionError(kind)


# ---------------------------------------------------------------------------------------------
# Weights and non-KV overhead
# ---------------------------------------------------------------------------------------------

_QUANT_FLAG_BITS = {"fp8": 8.0, "fbgemm_fp8": 8.0, "awq": 4.25, "awq_marlin": 4.25, "gptq": 4.25,
                    "gptq_marlin": 4.25, "mxfp4": 4.25, "modelopt_fp4": 4.5, "nvfp4": 4.5,
                    "bitsandbytes": 4.25, "compressed-tensors": 8.0, "experts_int8": 8.0,
                    "int8": 8.0, "modelopt": 8.0, "none": 16.0}


# gpt-oss loads 13.64 GiB (20b) and 65.97 GiB (120b) where 4.25-bit experts predict ~8% less: vLLM
# pads the mxfp4 expert tensors for its kernels (llm-d v0.19 logs; vllm #23278, v0.10.1).
MXFP4_EXPERT_FACTOR = 1.088


def weight_bytes_per_gpu(arch: ModelArch, tp: int, pp: int, quantization: str | None) -> int:
    """Model weights resident on one GPU of the largest pipeline stage.

    Embedding and lm_head stay in the model dtype (vocab-parallel, split by TP); linear layers take
    the checkpoint's quantization (or the `--quantization` flag's); mxfp4 (gpt-oss) quantizes only
    the MoE experts. Everything else is split by TP x PP. Verified against "Model loading took X
    GiB".
    """
    method = (quantization or arch.quant_method or "").lower() or None
    bits = arch.quant_bits if (method and method == arch.quant_method) else None
    if method and bits is None:
        if method not in _QUANT_FLAG_BITS:
            raise InvalidArgument(
                f"--quantization '{quantization}' is not known to kvcap; known: "
                f"{', '.join(sorted(_QUANT_FLAG_BITS))}"
            )
        bits = _QUANT_FLAG_BITS[method]
    wb = arch.dtype_bytes
    embed = arch.embedding_parameters * wb
    # Routers, MLA down-projections and the DSA indexer are whole on every TP rank
    # (`arch.replicated_weights` cites vLLM); everything else is split by TP x PP.
    rep_q, rep_d = arch.replicated_parameters, arch.replicated_dtype_parameters
    body_params = max(0, arch.num_parameters - arch.embedding_parameters - rep_q - rep_d)
    quantized, q_bytes = False, float(wb)
    if method is None or bits is None or bits >= 16:
        body: float = body_params * wb
    elif method == "mxfp4" and arch.expert_parameters:
        quantized = True
        pad = MXFP4_EXPERT_FACTOR
        body = arch.expert_parameters * bits / 8 * pad + (body_params - arch.expert_parameters) * wb
    else:
        quantized, q_bytes = True, bits / 8
        # the vision tower and the attention projections the checkpoint's ignore list names stay
        # in the model dtype (`arch.ignored_attention`)
        keep = arch.vision_parameters + arch.ignored_parameters
        body = (body_params - keep) * bits / 8 + keep * wb
    ign_rep = arch.ignored_replicated_parameters if quantized else 0
    replicated = (rep_q - ign_rep) * q_bytes + ign_rep * wb + rep_d * wb
    # MLA backends dequantize kv_b_proj into W_UK/W_UV (model dtype) beside the quantized weight.
    absorbed = arch.mla_absorbed_parameters * wb if quantized else 0
    embed_on_stage = embed if pp == 1 else embed / 2
    # RoPE's cos/sin table, whole on every GPU (`arch.rope_tables`)
    rope = arch.rope_caches * arch.max_position_embeddings * arch.rotary_dim * wb
    return int((body + absorbed) / (tp * pp) + replicated / pp + embed_on_stage / tp + rope)


def rocm_moe_padding_bytes(arch: ModelArch, tp: int, quantization: str | None) -> int:
    """Bytes vLLM adds on ROCm to unquantized MoE expert weights, per GPU.

    vllm/model_executor/layers/fused_moe/layer.py, `UnquantizedFusedMoEMethod._maybe_pad_weight`
    (applied to w13 and w2 in `process_weights_after_loading`, inside the "Model loading took"
    measurement): with `VLLM_ROCM_MOE_PADDING` (vllm/envs.py, default "1") on ROCm, a weight whose
    row stride is a multiple of 512 bytes is re-allocated with 256 more bytes per row (`F.pad`, then
    sliced back, so the padded storage is what stays) and the original freed (`empty_cache`).
    One rank's w13 is (experts, 2I/TP, H) -- rows of H elements; its w2 is (experts, H, I/TP) --
    rows of I/TP elements. Nemotron-H's experts are not gated (w13 has I/TP rows).
    """
    if (not arch.is_moe or not arch.moe_intermediate_size or not arch.expert_parameters
            or (quantization or arch.quant_method)):
        return 0
    mult = 3 if moe_experts_gated(arch) else 2
    inter, hidden, wb = arch.moe_intermediate_size, arch.hidden_size, arch.dtype_bytes
    layer_experts = arch.expert_parameters // (mult * hidden * inter)  # MoE layers x experts
    rows = 0
    if hidden * wb % 512 == 0:
        rows += (mult - 1) * inter // tp  # w13 rows on this rank
    if inter // tp * wb % 512 == 0:
        rows += hidden  # w2 rows
    return layer_experts * rows * 256


@dataclass(frozen=True, slots=True)
class OverheadModel:
    """Coefficients of the non-KV memory model for one profiler era (see data/overheads.yaml)."""

    act_const_gib: float
    act_per_token_hidden: float  # bytes per (profiled token x hidden size)
    act_per_seq_vocab: float  # bytes per (dummy sampler request x vocab) -- the sampler's batch
    act_per_token_moe: float  # bytes per (token x experts per token x expert width / TP)
    act_moe_const_gib: float  # fixed extra for MoE models
    amd_extra_gib: float  # fixed extra on AMD GPUs (ROCm), fitted like the rest
    non_torch_gib: dict[int, float]  # by TP size
    non_torch_pp_only_gib: float  # TP 1 with pipeline parallelism
    cudagraph_gib: float
    cudagraph_per_layer_mib: float
    cudagraph_moe_gib: float  # MoE models capture larger graphs
    mxfp4_expert_factor: float  # vLLM pads mxfp4 expert tensors for its kernels


def overhead_model_from(c: dict[str, Any]) -> OverheadModel:
    return OverheadModel(
        act_const_gib=float(c["act_const_gib"]),
        act_per_token_hidden=float(c["act_per_token_hidden"]),
        act_per_seq_vocab=float(c["act_per_seq_vocab"]),
        act_per_token_moe=float(c.get("act_per_token_moe", 0.0)),
        act_moe_const_gib=float(c.get("act_moe_const_gib", 0.0)),
        amd_extra_gib=float(c.get("amd_extra_gib", 0.0)),
        non_torch_gib={int(k): float(v) for k, v in c["non_torch_gib"].items()},
        non_torch_pp_only_gib=float(c.get("non_torch_pp_only_gib", 0.1)),
        cudagraph_gib=float(c.get("cudagraph_gib", 0.0)),
        cudagraph_per_layer_mib=float(c.get("cudagraph_per_layer_mib", 0.0)),
        cudagraph_moe_gib=float(c.get("cudagraph_moe_gib", 0.0)),
        mxfp4_expert_factor=float(c.get("mxfp4_expert_factor", 1.0)),
    )


@cache
def overhead_models() -> dict[str, OverheadModel]:
    raw = yaml.safe_load((Path(__file__).parent / "data" / "overheads.yaml").read_text())
    return {era: overhead_model_from(c) for era, c in raw["eras"].items()}


def sampler_requests(seqs: int, tokens: int, prof: VllmProfile) -> int:
    """Requests in the profile run's dummy sampler batch (V1 `_dummy_run`: min(tokens, seqs))."""
    return min(seqs, tokens) if prof.sampler_requests_capped_by_tokens else seqs


# vllm/envs.py: VLLM_FUSED_MOE_CHUNK_SIZE, 16 * 1024 tokens in current releases (32,768 in older
# ones; it matters only when more than 16,384 tokens are profiled): the fused-MoE kernel runs, and
# sizes its workspaces for, at most that many tokens at a time.
FUSED_MOE_CHUNK_SIZE = 16 * 1024


def fused_moe_workspace_bytes(arch: ModelArch, tp: int, tokens: int) -> int:
    """Bytes of the Triton fused-MoE kernel's buffers for one MoE layer in the profile run.

    vllm/model_executor/layers/fused_moe/fused_moe.py, `TritonExperts.workspace_shapes` (the
    modular kernel; read at the v0.19 tree): workspace1 = (M, top_k, max(N / 2, K)), workspace2 =
    (M, top_k, max(N, K)), output = (M, K), in the activation dtype, with M the tokens of one chunk
    (`FUSED_MOE_CHUNK_SIZE`), N = 2 x moe_intermediate_size / TP (one rank's merged gate/up
    projection) and K = hidden size. They are live together while one layer runs and reused by the
    next, so one layer's worth is the peak. Non-gated experts (`moe_experts_gated`) have
    N = I/TP and an activation output of N. Charged to every V1 version (v0.8+): the pre-modular
    `fused_experts_impl` allocated the same caches (cache1/cache3 sharing M x top_k x max(N, K),
    cache2 M x top_k x N / 2, and the output). Measured against vLLM's own profiler lines: the v0.19
    MoE activation peaks of the validation set (DeepSeek-V2-Lite, Mixtral TP 2, Qwen3-30B-A3B,
    Qwen1.5-MoE, Llama-4-Scout) within 0.1 GiB. Not modelled: kernels that allocate elsewhere
    (ROCm AITER). Nemotron-3 Super's latent experts run at `moe_latent_size` (1,024), so K is
    that width there (vllm/model_executor/models/nemotron_h.py: the experts' input and output
    are the latent projection's).
    """
    if not (arch.is_moe and arch.experts_per_token and arch.moe_intermediate_size):
        return 0
    m = min(tokens, FUSED_MOE_CHUNK_SIZE)
    gated = moe_experts_gated(arch)
    n = (2 if gated else 1) * arch.moe_intermediate_size // tp
    act_out = n // 2 if gated else n  # `adjust_N_for_activation`: N for *_no_mul activations
    k = arch.moe_latent_size or arch.hidden_size
    elems = m * arch.experts_per_token * (max(act_out, k) + max(n, k)) + m * k
    return elems * arch.dtype_bytes


def moe_experts_gated(arch: ModelArch) -> bool:
    """Whether the routed experts are gated (merged gate/up w13, activation-and-multiply).
    vllm/model_executor/models/nemotron_h.py builds Nemotron-H's experts with `relu2_no_mul`
    (`is_act_and_mul=False`): up and down projections only. Every other MoE kvcap knows is gated."""
    return not any(a.startswith("NemotronH") for a in arch.architectures)


# Blackwell data-center GPUs (SM100): FlashInfer's TRT-LLM MoE kernels run there only.
_SM100 = ("B200", "GB200", "B300", "GB300")


def is_sm100(gpu: Gpu) -> bool:
    if gpu.compute_capability:
        return gpu.compute_capability.startswith("10.")
    return gpu.vendor == "nvidia" and gpu.name.upper() in _SM100


def profile_moe_workspace_bytes(arch: ModelArch, gpu: Gpu, tp: int, tokens: int,
                                prof: VllmProfile, quantization: str | None) -> int:
    """The fused-MoE workspace the V1 profile run allocates on this GPU: the Triton experts'
    (`fused_moe_workspace_bytes`) unless the version's kernel oracle picks FlashInfer's fused
    kernel -- quantized (fp8 / NVFP4) experts on Blackwell from 0.16 (`vllm_version`,
    "blackwell_quantized_moe_flashinfer") -- and mxfp4 experts by their own backend."""
    if prof.engine != "V1" or not arch.is_moe:
        return 0
    method = (quantization or arch.quant_method or "").lower()
    if method == "mxfp4":
        return _mxfp4_workspace_bytes(arch, gpu, tp, tokens)
    if prof.blackwell_quantized_moe_flashinfer and method and is_sm100(gpu):
        return 0
    return fused_moe_workspace_bytes(arch, tp, tokens)


def _mxfp4_workspace_bytes(arch: ModelArch, gpu: Gpu, tp: int, tokens: int) -> int:
    """mxfp4 experts (gpt-oss) by the backend `get_mxfp4_backend` picks
    (vllm/model_executor/layers/quantization/mxfp4.py): FlashInfer's fused MoE on SM100 (no Triton
    workspace); on Hopper, with no FlashInfer env override, OpenAI's Triton kernels
    (`OAITritonExperts.workspace_shapes`: workspace1 (0, 0), workspace2 (M x top_k, N / 2) for the
    gated swiglu output -- the matmul fuses the activation, so the N-wide product never exists --
    and output (M, K)); elsewhere (Marlin, compute capability < 9) the Triton experts' shapes as an
    upper bound. v0.19 H100 logs: gpt-oss-20b activation 2.87 GiB at TP 1 and 2, 0.35 / 0.27 GiB
    below the Triton-shaped charge and within 0.05 GiB of this one."""
    if is_sm100(gpu):
        return 0
    if gpu.vendor == "nvidia" and gpu.name.upper().startswith(("H100", "H200", "GH200")):
        m = min(tokens, FUSED_MOE_CHUNK_SIZE)
        swiglu_out = arch.moe_intermediate_size // tp
        elems = m * arch.experts_per_token * swiglu_out + m * arch.hidden_size
        return elems * arch.dtype_bytes
    return fused_moe_workspace_bytes(arch, tp, tokens)


def overhead_bytes(arch: ModelArch, tp: int, pp: int, tokens: int, seqs: int, prof: VllmProfile,
                   enforce_eager: bool, model: OverheadModel | None = None,
                   vendor: str = "nvidia", moe_workspace: int | None = None
                   ) -> tuple[int, int, int]:
    """(activation peak, non-torch increase, CUDA graph) bytes on one GPU for vLLM's profile run.

    The activation peak of V1 is dominated by the sampler's dummy batch (min(max_num_seqs,
    max_num_batched_tokens) requests x vocab logits, gathered in full on every rank, so not divided
    by TP; its bytes per element depend on the sampler implementation of the version, see
    `vllm_version`) plus hidden states of the profiled tokens and, for MoE, the routed experts'
    intermediate activations. With pipeline parallelism only the last stage samples; vLLM sizes the
    cache by the minimum over stages, so the last stage counts.
    """
    m = model or overhead_models()[prof.profiler_era]
    dtype_scale = arch.dtype_bytes / 2
    reqs = sampler_requests(seqs, tokens, prof)
    act = (m.act_const_gib * GIB
           + m.act_per_token_hidden * tokens * arch.hidden_size * dtype_scale
           + m.act_per_seq_vocab * reqs * arch.vocab_size)
    if arch.is_moe:
        act += m.act_moe_const_gib * GIB
        if moe_workspace is not None:
            act += moe_workspace
        elif prof.engine == "V1":
            act += fused_moe_workspace_bytes(arch, tp, tokens)
    if vendor == "amd":
        act += m.amd_extra_gib * GIB
    if arch.is_moe and arch.experts_per_token:
        width = arch.experts_per_token * arch.moe_intermediate_size
        act += m.act_per_token_moe * tokens * width / tp
    if tp > 1:
        keys = sorted(m.non_torch_gib)
        nt_key = max((k for k in keys if k <= tp), default=keys[0])
        non_torch = m.non_torch_gib[nt_key] * GIB
    elif pp > 1:
        non_torch = m.non_torch_pp_only_gib * GIB
    else:
        non_torch = m.non_torch_gib[1] * GIB
    graph = 0.0
    if prof.subtracts_cudagraph_memory and not enforce_eager:
        layers_here = cdiv(len(arch.layer_kinds) or 1, pp)
        graph = m.cudagraph_gib * GIB + m.cudagraph_per_layer_mib * (1 << 20) * layers_here
        if arch.is_moe:
            graph += m.cudagraph_moe_gib * GIB
    return max(0, int(act)), max(0, int(non_torch)), int(graph)


# ---------------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------------

def validate_parallelism(arch: ModelArch, tp: int, pp: int, dcp: int) -> None:
    """The checks vLLM makes before it loads anything (config/model.py
    verify_with_parallel_config)."""
    if tp < 1 or pp < 1 or dcp < 1:
        raise InvalidArgument("--tensor-parallel-size, --pipeline-parallel-size and "
                              "--decode-context-parallel-size must be >= 1")
    if arch.num_attention_heads % tp:
        valid = [t for t in (1, 2, 4, 8, 16, 32) if arch.num_attention_heads % t == 0]
        raise InvalidArgument(
            f"--tensor-parallel-size {tp} must divide the model's {arch.num_attention_heads} "
            f"attention heads; valid sizes: {', '.join(map(str, valid))}"
        )
    n_layers = len(arch.layer_kinds) or 1
    if pp > n_layers:
        raise InvalidArgument(
            f"--pipeline-parallel-size {pp} exceeds the model's {n_layers} layers")
    if dcp > 1 and tp % dcp:
        raise InvalidArgument(
            f"--decode-context-parallel-size {dcp} must divide --tensor-parallel-size {tp}"
        )


def with_dtype(arch: ModelArch, dtype: str) -> ModelArch:
    """Apply `--dtype`: weights and an 'auto' KV cache take the serving dtype."""
    if dtype in ("auto", "", None):
        return arch
    aliases = {"half": "float16", "float": "float32", "bf16": "bfloat16", "fp16": "float16"}
    name = aliases.get(dtype, dtype)
    size = DTYPE_BYTES.get(name)
    if size is None:
        raise InvalidArgument(f"--dtype '{dtype}' must be one of auto, bfloat16, float16, float32")
    return replace(arch, dtype=name, dtype_bytes=size)


def estimate(arch: ModelArch, gpu: Gpu, args: ServeArgs,
             overheads: Mapping[str, OverheadModel] | None = None) -> Estimate:
    """Predict vLLM's startup memory accounting for one replica. `overheads` replaces the shipped
    overhead coefficients per profiler era (the accuracy benchmark's leave-one-source-out fits)."""
    prof = profile(args.vllm_version)
    unserved = unserved_reason(arch.architectures, prof.version)
    if unserved:
        raise InvalidArgument(f"{arch.name}: {unserved[0]} (--vllm-version {unserved[1]})")
    tp, pp = args.tensor_parallel_size, args.pipeline_parallel_size
    dcp = args.decode_context_parallel_size
    validate_parallelism(arch, tp, pp, dcp)
    util = args.gpu_memory_utilization
    if util is None:
        util = prof.default_gpu_memory_utilization
    if not 0 < util <= 1:
        raise InvalidArgument(f"--gpu-memory-utilization {util} must be in (0, 1]")
    max_model_len = args.max_model_len or arch.max_position_embeddings
    if max_model_len < 1:
        raise InvalidArgument("--max-model-len must be >= 1")
    if args.block_size is not None and args.block_size not in _BLOCK_SIZES:
        raise InvalidArgument(f"--block-size {args.block_size} must be one of 8, 16, 32, 64, 128 "
                              f"(or 1, 256, 512, 1024 on some backends)")
    d_seqs, d_tokens = default_batch_limits(gpu, prof)
    seqs = args.max_num_seqs or d_seqs
    tokens = args.max_num_batched_tokens or d_tokens
    if prof.engine == "V0" and not args.max_num_batched_tokens:
        tokens = max(max_model_len, 2048) if max_model_len <= 32768 else 2048
    arch = with_dtype(arch, args.dtype)
    kv_bytes = kv_dtype_bytes(args.kv_cache_dtype, arch)

    weights = weight_bytes_per_gpu(arch, tp, pp, args.quantization)
    if gpu.vendor == "amd":
        weights += cdiv(rocm_moe_padding_bytes(arch, tp, args.quantization), pp)
    total = gpu.memory_bytes
    given = args.kv_cache_memory_bytes is not None
    cal: Calibration | None = None
    if given:
        assert args.kv_cache_memory_bytes is not None
        act = non_torch = graph = 0
        available = args.kv_cache_memory_bytes
    else:
        act, non_torch, graph = overhead_bytes(
            arch, tp, pp, tokens, seqs, prof, args.enforce_eager,
            overheads[prof.profiler_era] if overheads else None, gpu.vendor,
            profile_moe_workspace_bytes(arch, gpu, tp, tokens, prof, args.quantization))
        cal = next((c for c in args.calibrations if c.matches(arch.name, gpu.name, prof.label)),
                   None)
        if cal is not None:
            weights = max(0, weights + cal.weights_delta_bytes)
            act = max(0, act + cal.activation_delta_bytes)
            non_torch = max(0, non_torch + cal.non_torch_delta_bytes)
            if graph:  # only versions that subtract CUDA-graph memory, and not with --enforce-eager
                graph = max(0, graph + cal.cudagraph_delta_bytes)
        available = int(total * util) - weights - act - non_torch - graph

    lay = _layout(arch, tp, kv_bytes, args.block_size or backend_block_size(arch, gpu, prof), prof,
                  args.disable_hybrid_kv_cache_manager,
                  args.kv_cache_dtype)
    bs = lay.block_size
    stages = pp_layer_split(len(arch.layer_kinds), pp)
    # The first stage sizes the cache when stages are uneven only if it has the most layers; vLLM
    # takes the minimum block count over all workers, so evaluate every stage.
    groups_all = [_group_layers(lay.kinds, st) for st in stages]
    stage_attn_layers = max(sum(1 for k in lay.kinds[a:b] if k != MAMBA) for a, b in stages)
    per_token_gpu = lay.attn_page_per_token * stage_attn_layers
    n_groups = groups_all[0][1]
    num_blocks = None
    sizing = groups_all[0][0]
    for groups, _ in groups_all:
        gsize = max(n for _, n in groups) or 1
        blocks = max(int(max(available, 0) // lay.page_bytes // gsize), 0)
        if num_blocks is None or blocks < num_blocks:
            num_blocks, sizing = blocks, groups
    assert num_blocks is not None
    group_size = max(n for _, n in sizing) or 1
    kv_groups = tuple(
        KvGroup(kind, n, _blocks_per_request(kind, arch, max_model_len, bs,
                                             tokens, dcp))
        for kind, n in sizing
    )
    blocks_per_req = sum(g.blocks_per_request for g in kv_groups)
    request_bytes = group_size * lay.page_bytes * blocks_per_req
    state_bytes = sum(g.layers for g in kv_groups if g.kind == MAMBA) * lay.mamba_page

    if prof.engine == "V0":
        # V0: one block holds block_size tokens of every layer (cache_engine.get_cache_block_size).
        stage_layers = max(b - a for a, b in stages)
        block_bytes = bs * lay.attn_page_per_token * stage_layers
        num_blocks = max(int(max(available, 0) // block_bytes), 0) if block_bytes else 0
        kv_tokens = num_blocks * bs
        concurrency = kv_tokens / max_model_len
        request_bytes = cdiv(max_model_len, bs) * block_bytes
        group_size = stage_layers
    else:
        kv_tokens = num_blocks // max(n_groups, 1) * bs * dcp
        concurrency = num_blocks / blocks_per_req if blocks_per_req else 0.0
        if n_groups > 1 and prof.hybrid_token_line_from_concurrency:
            kv_tokens = int(concurrency * max_model_len)

    fits, reason, est_len = True, "", max_model_len
    if available <= 0 or num_blocks <= 0:
        fits = False
        reason = "No available memory for the cache blocks"
        est_len = 0
    elif (prof.engine == "V1" and request_bytes > available) or (
            prof.engine == "V0" and max_model_len > kv_tokens):
        fits = False
        est_len = _max_len_that_fits(arch, lay, sizing, available, tokens, dcp, group_size,
                                     max_model_len, prof.engine)
        if prof.engine == "V0":
            reason = (f"The model's max seq len ({max_model_len}) is larger than the maximum "
                      f"number of tokens that can be stored in KV cache ({kv_tokens})")
        else:
            reason = (f"To serve at least one request with the model's max seq len "
                      f"({max_model_len}), ({request_bytes / GIB:.2f} GiB KV cache is needed, "
                      f"which is larger than the available KV cache memory "
                      f"({available / GIB:.2f} GiB). Based on the available memory, the estimated "
                      f"maximum model length is {est_len}")
    return Estimate(
        model=arch.name, gpu=gpu.name, vllm_version=prof.label, engine=prof.engine,
        tensor_parallel_size=tp, pipeline_parallel_size=pp, decode_context_parallel_size=dcp,
        gpus_per_replica=tp * pp, max_model_len=max_model_len, max_num_seqs=seqs,
        max_num_batched_tokens=tokens, block_size=bs, kv_cache_dtype=args.kv_cache_dtype,
        kv_dtype_bytes=kv_bytes, gpu_memory_utilization=util, gpu_total_bytes=total,
        weights_bytes=weights, activation_bytes=act, non_torch_bytes=non_torch,
        cudagraph_bytes=graph,
        available_kv_bytes=available, kv_memory_given=given, kv_bytes_per_token=per_token_gpu,
        page_bytes=lay.page_bytes, group_size=group_size, groups=kv_groups, num_blocks=num_blocks,
        kv_tokens=kv_tokens, max_concurrency=concurrency, request_kv_bytes=request_bytes,
        state_bytes_per_request=state_bytes, fits=fits, reason=reason,
        estimated_max_model_len=est_len,
        calibration=(cal.source or "applied") if cal is not None else "",
    )


def _max_len_that_fits(arch: ModelArch, lay: _Layout, sizing: list[tuple[str, int]], available: int,
                       tokens: int, dcp: int, group_size: int, upper: int, engine: str) -> int:
    """Binary search, as `_estimate_max_model_len_from_groups` does."""
    def need(length: int) -> int:
        if engine == "V0":
            padded = cdiv(length, lay.block_size) * lay.block_size
            return padded * lay.attn_page_per_token * group_size
        blocks = sum(_blocks_per_request(kind, arch, length, lay.block_size, tokens, dcp)
                     for kind, _ in sizing)
        return group_size * lay.page_bytes * blocks

    if need(1) > available:
        return 0
    lo, hi, best = 1, upper, 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if need(mid) <= available:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best
