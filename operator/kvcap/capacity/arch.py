"""Read a Hugging Face `config.json` into the facts vLLM's memory accounting needs.

Pure: dict in, frozen dataclass out. Where vLLM derives a value (head size, KV heads, which layers
slide), the rule and its source are noted next to the code.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any

from kvcap.api.errors import InvalidModelConfig

# Layer kinds, as vLLM's KV cache specs distinguish them (vllm/v1/kv_cache_interface.py).
FULL = "full"  # FullAttentionSpec
SLIDING = "sliding"  # SlidingWindowSpec
CHUNKED = "chunked"  # ChunkedLocalAttentionSpec (Llama 4 local layers)
MLA = "mla"  # MLAAttentionSpec: one latent per token, not split by TP
MAMBA = "mamba"  # MambaSpec: a constant state per request (mamba1/2, linear attention, GDN)
CROSS = "cross"  # cross-attention to image/encoder tokens (mllama)
ATTENTION_KINDS = (FULL, SLIDING, CHUNKED, MLA, CROSS)

DTYPE_BYTES = {
    "float32": 4, "float": 4, "fp32": 4, "bfloat16": 2, "float16": 2, "half": 2, "bf16": 2, "fp16": 2,
}


@dataclass(frozen=True, slots=True)
class MambaState:
    """Per-layer recurrent state, unsharded. Bytes per rank = conv + ssm, each split by TP."""

    conv_elems: int  # (conv_kernel - 1) x conv_dim
    ssm_elems: int  # heads x head_dim x state (mamba2 / GDN) or intermediate x state (mamba1)
    ssm_dtype_bytes: int

    def bytes_per_rank(self, tp: int, dtype_bytes: int) -> int:
        return self.conv_elems // tp * dtype_bytes + self.ssm_elems // tp * self.ssm_dtype_bytes


@dataclass(frozen=True, slots=True)
class ModelArch:
    name: str
    model_type: str
    architectures: tuple[str, ...]
    layer_kinds: tuple[str, ...]  # one per decoder layer that holds KV or state
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    head_dim_v: int
    mla_latent_dim: int  # kv_lora_rank + qk_rope_head_dim (0 when not MLA)
    sliding_window: int | None
    attention_chunk_size: int | None
    mamba: MambaState | None
    dtype: str
    dtype_bytes: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    num_parameters: int
    embedding_parameters: int  # input embeddings + untied lm_head
    expert_parameters: int  # routed-expert weights (quantized separately by mxfp4)
    num_experts: int
    num_active_parameters: int | None
    quant_method: str | None  # from quantization_config: fp8, awq, gptq, mxfp4, compressed-tensors...
    quant_bits: float | None  # weight bits for quantized linear layers
    vision_parameters: int
    is_moe: bool
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    # LatentMoE (Nemotron-3 Super): the routed experts run at this width, between a hidden -> latent
    # and a latent -> hidden projection (config `moe_latent_size`); 0 = the hidden size
    moe_latent_size: int = 0
    # DeepSeek Sparse Attention lightning indexer (DeepSeek-V3.2, GLM-5): every MLA layer also
    # keeps an indexer key per token, `MLAAttentionSpec(num_kv_heads=1, head_size=index_head_dim
    # + index_head_dim // 128 * 4, dtype=uint8)` -- fp8 values plus one fp32 scale per 128 -- in
    # vllm/model_executor/models/deepseek_v2.py (DeepseekV32IndexerCache.get_kv_cache_spec;
    # Indexer.__init__ `head_dim + head_dim // quant_block_size * 4`). Bytes per token per MLA
    # layer; 0 if none.
    indexer_bytes_per_token: int = 0
    # Layers whose KV is shared with an earlier layer (Gemma 3n `num_kv_shared_layers`): vLLM gives
    # them `kv_sharing_target_layer_name` and no KV cache of their own; not in `layer_kinds`.
    kv_shared_layers: int = 0
    # Weights vLLM does not split by TP (see `replicated_weights`): counted in num_parameters,
    # held whole by every TP rank. `replicated_parameters` take the checkpoint's quantization,
    # `replicated_dtype_parameters` stay in the model dtype (routers, DSA indexer keys).
    replicated_parameters: int = 0
    replicated_dtype_parameters: int = 0
    # MLA's absorbed up-projections: kv_b_proj dequantized to the model dtype (W_UK, W_UV), kept
    # beside the quantized kv_b_proj on quantized checkpoints; split by TP like the heads.
    mla_absorbed_parameters: int = 0
    # Attention projections the checkpoint's quantization_config leaves unquantized (`ignore` /
    # `exclude_modules`): loaded in the model dtype. Split like the body / held whole (the MLA
    # down-projections and the DSA indexer's wq_b) respectively; see `ignored_attention`.
    ignored_parameters: int = 0
    ignored_replicated_parameters: int = 0
    # RoPE's precomputed cos/sin table: `rope_caches` tables of max_position_embeddings x
    # rotary_dim in the model dtype on every GPU (see `rope_tables`).
    rotary_dim: int = 0
    rope_caches: int = 0

    @property
    def num_attention_layers(self) -> int:
        return sum(1 for k in self.layer_kinds if k in ATTENTION_KINDS)

    @property
    def is_mla(self) -> bool:
        return self.mla_latent_dim > 0

    @property
    def kind_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for kind in self.layer_kinds:
            counts[kind] = counts.get(kind, 0) + 1
        return counts


def _get(cfg: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        value = cfg.get(name)
        if value is not None:
            return value
    return default


def _require_int(cfg: dict[str, Any], where: str, *names: str) -> int:
    value = _get(cfg, *names)
    if value is None:
        raise InvalidModelConfig(
            f"{where}: config.json has no '{names[0]}'"
            + (f" (nor {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else "")
            + "; kvcap needs it to size the KV cache"
        )
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidModelConfig(f"{where}: '{names[0]}' must be a positive integer, got {value!r}")
    return value


# Defaults of the transformers config classes, for configs that omit fields (HF `to_diff_dict` drops
# values equal to the class default). Source: transformers/models/<family>/configuration_<family>.py.
MODEL_TYPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma3_text": {"vocab_size": 262_208, "num_attention_heads": 8, "num_key_value_heads": 4,
                    "head_dim": 256, "max_position_embeddings": 131_072, "sliding_window": 4096,
                    "sliding_window_pattern": 6},
    "gemma2": {"num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
               "sliding_window": 4096, "vocab_size": 256_000},
    "mistral": {"vocab_size": 32000, "num_key_value_heads": 8},
}


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language-model part of a (possibly multimodal) config, with top-level dtype/quant kept and
    the transformers class defaults filled in."""
    inner = config.get("text_config") or config.get("llm_config") or config.get("language_config")
    if not isinstance(inner, dict):
        defaults = MODEL_TYPE_DEFAULTS.get(str(config.get("model_type")))
        return {**defaults, **config} if defaults else config
    if "model_type" not in inner and config.get("model_type") == "gemma3":
        inner = {**inner, "model_type": "gemma3_text"}
    merged = {**MODEL_TYPE_DEFAULTS.get(str(inner.get("model_type")), {}), **inner}
    for key in ("torch_dtype", "dtype", "quantization_config", "tie_word_embeddings"):
        if key not in merged and key in config:
            merged[key] = config[key]
    return merged


def _dtype(cfg: dict[str, Any], top: dict[str, Any]) -> str:
    raw = _get(top, "torch_dtype", "dtype") or _get(cfg, "torch_dtype", "dtype") or "bfloat16"
    name = str(raw).replace("torch.", "").lower()
    # vLLM --dtype auto serves float32 checkpoints in 16-bit (vllm/config/model.py `_resolve_auto_dtype`).
    return "bfloat16" if name in ("float32", "float", "fp32") else name


def _layer_kinds(cfg: dict[str, Any], n_layers: int, where: str) -> tuple[str, ...]:
    model_type = str(cfg.get("model_type", ""))
    window = cfg.get("sliding_window")
    linear = cfg.get("linear_attn_config")
    if isinstance(linear, dict) and linear.get("kda_layers") is not None:
        # Kimi-Linear (model_type kimi_linear): `kda_layers` / `full_attn_layers` are 1-based layer
        # numbers; KDA layers keep a recurrent state (MambaSpec), the others are MLA
        # (vllm/model_executor/models/kimi_linear.py).
        kda = {int(i) for i in linear["kda_layers"]}
        full = MLA if cfg.get("kv_lora_rank") else FULL
        return tuple(MAMBA if i + 1 in kda else full for i in range(n_layers))
    if cfg.get("kv_lora_rank"):
        kinds = [MLA] * n_layers
        # DeepSeek-V3 style multi-token-prediction layers are not loaded for plain serving.
        return tuple(kinds)

    # Mamba / linear-attention hybrids
    pattern = cfg.get("hybrid_override_pattern")
    if isinstance(pattern, str) and pattern:  # Nemotron-H: M=mamba, *=attention, -=MLP, E=MoE
        return tuple(MAMBA if c == "M" else FULL for c in pattern if c in "M*")
    layer_types = cfg.get("layer_types") or cfg.get("layers_block_type")
    if isinstance(layer_types, list) and layer_types:
        if len(layer_types) < n_layers:
            raise InvalidModelConfig(
                f"{where}: 'layer_types' lists {len(layer_types)} layers but num_hidden_layers is {n_layers}"
            )
        kinds = []
        # Gemma 3n: the last `num_kv_shared_layers` layers read earlier layers' KV and own none.
        own = n_layers - _kv_shared_layers(cfg, n_layers, where)
        for t in layer_types[:own]:
            t = str(t).lower()
            if t in ("sliding_attention", "sliding", "local", "local_attention"):
                kinds.append(SLIDING if window else FULL)
            elif t in ("chunked_attention",):
                kinds.append(CHUNKED)
            elif t in ("mamba", "mamba2", "linear_attention", "linear", "ssm", "gdn"):
                kinds.append(MAMBA)
            elif t in ("full_attention", "attention", "global", "full", "hybrid"):
                kinds.append(FULL)
            elif t in ("mlp", "moe", "ffn"):
                continue
            else:
                raise InvalidModelConfig(f"{where}: unknown layer type '{t}' in 'layer_types'")
        return tuple(kinds)
    if cfg.get("full_attention_interval") and cfg.get("linear_num_value_heads"):  # Qwen3-Next
        k = int(cfg["full_attention_interval"])
        return tuple(FULL if (i + 1) % k == 0 else MAMBA for i in range(n_layers))
    if cfg.get("attn_layer_period") and model_type == "jamba":
        period, offset = int(cfg["attn_layer_period"]), int(cfg.get("attn_layer_offset", 0))
        return tuple(FULL if i % period == offset else MAMBA for i in range(n_layers))
    if cfg.get("attn_layer_indices") is not None and model_type in ("bamba", "falcon_h1", "zamba2"):
        idx = set(cfg["attn_layer_indices"])
        return tuple(FULL if i in idx else MAMBA for i in range(n_layers))
    if model_type in ("mamba", "mamba2", "falcon_mamba"):
        return (MAMBA,) * n_layers

    # Sliding-window interleaving, per model family (vllm/model_executor/models/*.py)
    if window and model_type == "gemma2":  # even layers slide (gemma2.py)
        return tuple(SLIDING if i % 2 == 0 else FULL for i in range(n_layers))
    if window and model_type in ("gemma3_text", "gemma3", "cohere2"):
        period = int(cfg.get("sliding_window_pattern") or (6 if model_type.startswith("gemma3") else 4))
        return tuple(FULL if (i + 1) % period == 0 else SLIDING for i in range(n_layers))
    if cfg.get("attention_chunk_size") and model_type in ("llama4_text", "llama4"):
        # Llama 4: every 4th layer is global ("no_rope_layers" 0), others chunked-local.
        no_rope = cfg.get("no_rope_layers")
        if isinstance(no_rope, list) and len(no_rope) >= n_layers:
            return tuple(CHUNKED if no_rope[i] else FULL for i in range(n_layers))
        return tuple(FULL if (i + 1) % 4 == 0 else CHUNKED for i in range(n_layers))
    if model_type in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe") and cfg.get("use_sliding_window") \
            and window:
        first = int(cfg.get("max_window_layers", n_layers))
        return tuple(SLIDING if i >= first else FULL for i in range(n_layers))
    if model_type in ("mllama", "mllama_text_model") or cfg.get("cross_attention_layers"):
        # Llama 3.2 Vision: `cross_attention_layers` are counted in num_hidden_layers. vLLM never
        # ran mllama on the V1 engine ("MllamaForConditionalGeneration is not supported by the V1
        # Engine. Falling back to V0", vllm-project/vllm-ascend#1963 on v0.9.2); V0 sized its pool
        # over all num_hidden_layers, cross layers included, and the V0 encoder-decoder path (mllama
        # with it) was removed by vllm-project/vllm#24907 (Sep 2025, v0.11). V1's CrossAttentionSpec
        # (Whisper) charges cdiv(max_num_encoder_input_tokens, block) pages per request instead
        # (vllm/v1/kv_cache_interface.py @ 001cabc). The kind is kept distinct so the memory model
        # can apply the rule of the version it models.
        cross = set(cfg.get("cross_attention_layers") or ())
        return tuple(CROSS if i in cross else FULL for i in range(n_layers))
    # A global `sliding_window` on Llama-style models (Mistral v0.1, Phi-3) is ignored by vLLM V1's
    # Llama attention, which reads per-layer `layer_types` only (llama.py); all layers are full.
    return (FULL,) * n_layers


def _kv_shared_layers(cfg: dict[str, Any], n_layers: int, where: str) -> int:
    shared = int(cfg.get("num_kv_shared_layers") or 0)
    if shared < 0 or shared >= n_layers:
        raise InvalidModelConfig(f"{where}: num_kv_shared_layers ({shared}) must be between 0 and "
                                 f"num_hidden_layers - 1 ({n_layers - 1})")
    return shared


def _indexer_bytes(cfg: dict[str, Any]) -> int:
    dim = cfg.get("index_head_dim")
    if not cfg.get("index_topk") or not dim:
        return 0
    return int(dim) + int(dim) // 128 * 4


def replicated_weights(cfg: dict[str, Any], n_layers: int,
                       n_experts: int) -> tuple[int, int, int, int]:
    """(replicated quantized, replicated model-dtype, MLA absorbed, DSA indexer) parameters, from
    the shapes.

    vLLM holds these whole on every TP rank instead of splitting them (source: vllm
    `model_executor/models/deepseek_v2.py`, `mixtral.py`, `qwen3_moe.py` at any 2025-26 commit):
    - the MoE router (`ReplicatedLinear(..., quant_config=None)` / `GateLinear`): model dtype;
    - MLA's down-projections `q_a_proj` and `kv_a_proj_with_mqa` (`ReplicatedLinear`, or the fused
      `MergedColumnParallelLinear(..., disable_tp=True)`): quantized like the checkpoint;
    - DeepSeek sparse attention's indexer ("no tensor parallel, just replicated", PR #25896,
      v0.11.0): `wq_b` quantized, the fused `wk_weights_proj` in the model dtype
      (`quant_config=None`). The indexer is not in the model cards' 671B, so it is added.
    MLA backends also materialize `kv_b_proj` in the activation dtype for the absorbed decode path
    (`MLACommonImpl.process_weights_after_loading`: `get_and_maybe_dequant_weights` then W_UK /
    W_UV views): a second copy when the weights are quantized, a view when they are not (the
    caller decides: `memory.weight_bytes_per_gpu`). Checked on
    the validation set's DeepSeek-R1/V3.2 launches (H200/B200 TP 8: 1.2 GiB of the 1.4 GiB per GPU
    the plain split missed)."""
    hidden = int(cfg["hidden_size"])
    first_dense = int(_get(cfg, "first_k_dense_replace", default=0) or 0)
    mlp_only = set(cfg.get("mlp_only_layers") or ())
    step = int(_get(cfg, "decoder_sparse_step", "moe_layer_freq", default=1) or 1)
    pattern = cfg.get("hybrid_override_pattern")
    if not n_experts:
        moe_layers = 0
    elif isinstance(pattern, str) and pattern:
        moe_layers = pattern.count("E")
    else:
        moe_layers = sum(1 for i in range(n_layers) if i >= first_dense and i not in mlp_only
                         and ((i + 1) % step == 0 if step > 1 else True))
    rep_dtype = moe_layers * hidden * n_experts
    rep_q = absorbed = indexer = 0
    # LatentMoE's fc1_latent_proj / fc2_latent_proj (hidden <-> moe_latent_size) are
    # `ReplicatedLinear` with the checkpoint's quantization (vllm/model_executor/models/nemotron_h.py,
    # `NemotronHMoE.__init__`)
    rep_q += moe_layers * 2 * hidden * int(cfg.get("moe_latent_size") or 0)
    if cfg.get("kv_lora_rank"):
        kv_lora, rope = int(cfg["kv_lora_rank"]), int(cfg.get("qk_rope_head_dim", 64))
        q_lora = int(cfg.get("q_lora_rank") or 0)
        rep_q = n_layers * hidden * (q_lora + kv_lora + rope)
        absorbed = n_layers * kv_lora * int(cfg["num_attention_heads"]) * (
            int(cfg["qk_nope_head_dim"]) + int(cfg["v_head_dim"]))
        if cfg.get("index_topk") and cfg.get("index_head_dim") and q_lora:
            dim, n_head = int(cfg["index_head_dim"]), int(cfg.get("index_n_heads", 64))
            rep_q += n_layers * q_lora * dim * n_head
            rep_dtype += n_layers * hidden * (dim + n_head)
            indexer = n_layers * (q_lora * dim * n_head + hidden * (dim + n_head))
    return rep_q, rep_dtype, absorbed, indexer


def quantization_config(config: dict[str, Any]) -> Any:
    """The checkpoint's quantization_config: top level, else the text_config's -- where multimodal
    checkpoints such as moonshotai/Kimi-K2.5 publish it and where vLLM also reads it
    (`ModelConfig._verify_quantization` falls back to the text config, vllm/config/model.py)."""
    qc = config.get("quantization_config")
    if qc is None and isinstance(config.get("text_config"), dict):
        qc = config["text_config"].get("quantization_config")
    return qc


def _ignore_patterns(config: dict[str, Any]) -> list[str]:
    qc = quantization_config(config)
    if not isinstance(qc, dict):
        return []
    raw = qc.get("ignore") or qc.get("exclude_modules") or qc.get("modules_to_not_convert") or []
    return [str(x) for x in raw] if isinstance(raw, list) else []


def _matches(name: str, patterns: list[str]) -> bool:
    """A module name against an ignore list: modelopt's fnmatch globs, compressed-tensors' 're:'
    regexes and plain names (which also match their submodules)."""
    for pat in patterns:
        if pat.startswith("re:"):
            if re.match(pat[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, pat) or fnmatch.fnmatchcase(name, pat + ".*"):
            return True
    return False


def ignored_attention(config: dict[str, Any], cfg: dict[str, Any], kinds: tuple[str, ...],
                      heads: int, kv_heads: int, head_dim: int) -> tuple[int, int, bool]:
    """(split, replicated) attention parameters the checkpoint keeps unquantized, and whether every
    MLA layer's kv_b_proj is among them. vLLM builds a layer with no quantization when its prefix is
    in the checkpoint's ignore list (modelopt `exclude_modules`, compressed-tensors `ignore`:
    `is_layer_skipped` in vllm/model_executor/layers/quantization/), so those weights load in the
    model dtype. E.g. nvidia/DeepSeek-V3.2-NVFP4 keeps q_a/q_b/kv_a/kv_b and the indexer in bf16
    (its hf_quant_config.json) -- 2.6 GiB per B200 at TP 8 that a 4.5-bit estimate misses."""
    patterns = _ignore_patterns(config)
    if not patterns:
        return 0, 0, False
    hidden = int(cfg["hidden_size"])
    split: dict[str, int] = {}
    replicated: dict[str, int] = {}
    if cfg.get("kv_lora_rank"):
        kv_lora, rope = int(cfg["kv_lora_rank"]), int(cfg.get("qk_rope_head_dim", 64))
        nope, v_dim = int(cfg["qk_nope_head_dim"]), int(cfg["v_head_dim"])
        q_lora = int(cfg.get("q_lora_rank") or 0)
        if q_lora:
            replicated["q_a_proj"] = hidden * q_lora
            split["q_b_proj"] = q_lora * heads * (nope + rope)
        else:
            split["q_proj"] = hidden * heads * (nope + rope)
        replicated["kv_a_proj_with_mqa"] = hidden * (kv_lora + rope)
        split["kv_b_proj"] = kv_lora * heads * (nope + v_dim)
        split["o_proj"] = heads * v_dim * hidden
        if cfg.get("index_topk") and cfg.get("index_head_dim") and q_lora:
            replicated["indexer.wq_b"] = q_lora * int(cfg["index_head_dim"]) * int(
                cfg.get("index_n_heads", 64))
    else:
        split.update(q_proj=hidden * heads * head_dim, k_proj=hidden * kv_heads * head_dim,
                     v_proj=hidden * kv_heads * head_dim, o_proj=heads * head_dim * hidden)
    n_split = n_rep = 0
    kv_b_all, mla_layers = True, 0
    prefix = "model.language_model.layers" if any(
        "language_model" in p for p in patterns) else "model.layers"
    # Gated DeltaNet layers (Qwen3-Next, Qwen3.5): in_proj_qkvz + in_proj_ba + out_proj, all split
    # by TP. llm-compressor recipes leave them unquantized ("re:.*linear_attn.*" in the ignore list
    # of RedHatAI/Qwen3-Coder-Next-FP8-dynamic), so they load in bf16: 1.1 GiB per H100 at TP 1.
    gdn = 0
    if cfg.get("linear_num_value_heads"):
        kh, kd = int(cfg["linear_num_key_heads"]), int(cfg["linear_key_head_dim"])
        vh, vd = int(cfg["linear_num_value_heads"]), int(cfg["linear_value_head_dim"])
        gdn = hidden * (2 * kh * kd + 3 * vh * vd + 2 * vh)
    for i, kind in enumerate(kinds):
        if kind == MAMBA and gdn and _matches(f"{prefix}.{i}.linear_attn.out_proj", patterns):
            n_split += gdn
        if kind not in (FULL, SLIDING, CHUNKED, MLA):
            continue
        base = f"{prefix}.{i}.self_attn"
        for mod, n in split.items():
            if _matches(f"{base}.{mod}", patterns):
                n_split += n
            elif mod == "kv_b_proj":
                kv_b_all = False
        for mod, n in replicated.items():
            if _matches(f"{base}.{mod}", patterns):
                n_rep += n
        mla_layers += kind == MLA
    return n_split, n_rep, bool(mla_layers) and kv_b_all


_NO_ROPE = ("opt", "gpt2", "gpt_bigcode", "bloom", "mpt", "mamba", "mamba2", "falcon_mamba")


def rope_tables(cfg: dict[str, Any], head_dim: int) -> tuple[int, int]:
    """(rotary_dim, tables): vLLM's rotary embeddings precompute `cos_sin_cache` of shape
    (max_position_embeddings, rotary_dim) in the model dtype and register it as a buffer on the
    GPU (vllm/model_executor/layers/rotary_embedding: `RotaryEmbeddingBase.__init__`,
    `_compute_cos_sin_cache`; YaRN's table has original x factor rows, the same number), one per
    distinct rope setup (`get_rope` caches them), so "Model loading took" includes it. Negligible
    at 128k positions (32 MiB), not at Llama 4 Scout's 10M: 2.5 GiB on every GPU, which is what
    its H100 TP 4 launch logged above the weights (2.36 GiB). Gemma 3 has a local and a global
    table."""
    model_type = str(cfg.get("model_type") or "")
    if model_type in _NO_ROPE or cfg.get("alibi") or cfg.get("position_embedding_type") in (
            "absolute", "alibi"):
        return 0, 0
    if cfg.get("kv_lora_rank"):
        return int(cfg.get("qk_rope_head_dim", 64)), 1
    factor = float(cfg.get("partial_rotary_factor") or cfg.get("rotary_pct") or 1.0)
    rotary = int(cfg.get("rotary_dim") or head_dim * factor)
    return rotary, 2 if model_type.startswith("gemma3") else 1


def _mamba_state(cfg: dict[str, Any], dtype_bytes: int) -> MambaState | None:
    # The recurrent-state dtype: `mamba_ssm_cache_dtype` (Nemotron-H style), or the checkpoint's
    # `mamba_ssm_dtype` (Qwen3.5: "float32"), which vLLM copies into --mamba-ssm-cache-dtype when
    # that is "auto" (Qwen3_5ForConditionalGenerationConfig.verify_and_update_config in
    # vllm/model_executor/models/config.py). Checked on the openshift-psap v0.18 H200 logs of the
    # Qwen3.5 FP8-dynamic checkpoints: a float32 state gives the 1,056-token attention block and
    # the logged concurrency exactly (bf16 would give 544 tokens).
    ssm_dtype = str(cfg.get("mamba_ssm_cache_dtype") or cfg.get("mamba_ssm_dtype") or "")
    ssm_dtype = ssm_dtype.replace("torch.", "")
    ssm_bytes = DTYPE_BYTES.get(ssm_dtype, dtype_bytes)
    linear = cfg.get("linear_attn_config")
    if isinstance(linear, dict) and linear.get("kda_layers") is not None:
        # Kimi Delta Attention (MambaStateShapeCalculator.kda_state_shape in
        # vllm/model_executor/layers/mamba/mamba_utils.py): q, k and v short-conv states of
        # (num_heads x head_dim, kernel - 1) each, and a (num_heads, head_dim, head_dim) recurrent
        # state that kda_state_dtype keeps in float32.
        heads, hd = int(linear["num_heads"]), int(linear["head_dim"])
        conv_k = int(linear.get("short_conv_kernel_size", 4))
        kda_ssm = DTYPE_BYTES.get(ssm_dtype, 4)
        return MambaState(3 * (conv_k - 1) * heads * hd, heads * hd * hd, kda_ssm)
    if cfg.get("linear_num_value_heads"):  # Qwen3-Next gated delta net
        kh, kd = int(cfg["linear_num_key_heads"]), int(cfg["linear_key_head_dim"])
        vh, vd = int(cfg["linear_num_value_heads"]), int(cfg["linear_value_head_dim"])
        conv_k = int(cfg.get("linear_conv_kernel_dim", 4))
        conv_dim = 2 * kh * kd + vh * vd
        return MambaState((conv_k - 1) * conv_dim, vh * kd * vd, ssm_bytes)
    hidden = int(cfg.get("hidden_size", 0))
    d_state = _get(cfg, "mamba_d_state", "ssm_state_size", "state_size")
    if d_state is None:
        return None
    d_state = int(d_state)
    conv_k = int(_get(cfg, "mamba_d_conv", "conv_kernel", "mamba_conv_kernel", default=4))
    expand = float(_get(cfg, "mamba_expand", "expand", default=2))
    n_heads = _get(cfg, "mamba_n_heads", "mamba_num_heads")
    head_dim = _get(cfg, "mamba_d_head", "mamba_head_dim")
    n_groups = int(_get(cfg, "mamba_n_groups", "n_groups", default=1))
    if n_heads is not None and head_dim is not None:  # mamba2
        intermediate = int(n_heads) * int(head_dim)
        conv_dim = intermediate + 2 * n_groups * d_state
        return MambaState((conv_k - 1) * conv_dim, int(n_heads) * int(head_dim) * d_state, ssm_bytes)
    intermediate = int(_get(cfg, "mamba_intermediate_size", "intermediate_size", default=expand * hidden))
    if str(cfg.get("model_type")) == "jamba":
        intermediate = int(expand * hidden)
    return MambaState((conv_k - 1) * intermediate, intermediate * d_state, ssm_bytes)


def _vision_extras(vc: dict[str, Any], vh: int) -> int:
    """Qwen-VL towers' parameters outside the ViT blocks (transformers' Qwen2.5-VL / Qwen3-VL /
    Qwen3.5 vision modules): the patch embedding (in_channels x temporal_patch x patch^2 -> hidden),
    the learned position table (`num_position_embeddings` x hidden) and the patch mergers -- one,
    plus one per `deepstack_visual_indexes` entry -- each a (hidden x merge^2)^2 fc1 and a
    (hidden x merge^2) x out_hidden_size fc2. Qwen3-VL-30B-A3B: 0.13 B, 0.24 GiB in bf16, which its
    H200 launches logged above the ViT-blocks-only count. Gated (SiLU) MLPs (Qwen2.5-VL) add the
    third projection. Other towers: 0."""
    merge, out_hidden = vc.get("spatial_merge_size"), vc.get("out_hidden_size")
    if not (merge and out_hidden):
        return 0
    extra = 0
    if str(vc.get("hidden_act") or "") == "silu" and vc.get("intermediate_size"):
        depth = int(_get(vc, "depth", "num_hidden_layers", default=0) or 0)
        extra += depth * vh * int(vc["intermediate_size"])
    if vc.get("patch_size"):
        extra += (int(vc.get("in_channels") or 3) * int(vc.get("temporal_patch_size") or 1)
                  * int(vc["patch_size"]) ** 2 * vh)
    extra += int(vc.get("num_position_embeddings") or 0) * vh
    width = vh * int(merge) ** 2
    mergers = 1 + len(vc.get("deepstack_visual_indexes") or ())
    return extra + mergers * (width * width + width * int(out_hidden))


def _param_counts(cfg: dict[str, Any], kinds: tuple[str, ...], n_layers: int, heads: int,
                  kv_heads: int, head_dim: int) -> tuple[int, int, int, int, bool]:
    """(total, embedding, routed-expert, num_experts, is_moe) parameters from the config's shapes."""
    hidden = int(cfg["hidden_size"])
    vocab = int(cfg.get("vocab_size") or cfg.get("padded_vocab_size") or 32000)
    tied = bool(cfg.get("tie_word_embeddings", False))
    embedding = vocab * hidden * (1 if tied else 2)
    if cfg.get("vocab_size_per_layer_input") and cfg.get("hidden_size_per_layer_input"):
        # Gemma 3n per-layer embeddings: one (vocab x hidden_per_layer) slice per decoder layer.
        per_layer = int(cfg["vocab_size_per_layer_input"]) * int(cfg["hidden_size_per_layer_input"])
        embedding += per_layer * int(cfg.get("num_hidden_layers") or 0)
    inter = int(_get(cfg, "intermediate_size", "ffn_dim", "ffn_hidden_size", "n_inner",
                     default=4 * hidden))
    n_experts = int(_get(cfg, "num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts",
                         default=0) or 0)
    moe_inter = int(_get(cfg, "moe_intermediate_size", "expert_intermediate_size", default=inter))
    n_shared = int(_get(cfg, "n_shared_experts", "num_shared_experts", default=0) or 0)
    shared_inter = int(_get(cfg, "shared_expert_intermediate_size",
                            "moe_shared_expert_intermediate_size",  # Nemotron-H
                            default=moe_inter * max(n_shared, 1)))
    if not n_shared and not cfg.get("shared_expert_intermediate_size"):
        shared_inter = 0
    first_dense = int(_get(cfg, "first_k_dense_replace", default=0) or 0)
    mlp_only = set(cfg.get("mlp_only_layers") or ())
    sparse_step = int(_get(cfg, "decoder_sparse_step", "moe_layer_freq", default=1) or 1)
    gated = str(cfg.get("model_type", "")) not in ("opt", "gpt2", "gpt_bigcode", "falcon", "phi") \
        and str(cfg.get("mlp_hidden_act", "")) != "relu2"  # Nemotron-H: up/down only, squared ReLU
    mlp_mult = 3 if gated else 2

    if cfg.get("kv_lora_rank"):
        q_lora = cfg.get("q_lora_rank")
        nope, rope = int(cfg["qk_nope_head_dim"]), int(cfg["qk_rope_head_dim"])
        v_head, kv_lora = int(cfg["v_head_dim"]), int(cfg["kv_lora_rank"])
        q = hidden * q_lora + q_lora * heads * (nope + rope) if q_lora else hidden * heads * (nope + rope)
        attn = q + hidden * (kv_lora + rope) + kv_lora * heads * (nope + v_head) + heads * v_head * hidden
    else:
        attn = hidden * head_dim * (heads + 2 * kv_heads) + heads * head_dim * hidden
    mamba_params = 0
    state = cfg.get("mamba_d_state") or cfg.get("ssm_state_size") or cfg.get("linear_num_value_heads")
    if state:
        expand_inner = int(_get(cfg, "mamba_n_heads", default=0) or 0) * int(
            _get(cfg, "mamba_d_head", default=0) or 0) or int(
            float(_get(cfg, "mamba_expand", "expand", default=2)) * hidden)
        if cfg.get("linear_num_value_heads"):
            expand_inner = int(cfg["linear_num_value_heads"]) * int(cfg["linear_value_head_dim"])
        mamba_params = 3 * hidden * expand_inner  # in_proj (x, z, B/C, dt) + out_proj, roughly
        if cfg.get("linear_num_value_heads"):  # Gated DeltaNet: in_proj_qkvz, in_proj_ba, out_proj
            kh, kd = int(cfg["linear_num_key_heads"]), int(cfg["linear_key_head_dim"])
            vh, vd = int(cfg["linear_num_value_heads"]), int(cfg["linear_value_head_dim"])
            mamba_params = hidden * (2 * kh * kd + 3 * vh * vd + 2 * vh)
    linear = cfg.get("linear_attn_config")
    if isinstance(linear, dict) and linear.get("num_heads"):  # KDA: q, k, v, g, o projections
        inner = int(linear["num_heads"]) * int(linear["head_dim"])
        mamba_params = 5 * hidden * inner
    pattern = cfg.get("hybrid_override_pattern")
    total = embedding
    experts = 0
    if isinstance(pattern, str) and pattern:  # Nemotron-H: one block type per layer
        for c in pattern:
            if c == "*":
                total += attn
            elif c == "M":
                total += mamba_params
            elif c == "-":
                total += 2 * hidden * inter
            elif c == "E":
                # LatentMoE: experts of width `moe_latent_size` and the two latent projections
                latent = int(cfg.get("moe_latent_size") or 0)
                e = n_experts * mlp_mult * (latent or hidden) * moe_inter
                experts += e
                total += e + hidden * n_experts + mlp_mult * hidden * shared_inter
                total += 2 * hidden * latent
        return total, embedding, experts, n_experts, n_experts > 0
    kind_iter = list(kinds) + [FULL] * max(0, n_layers - len(kinds))
    for i in range(n_layers):
        kind = kind_iter[i]
        total += mamba_params if kind == MAMBA else attn
        is_moe_layer = n_experts > 0 and i >= first_dense and i not in mlp_only and (
            (i + 1) % sparse_step == 0 if sparse_step > 1 else True)
        if is_moe_layer:
            e = n_experts * mlp_mult * hidden * moe_inter
            experts += e
            total += e + hidden * n_experts + mlp_mult * hidden * shared_inter
        elif kind != MAMBA or str(cfg.get("model_type")) not in ("mamba", "mamba2", "falcon_mamba"):
            # Every hybrid decoder layer (Jamba, Bamba, Granite 4.0-H, Qwen3-Next/3.5, Kimi-Linear)
            # carries its own MLP; only pure Mamba stacks have none. (Nemotron-H returns above.)
            total += mlp_mult * hidden * inter
    return total, embedding, experts, n_experts, n_experts > 0


_QUANT_BITS = {"fp8": 8.0, "fbgemm_fp8": 8.0, "fp8_dynamic": 8.0, "awq": 4.0, "awq_marlin": 4.0,
               "gptq": 4.0, "gptq_marlin": 4.0, "mxfp4": 4.25, "modelopt_fp4": 4.5, "nvfp4": 4.5,
               "bitsandbytes": 4.0, "int8": 8.0, "w8a8": 8.0, "compressed-tensors": 8.0,
               "modelopt": 8.0}


def _quant(config: dict[str, Any]) -> tuple[str | None, float | None]:
    qc = quantization_config(config)
    if not isinstance(qc, dict):
        return None, None
    method = str(qc.get("quant_method") or qc.get("quant_algo") or "").lower() or None
    bits = qc.get("bits") or qc.get("w_bit") or qc.get("weight_bits")
    if method == "compressed-tensors":
        groups = qc.get("config_groups") or {}
        for group in groups.values():
            weights = (group or {}).get("weights") or {}
            if weights.get("num_bits"):
                bits = weights["num_bits"]
                wtype = str(weights.get("type", "int"))
                if int(bits) == 4 and wtype == "float":
                    return "nvfp4", 4.5
                group = weights.get("group_size")
                if weights.get("strategy") == "group" and group:
                    # one 16-bit scale per group (llm-compressor pack-quantized w4a16: group 128)
                    return method, float(bits) + 16 / int(group)
                break
    if method == "modelopt":
        algo = str(qc.get("quant_algo", "")).upper()
        return ("nvfp4", 4.5) if "FP4" in algo else ("fp8", 8.0)
    if method is None:
        return None, None
    if bits is not None:
        b = float(bits)
        if method in ("gptq", "awq") and b <= 4:
            b += 0.25  # fp16 scale + packed zero per group of 128 (vLLM gptq/awq layouts)
        return method, b
    return method, _QUANT_BITS.get(method, 8.0)


def parse_config(config: dict[str, Any], *, name: str = "config.json",
                 num_parameters: int | None = None,
                 num_active_parameters: int | None = None) -> ModelArch:
    """Parse an HF config.json dict. Raises InvalidModelConfig with the field and what would fit."""
    if not isinstance(config, dict):
        raise InvalidModelConfig(f"{name}: config.json must be a JSON object, got {type(config).__name__}")
    cfg = text_config(config)
    where = name
    n_layers = _require_int(cfg, where, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    hidden = _require_int(cfg, where, "hidden_size", "n_embd", "d_model", "dim")
    cfg = {**cfg, "hidden_size": hidden}
    widths = cfg.get("intermediate_size")
    if isinstance(widths, list):
        # Gemma 3n (MatFormer) lists the MLP width per layer (Gemma3nTextConfig takes one width or a
        # list); the parameter count needs their sum, which n_layers x the mean keeps.
        if len(widths) != n_layers or not all(
                isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
            raise InvalidModelConfig(
                f"{where}: 'intermediate_size' lists {len(widths)} widths for {n_layers} layers; "
                f"give one positive integer per layer (num_hidden_layers) or a single number")
        cfg = {**cfg, "intermediate_size": sum(widths) // n_layers}
    heads = _require_int(cfg, where, "num_attention_heads", "n_head", "n_heads", "num_heads")
    kv_heads = _get(cfg, "num_key_value_heads", "num_kv_heads", "multi_query_group_num", "n_kv_heads")
    if kv_heads is None:
        kv_heads = 1 if cfg.get("multi_query") else heads
    if not isinstance(kv_heads, int) or kv_heads <= 0 or heads % kv_heads:
        raise InvalidModelConfig(
            f"{where}: num_key_value_heads ({kv_heads!r}) must be a positive divisor of "
            f"num_attention_heads ({heads})"
        )
    head_dim = cfg.get("head_dim") or hidden // heads
    if hidden % heads and not cfg.get("head_dim"):
        raise InvalidModelConfig(
            f"{where}: hidden_size ({hidden}) is not divisible by num_attention_heads ({heads}) and "
            f"there is no 'head_dim'"
        )
    dtype = _dtype(cfg, config)
    if dtype not in DTYPE_BYTES:
        raise InvalidModelConfig(f"{where}: unsupported torch_dtype '{dtype}'; must be bfloat16, "
                                 f"float16 or float32")
    dtype_bytes = DTYPE_BYTES[dtype]
    kinds = _layer_kinds(cfg, n_layers, where)
    mla_latent = 0
    if cfg.get("kv_lora_rank"):
        mla_latent = int(cfg["kv_lora_rank"]) + int(cfg.get("qk_rope_head_dim", 64))
    mamba = _mamba_state(cfg, dtype_bytes) if MAMBA in kinds else None
    if MAMBA in kinds and mamba is None:
        raise InvalidModelConfig(f"{where}: hybrid model has Mamba layers but no state size "
                                 f"('mamba_d_state' or 'ssm_state_size')")
    window = cfg.get("sliding_window") if SLIDING in kinds else None
    attn_head_dim = int(head_dim)
    if cfg.get("attention_head_dim"):  # some hybrids name it differently
        attn_head_dim = int(cfg["attention_head_dim"])
    total, embedding, experts, n_experts, is_moe = _param_counts(
        cfg, kinds, n_layers, heads, int(kv_heads), attn_head_dim)
    vision = 0
    vc = config.get("vision_config")
    if isinstance(vc, dict) and vc.get("hidden_size"):
        # Multimodal towers are loaded with the model ("Model loading took" includes them), so they
        # count in the weights; a ViT block is ~4 h^2 (attention) + 2 h x intermediate (MLP).
        vh = int(vc["hidden_size"])
        vl = int(_get(vc, "num_hidden_layers", "depth", default=0) or 0)
        vl += int(vc.get("num_global_layers") or 0)  # mllama: 32 local + 8 global encoder layers
        vi = int(_get(vc, "intermediate_size", default=4 * vh) or 4 * vh)
        vision = vl * (4 * vh * vh + 2 * vh * vi) + _vision_extras(vc, vh)
        total += vision
    if num_parameters:
        # The catalog's count is authoritative (safetensors metadata); scale the derived parts.
        scale = num_parameters / total if total else 1.0
        experts = int(experts * scale)
        vision = int(vision * scale)
        total = num_parameters
    quant_method, quant_bits = _quant(config)
    rep_q, rep_dtype, absorbed, indexer = replicated_weights(cfg, n_layers, n_experts)
    total += indexer  # neither the shapes above nor the model cards' counts include it
    rotary_dim, rope_caches = rope_tables(cfg, attn_head_dim)
    ign_split, ign_rep, kv_b_unquantized = ignored_attention(
        config, cfg, kinds, heads, int(kv_heads), attn_head_dim)
    if kv_b_unquantized:
        absorbed = 0  # W_UK/W_UV are views of a model-dtype kv_b_proj
    return ModelArch(
        name=name,
        model_type=str(cfg.get("model_type") or config.get("model_type") or ""),
        architectures=tuple(config.get("architectures") or ()),
        layer_kinds=kinds,
        num_attention_heads=heads,
        num_kv_heads=1 if mla_latent else int(kv_heads),
        head_dim=mla_latent or attn_head_dim,
        head_dim_v=attn_head_dim,
        mla_latent_dim=mla_latent,
        sliding_window=int(window) if window else None,
        attention_chunk_size=int(cfg["attention_chunk_size"]) if CHUNKED in kinds else None,
        mamba=mamba,
        dtype=dtype,
        dtype_bytes=dtype_bytes,
        hidden_size=hidden,
        intermediate_size=int(_get(cfg, "intermediate_size", default=4 * hidden)),
        vocab_size=int(cfg.get("vocab_size") or 32000),
        max_position_embeddings=int(_get(cfg, "max_position_embeddings", "n_positions", "seq_length",
                                         default=2048)),
        num_parameters=int(total),
        embedding_parameters=int(embedding),
        expert_parameters=int(experts),
        num_experts=n_experts,
        num_active_parameters=num_active_parameters,
        quant_method=quant_method,
        quant_bits=quant_bits,
        vision_parameters=int(vision),
        is_moe=is_moe,
        experts_per_token=int(_get(cfg, "num_experts_per_tok", "moe_topk", "num_experts_per_token",
                                   "top_k", default=0) or 0) if is_moe else 0,
        moe_intermediate_size=int(_get(cfg, "moe_intermediate_size", "expert_intermediate_size",
                                       "intermediate_size", default=0) or 0) if is_moe else 0,
        moe_latent_size=int(cfg.get("moe_latent_size") or 0) if is_moe else 0,
        indexer_bytes_per_token=_indexer_bytes(cfg) if mla_latent else 0,
        kv_shared_layers=_kv_shared_layers(cfg, n_layers, where),
        replicated_parameters=rep_q,
        replicated_dtype_parameters=rep_dtype,
        mla_absorbed_parameters=absorbed,
        ignored_parameters=ign_split,
        ignored_replicated_parameters=ign_rep,
        rotary_dim=rotary_dim,
        rope_caches=rope_caches,
    )
