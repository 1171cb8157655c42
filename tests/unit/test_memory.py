"""Table-driven tests of the KV-cache model, per attention type and per failure mode.

Configs here are minimal but real-format HF config.json dicts; expected numbers are worked out by
hand from vLLM's rules (kv_cache_utils.py / kv_cache_interface.py), in the comments.
"""

from __future__ import annotations

import pytest

from kvcap.api.errors import InvalidArgument, InvalidModelConfig
from kvcap.capacity.arch import FULL, MAMBA, MLA, SLIDING, parse_config
from kvcap.capacity.catalog import GIB, Gpu
from kvcap.capacity.memory import ServeArgs, estimate, pp_layer_split

H100 = Gpu("H100-80GB", (), "nvidia", int(79.19 * GIB), 3350, 989, True)


def llama(**over):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
           "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "torch_dtype": "bfloat16",
           "max_position_embeddings": 131072, "tie_word_embeddings": False}
    cfg.update(over)
    return cfg


def deepseek_mla():
    return {"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "hidden_size": 2048,
            "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 27,
            "num_attention_heads": 16, "num_key_value_heads": 16, "kv_lora_rank": 512,
            "q_lora_rank": None, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128,
            "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6,
            "first_k_dense_replace": 1, "vocab_size": 102400, "torch_dtype": "bfloat16",
            "max_position_embeddings": 163840}


def gemma2():
    return {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "hidden_size": 3584,
            "intermediate_size": 14336, "num_hidden_layers": 42, "num_attention_heads": 16,
            "num_key_value_heads": 8, "head_dim": 256, "sliding_window": 4096, "vocab_size": 256000,
            "torch_dtype": "float32", "max_position_embeddings": 8192}


def nemotron_h():
    # 8 layers: 6 Mamba2, 2 attention ('*'); '-' MLP layers hold no KV.
    return {"architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h", "hidden_size": 4096,
            "intermediate_size": 21504, "num_hidden_layers": 12, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "hybrid_override_pattern": "M-M*-MM-M*-M",
            "mamba_num_heads": 128, "mamba_head_dim": 64, "ssm_state_size": 128, "n_groups": 8,
            "conv_kernel": 4, "vocab_size": 131072, "torch_dtype": "bfloat16",
            "max_position_embeddings": 8192}


KV_GIVEN = int(40 * GIB)

# (name, config, args, expected bytes/token/GPU, expected tokens, expected concurrency)
CASES = [
    # GQA: 2 x 32 layers x 8 heads x 128 x 2 bytes = 131072 B/token; 40 GiB / (16 x 8192) / 32 blocks.
    ("gqa-tp1", llama(), ServeArgs(max_model_len=8192, kv_cache_memory_bytes=KV_GIVEN),
     131072, 327680, 40.0),
    # TP 4 splits the 8 KV heads: 2 per rank.
    ("gqa-tp4", llama(), ServeArgs(tensor_parallel_size=4, max_model_len=8192,
                                   kv_cache_memory_bytes=KV_GIVEN), 32768, 1310720, 160.0),
    # TP 16 > 8 KV heads: one head per rank, replicated -- no further saving.
    ("gqa-tp16-replicated", llama(num_attention_heads=64, hidden_size=8192),
     ServeArgs(tensor_parallel_size=16, max_model_len=8192, kv_cache_memory_bytes=KV_GIVEN),
     16384, 2621440, 320.0),
    # MQA: one KV head.
    ("mqa", llama(num_key_value_heads=1), ServeArgs(max_model_len=8192, kv_cache_memory_bytes=KV_GIVEN),
     16384, 2621440, 320.0),
    # fp8 KV halves bytes per value.
    ("gqa-fp8", llama(), ServeArgs(max_model_len=8192, kv_cache_dtype="fp8",
                                   kv_cache_memory_bytes=KV_GIVEN), 65536, 655360, 80.0),
    # Block size 32: same tokens (40 GiB divides evenly), concurrency counts blocks of 32.
    ("gqa-block32", llama(), ServeArgs(max_model_len=8000, block_size=32, kv_cache_memory_bytes=KV_GIVEN),
     131072, 327680, 10240 / 250),
    # MLA: 27 x (512 + 64) x 2 = 31104 B/token, NOT divided by TP; 40 GiB / 18432 / 27 = 86302 blocks.
    ("mla-tp1", deepseek_mla(), ServeArgs(max_model_len=8192, kv_cache_memory_bytes=KV_GIVEN,
                                          block_size=16), 31104, 1380832, 168.56),
    ("mla-tp2", deepseek_mla(), ServeArgs(tensor_parallel_size=2, max_model_len=8192, block_size=16,
                                          kv_cache_memory_bytes=KV_GIVEN), 31104, 1380832, 168.56),
    # Without --block-size, MLA on an H100 runs FlashMLA with 64-token blocks (PR #13747):
    # 40 GiB / (64 x 1152) / 27 = 21575 blocks -> 1380800 tokens, 8192 tokens = 128 blocks.
    ("mla-h100-flashmla-block64", deepseek_mla(),
     ServeArgs(max_model_len=8192, kv_cache_memory_bytes=KV_GIVEN), 31104, 1380800, 21575 / 128),
    # Decode context parallel 2 multiplies the token line; a request needs half the blocks per rank.
    ("mla-dcp2", deepseek_mla(), ServeArgs(tensor_parallel_size=2, decode_context_parallel_size=2,
                                           max_model_len=8192, kv_cache_memory_bytes=KV_GIVEN,
                                           block_size=16),
     31104, 2761664, 337.12),
    # Gemma 2 (float32 checkpoint served in bf16): 21 sliding + 21 full layers -> 2 groups of 21.
    # page = 16 x 8 x 256 x 2 x 2 = 131072; blocks = 40 GiB / 131072 / 21 = 15603;
    # tokens = 15603 // 2 x 16 = 124816; a request: 512 full + (cdiv(4095 + 8192, 16) + 1) sliding.
    ("sliding-hybrid", gemma2(), ServeArgs(max_model_len=8192, kv_cache_memory_bytes=KV_GIVEN,
                                           vllm_version="0.19.0"), 344064, 124816, 15603 / 1025),
]


@pytest.mark.parametrize(("name", "config", "args", "per_token", "tokens", "concurrency"), CASES,
                         ids=[c[0] for c in CASES])
def test_kv_arithmetic(name, config, args, per_token, tokens, concurrency):
    est = estimate(parse_config(config, name=name), H100, args)
    assert est.kv_bytes_per_token == per_token
    assert est.kv_tokens == tokens
    assert est.max_concurrency == pytest.approx(concurrency, rel=1e-3)
    assert est.fits


def test_sliding_layers_save_memory_once_context_exceeds_window():
    arch = parse_config(gemma2(), name="gemma2")
    short = estimate(arch, H100, ServeArgs(max_model_len=8192, kv_cache_memory_bytes=KV_GIVEN,
                                           vllm_version="0.19.0", max_num_batched_tokens=2048))
    # With 2048 batched tokens the sliding layers hold 4095 + 2048 tokens, not 8192.
    assert short.groups[0].kind == SLIDING or short.groups[1].kind == SLIDING
    assert short.max_concurrency > 15603 / 1025
    # Without the hybrid allocator (old vLLM or the flag) every layer keeps every token.
    flat = estimate(arch, H100, ServeArgs(max_model_len=8192, kv_cache_memory_bytes=KV_GIVEN,
                                          vllm_version="0.19.0", disable_hybrid_kv_cache_manager=True))
    assert len(flat.groups) == 1 and flat.groups[0].kind == FULL
    assert flat.kv_tokens == 40 * GIB // (16 * 8192 * 42) * 16


def test_mamba_hybrid_constant_state_and_enlarged_block():
    arch = parse_config(nemotron_h(), name="nemotron-h")
    assert arch.kind_counts == {MAMBA: 6, FULL: 2}
    est = estimate(arch, H100, ServeArgs(max_model_len=8192, kv_cache_memory_bytes=KV_GIVEN))
    # Attention block grows so one attention page holds a Mamba state, in multiples of 16 tokens.
    assert est.block_size % 16 == 0 and est.block_size > 16
    assert est.page_bytes >= arch.mamba.bytes_per_rank(1, 2)
    # Mamba groups cost one page per request regardless of length.
    assert all(g.blocks_per_request == 1 for g in est.groups if g.kind == MAMBA)
    longer = estimate(arch, H100, ServeArgs(max_model_len=65536, kv_cache_memory_bytes=KV_GIVEN))
    assert longer.state_bytes_per_request == est.state_bytes_per_request
    # fp8 KV shrinks attention pages only; the (padded) state page does not halve.
    fp8 = estimate(arch, H100, ServeArgs(max_model_len=8192, kv_cache_memory_bytes=KV_GIVEN,
                                         kv_cache_dtype="fp8"))
    assert fp8.kv_bytes_per_token == est.kv_bytes_per_token // 2


def test_mla_is_one_latent_per_token():
    arch = parse_config(deepseek_mla(), name="ds")
    assert arch.kind_counts == {MLA: 27}
    assert arch.num_kv_heads == 1 and arch.head_dim == 576


def test_pipeline_parallel_splits_layers_like_vllm():
    assert pp_layer_split(32, 2) == [(0, 16), (16, 32)]
    assert pp_layer_split(61, 4) == [(0, 15), (15, 30), (30, 46), (46, 61)]
    arch = parse_config(llama(), name="llama")
    est = estimate(arch, H100, ServeArgs(pipeline_parallel_size=2, max_model_len=8192,
                                         kv_cache_memory_bytes=KV_GIVEN))
    assert est.kv_bytes_per_token == 131072 // 2
    assert est.kv_tokens == 2 * 327680


def test_weights_per_gpu_follow_tp_and_quantization():
    arch = parse_config(llama(), name="llama", num_parameters=8_030_261_248)
    bf16 = estimate(arch, H100, ServeArgs(max_model_len=8192))
    # parameters x 2 bytes + RoPE's cos/sin table (131,072 positions x 128 x 2 bytes) on every
    # GPU: vLLM v0.19 logged 14.99 GiB at TP 1 and 7.51 GiB at TP 2 (llm-d campaign)
    rope = 131072 * 128 * 2
    assert bf16.weights_bytes == pytest.approx(8_030_261_248 * 2 + rope, rel=1e-6)
    assert bf16.weights_bytes / GIB == pytest.approx(14.99, abs=0.005)
    tp2 = estimate(arch, H100, ServeArgs(tensor_parallel_size=2, max_model_len=8192))
    assert tp2.weights_bytes == pytest.approx(8_030_261_248 + rope, rel=1e-6)
    assert tp2.weights_bytes / GIB == pytest.approx(7.51, abs=0.005)
    fp8 = estimate(arch, H100, ServeArgs(max_model_len=8192, quantization="fp8"))
    # Linear layers at 1 byte, embeddings and lm_head stay bf16: vLLM logged 8.49 GiB.
    assert fp8.weights_bytes / GIB == pytest.approx(8.49, abs=0.05)


# --- failure modes -------------------------------------------------------------------------------

def test_refuses_when_weights_exceed_memory():
    arch = parse_config(llama(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                              intermediate_size=28672), name="70b")
    est = estimate(arch, H100, ServeArgs(max_model_len=8192))
    assert not est.fits
    assert est.reason == "No available memory for the cache blocks"


def test_refuses_when_one_request_does_not_fit_and_estimates_max_len():
    arch = parse_config(llama(), name="llama")
    est = estimate(arch, H100, ServeArgs(max_model_len=131072, kv_cache_memory_bytes=int(8 * GIB)))
    assert not est.fits
    assert "is larger than the available KV cache memory" in est.reason
    # 8 GiB / 128 KiB per token = 65536 tokens.
    assert est.estimated_max_model_len == 65536


def test_v0_refusal_message_and_block_math():
    arch = parse_config(llama(), name="llama")
    est = estimate(arch, H100, ServeArgs(max_model_len=32768, kv_cache_memory_bytes=int(2 * GIB),
                                         vllm_version="0.6.4"))
    assert est.engine == "V0" and not est.fits
    assert est.kv_tokens == 16384
    assert "larger than the maximum number of tokens that can be stored in KV cache (16384)" in est.reason


@pytest.mark.parametrize(("args", "message"), [
    (ServeArgs(tensor_parallel_size=3), "must divide the model's 32 attention heads"),
    (ServeArgs(pipeline_parallel_size=64), "exceeds the model's 32 layers"),
    (ServeArgs(tensor_parallel_size=2, decode_context_parallel_size=4), "must divide"),
    (ServeArgs(kv_cache_dtype="int3"), "--kv-cache-dtype 'int3' is not supported"),
    (ServeArgs(block_size=12), "--block-size 12 must be one of"),
    (ServeArgs(gpu_memory_utilization=1.5), "must be in (0, 1]"),
    (ServeArgs(quantization="magic"), "--quantization 'magic' is not known"),
    (ServeArgs(vllm_version="latest"), "must look like '0.11.0'"),
])
def test_impossible_flags_are_explained(args, message):
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        estimate(parse_config(llama(), name="llama"), H100, args)


@pytest.mark.parametrize(("config", "message"), [
    ({"model_type": "llama"}, "has no 'num_hidden_layers'"),
    (llama(num_hidden_layers=0), "'num_hidden_layers' must be a positive integer"),
    (llama(num_key_value_heads=5), "must be a positive divisor of num_attention_heads"),
    (llama(hidden_size=4100), "is not divisible by num_attention_heads"),
    (llama(torch_dtype="int4"), "unsupported torch_dtype"),
    (llama(layer_types=["full_attention"] * 3), "lists 3 layers but num_hidden_layers is 32"),
    (llama(layer_types=["weird"] * 32), "unknown layer type 'weird'"),
    ([1, 2], "must be a JSON object"),
])
def test_malformed_configs_are_explained(config, message):
    with pytest.raises(InvalidModelConfig, match=message):
        parse_config(config, name="cfg")


def test_multimodal_text_config_is_used():
    cfg = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
           "torch_dtype": "bfloat16",
           "text_config": {"model_type": "gemma3_text", "hidden_size": 2560, "intermediate_size": 10240,
                           "num_hidden_layers": 34, "sliding_window": 1024},
           "vision_config": {"hidden_size": 1152, "num_hidden_layers": 27, "intermediate_size": 4304}}
    arch = parse_config(cfg, name="gemma3-4b")
    # transformers' Gemma3TextConfig defaults fill the omitted fields: 4 KV heads of 256, pattern 6.
    assert arch.num_kv_heads == 4 and arch.head_dim == 256
    assert arch.kind_counts == {SLIDING: 29, FULL: 5}
    assert arch.vision_parameters > 0


def test_derived_catalog_entries_reuse_their_base_shapes():
    from kvcap.capacity import catalog
    from kvcap.capacity.configs import load_model
    derived = load_model("meta-llama/Llama-3.3-70B-Instruct")
    base = load_model("meta-llama/Llama-3.1-70B-Instruct")
    assert (derived.layer_kinds, derived.num_kv_heads, derived.head_dim) == \
        (base.layer_kinds, base.num_kv_heads, base.head_dim)
    assert "Llama-3.1-70B-Instruct" in catalog.get_model("meta-llama/Llama-3.3-70B-Instruct").source
    assert load_model("Qwen/Qwen3-30B-A3B-Instruct-2507").max_position_embeddings == 262144


# Logged "Model loading took" per GPU (benchmarks/data/vllm_launches.yaml, openshift-psap records):
# DeepSeek-R1-0528 fp8 on H200 TP 8, v0.11-v0.20: 79.69-79.70 GiB; DeepSeek-V3.2 fp8 on H200 TP 8,
# v0.18: 80.71 GiB. Splitting every weight by TP missed them by 1.4 and 2.4 GiB.
@pytest.mark.parametrize(("model", "logged_gib", "plain_split_gib"), [
    ("deepseek-ai/DeepSeek-R1-0528", 79.70, 78.35),
    ("deepseek-ai/DeepSeek-V3.2", 80.71, 78.45),
])
def test_replicated_weights_follow_vllm(model, logged_gib, plain_split_gib):
    from dataclasses import replace

    from kvcap.capacity.configs import load_model
    from kvcap.capacity.memory import weight_bytes_per_gpu

    arch = load_model(model)
    assert arch.replicated_parameters > 0 and arch.replicated_dtype_parameters > 0
    assert arch.mla_absorbed_parameters > 0
    got = weight_bytes_per_gpu(arch, 8, 1, None) / GIB
    plain = weight_bytes_per_gpu(replace(arch, replicated_parameters=0,
                                         replicated_dtype_parameters=0,
                                         mla_absorbed_parameters=0), 8, 1, None) / GIB
    assert plain == pytest.approx(plain_split_gib, abs=0.02)
    assert abs(got - logged_gib) < 0.45 < abs(plain - logged_gib)
    # TP 1 holds everything once: replication changes nothing but the dtype of what stays 16-bit
    assert weight_bytes_per_gpu(arch, 1, 1, None) >= weight_bytes_per_gpu(arch, 8, 1, None) * 7.5


def test_router_is_replicated_in_model_dtype_and_bf16_mla_has_no_second_copy():
    from kvcap.capacity.configs import load_model
    from kvcap.capacity.memory import weight_bytes_per_gpu

    mixtral = load_model("mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert mixtral.replicated_dtype_parameters == 32 * 4096 * 8  # layers x hidden x experts
    assert mixtral.replicated_parameters == 0 and mixtral.mla_absorbed_parameters == 0
    lite = load_model("deepseek-ai/DeepSeek-V2-Lite-Chat")  # bf16: W_UK/W_UV are views
    with_absorb = weight_bytes_per_gpu(lite, 2, 1, None)
    from dataclasses import replace
    assert with_absorb == weight_bytes_per_gpu(replace(lite, mla_absorbed_parameters=0), 2, 1, None)
    assert with_absorb > weight_bytes_per_gpu(lite, 1, 1, "fp8") / 2  # fp8 adds the bf16 copy


@pytest.mark.parametrize(("patterns", "name", "hit"), [
    (["model.layers.3.self_attn.kv_b_proj"], "model.layers.3.self_attn.kv_b_proj", True),
    (["model.layers.3.self_attn.kv_b_proj"], "model.layers.30.self_attn.kv_b_proj", False),
    (["model.layers.*.self_attn"], "model.layers.7.self_attn.q_proj", True),  # a module's children
    (["model.layers.0.self_attn.indexer*"], "model.layers.0.self_attn.indexer.wq_b", True),
    (["re:.*self_attn.(q|k)_proj$"], "model.layers.5.self_attn.k_proj", True),
    (["re:.*self_attn.(q|k)_proj$"], "model.layers.5.self_attn.v_proj", False),
    (["lm_head"], "model.layers.0.self_attn.q_proj", False),
])
def test_ignore_lists_match_like_vllm(patterns, name, hit):
    from kvcap.capacity.arch import _matches
    assert _matches(name, patterns) is hit


def test_ignored_attention_stays_in_model_dtype():
    """nvidia/DeepSeek-V3.2-NVFP4 (hf_quant_config.json) keeps q_a/q_b/kv_a/kv_b and the indexer
    in bf16; vLLM logged 48.62 GiB per B200 at TP 8 (openshift-psap records, v0.18). A 4.5-bit
    estimate of those projections missed by 3 GiB."""
    from dataclasses import replace

    from kvcap.capacity.configs import load_model
    from kvcap.capacity.memory import weight_bytes_per_gpu

    arch = load_model("nvidia/DeepSeek-V3.2-NVFP4")
    assert arch.ignored_parameters > 0 and arch.ignored_replicated_parameters > 0
    assert arch.mla_absorbed_parameters == 0  # kv_b_proj is bf16: W_UK/W_UV are views
    got = weight_bytes_per_gpu(arch, 8, 1, None) / GIB
    as_if_quantized = weight_bytes_per_gpu(
        replace(arch, ignored_parameters=0, ignored_replicated_parameters=0), 8, 1, None) / GIB
    assert abs(got - 48.62) < 0.5 < abs(as_if_quantized - 48.62)
    assert load_model("deepseek-ai/DeepSeek-V3.2").ignored_parameters == 0


@pytest.mark.parametrize(("model_id", "tp", "logged_gib"), [
    # openshift-psap vLLM 0.18 logs on H200, "Model loading took ... GiB"
    ("RedHatAI/Qwen3-Coder-Next-FP8-dynamic", 1, 76.27),
    ("RedHatAI/Qwen3.5-122B-A10B-FP8-dynamic", 2, 59.44),
])
def test_gated_deltanet_layers_in_the_ignore_list_stay_bf16(model_id, tp, logged_gib):
    """llm-compressor keeps `linear_attn` (Gated DeltaNet) unquantized: with those layers charged
    at 1 byte the estimate missed the logged weights by 1.1-1.5 GiB per GPU."""
    from dataclasses import replace

    from kvcap.capacity.configs import load_model
    from kvcap.capacity.memory import weight_bytes_per_gpu

    arch = load_model(model_id)
    got = weight_bytes_per_gpu(arch, tp, 1, None) / GIB
    as_if_quantized = weight_bytes_per_gpu(replace(arch, ignored_parameters=0), tp, 1, None) / GIB
    assert abs(got - logged_gib) < 0.15 < 1.0 < abs(as_if_quantized - logged_gib)


# TritonExperts.workspace_shapes (vllm fused_moe.py): M x top_k x (max(N/2, K) + max(N, K)) + M x K
# elements of the activation dtype, M = min(tokens, 16384), N = 2 x moe_intermediate_size / TP,
# K = hidden. DeepSeek-V2-Lite-shaped config: hidden 2048, moe_intermediate 1408, top-k 6, bf16.
@pytest.mark.parametrize(("tp", "tokens", "expected"), [
    (1, 8192, (8192 * 6 * (2048 + 2816) + 8192 * 2048) * 2),  # N = 2816 > K
    (2, 8192, (8192 * 6 * (2048 + 2048) + 8192 * 2048) * 2),  # N = 1408 < K: K sizes both
    (1, 32768, (16384 * 6 * (2048 + 2816) + 16384 * 2048) * 2),  # one 16,384-token chunk
    (1, 512, (512 * 6 * (2048 + 2816) + 512 * 2048) * 2),
])
def test_fused_moe_workspace_follows_vllm_shapes(tp, tokens, expected):
    from kvcap.capacity.memory import fused_moe_workspace_bytes
    assert fused_moe_workspace_bytes(parse_config(deepseek_mla()), tp, tokens) == expected


def test_latent_moe_runs_its_experts_at_the_latent_width():
    """Nemotron-3 Super (moe_latent_size 1,024, hidden 4,096, non-gated experts of 2,688, top-22):
    K is the latent width, so at TP 2 and 8,192 tokens the workspace is 8192 x 22 x (1344 + 1344)
    + 8192 x 1024 elements, not the hidden-width 8192 x 22 x (4096 + 4096) + 8192 x 4096."""
    from kvcap.capacity.configs import load_model
    from kvcap.capacity.memory import fused_moe_workspace_bytes

    arch = load_model("nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-FP8")
    assert (arch.moe_latent_size, arch.hidden_size) == (1024, 4096)
    assert fused_moe_workspace_bytes(arch, 2, 8192) == (8192 * 22 * (1344 + 1344)
                                                        + 8192 * 1024) * 2
    # the experts at the latent width: 40 MoE layers x 512 x (up + down) x 1,024 x 2,688
    assert arch.expert_parameters == pytest.approx(40 * 512 * 2 * 1024 * 2688, rel=0.01)


def test_fused_moe_workspace_is_charged_to_moe_v1_profile_runs_only():
    from dataclasses import replace

    from kvcap.capacity.memory import fused_moe_workspace_bytes
    assert fused_moe_workspace_bytes(parse_config(llama()), 1, 8192) == 0
    moe = parse_config(deepseek_mla())
    no_routed = replace(moe, experts_per_token=0)  # same model, no routed-expert workspace
    assert fused_moe_workspace_bytes(no_routed, 1, 8192) == 0
    for version, charged in (("0.19.0", True), ("0.11.0", True), ("0.6.4", False)):
        args = ServeArgs(vllm_version=version, max_model_len=4096, max_num_batched_tokens=8192)
        extra = (estimate(moe, H100, args).activation_bytes
                 - estimate(no_routed, H100, args).activation_bytes)
        assert extra == (fused_moe_workspace_bytes(moe, 1, 8192) if charged else 0), version


# UnquantizedFusedMoEMethod._maybe_pad_weight (VLLM_ROCM_MOE_PADDING=1): on ROCm a weight whose row
# stride is a multiple of 512 bytes gets 256 more bytes per row. DeepSeek-V2-Lite shapes: 26 MoE
# layers x 64 experts; w13 rows of H = 2048 bf16 (4,096 B: padded), w2 rows of I/TP = 1408/TP
# (2,816 B at TP 1, 1,408 B at TP 2: not padded).
@pytest.mark.parametrize(("tp", "quantization", "expected"), [
    (1, None, 26 * 64 * 2816 * 256),
    (2, None, 26 * 64 * 1408 * 256),
    (1, "fp8", 0),  # only the unquantized MoE method pads
])
def test_rocm_moe_padding_follows_vllm(tp, quantization, expected):
    from kvcap.capacity.memory import rocm_moe_padding_bytes
    assert rocm_moe_padding_bytes(parse_config(deepseek_mla()), tp, quantization) == expected


def test_rocm_moe_padding_is_charged_on_amd_gpus_only():
    from dataclasses import replace

    from kvcap.capacity.memory import rocm_moe_padding_bytes
    moe = parse_config(deepseek_mla())
    mi300x = replace(H100, name="MI300X", vendor="amd")
    args = ServeArgs(vllm_version="0.19.0", max_model_len=4096)
    assert (estimate(moe, mi300x, args).weights_bytes - estimate(moe, H100, args).weights_bytes
            == rocm_moe_padding_bytes(moe, 1, None) > 0)
    dense = parse_config(llama())
    assert estimate(dense, mi300x, args).weights_bytes == estimate(dense, H100, args).weights_bytes


# vLLM's fp8/NVFP4 MoE oracle (PR #32414, from 0.16) runs FlashInfer's fused TRT-LLM kernel on
# Blackwell, so the Triton experts' workspace is not allocated there; Hopper keeps it.
@pytest.mark.parametrize(("gpu_name", "version", "quantization", "charged"), [
    ("B200", "0.18.0", "fp8", False),
    ("GB200", "0.18.0", "fp8", False),
    ("H200-141GB", "0.18.0", "fp8", True),
    ("B200", "0.18.0", None, True),  # unquantized experts stay on Triton
    ("B200", "0.14.1", "fp8", True),  # before the priority oracle
])
def test_moe_workspace_follows_the_kernel_vllm_picks(gpu_name, version, quantization, charged):
    from dataclasses import replace

    from kvcap.capacity.memory import fused_moe_workspace_bytes, profile_moe_workspace_bytes
    from kvcap.capacity.vllm_version import profile
    moe = parse_config(deepseek_mla())
    gpu = replace(H100, name=gpu_name)
    got = profile_moe_workspace_bytes(moe, gpu, 1, 8192, profile(version), quantization)
    assert got == (fused_moe_workspace_bytes(moe, 1, 8192) if charged else 0)


# mxfp4 experts (gpt-oss) follow `get_mxfp4_backend`: OpenAI's Triton kernels on Hopper
# (OAITritonExperts: M x top_k x N/2 swiglu output + M x K output), FlashInfer on Blackwell,
# Marlin elsewhere (charged as the Triton experts, an upper bound).
@pytest.mark.parametrize(("gpu_name", "kind"), [
    ("H100-80GB", "oai"), ("H200-141GB", "oai"), ("B200", "none"), ("A100-80GB", "triton"),
])
def test_mxfp4_moe_workspace_follows_the_backend(gpu_name, kind):
    from dataclasses import replace

    from kvcap.capacity.memory import fused_moe_workspace_bytes, profile_moe_workspace_bytes
    from kvcap.capacity.vllm_version import profile
    moe = parse_config(deepseek_mla())  # hidden 2048, moe_intermediate 1408, top-k 6
    gpu = replace(H100, name=gpu_name)
    got = profile_moe_workspace_bytes(moe, gpu, 2, 8192, profile("0.19.0"), "mxfp4")
    expected = {"oai": (8192 * 6 * 704 + 8192 * 2048) * 2, "none": 0,
                "triton": fused_moe_workspace_bytes(moe, 2, 8192)}[kind]
    assert got == expected


def test_nemotron_h_experts_are_not_gated():
    """nemotron_h.py builds the experts with relu2_no_mul: w13 holds I/TP rows (no gate) and the
    activation keeps N columns. Nemotron-3-Nano: hidden 2688, moe_intermediate 1856, top-k 6."""
    from kvcap.capacity.configs import load_model
    from kvcap.capacity.memory import fused_moe_workspace_bytes, moe_experts_gated
    nano = load_model("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16")
    assert not moe_experts_gated(nano)
    assert moe_experts_gated(parse_config(deepseek_mla()))
    # max(N, K) twice, N = 1856 < K = 2688; gated it would have been max(1856, K) + max(3712, K)
    assert fused_moe_workspace_bytes(nano, 1, 8192) == (8192 * 6 * (2688 + 2688) + 8192 * 2688) * 2


def test_a_quantization_config_inside_text_config_counts():
    """Multimodal checkpoints (moonshotai/Kimi-K2.5) publish quantization_config inside
    text_config; vLLM reads it there (`_verify_quantization`), so kvcap does too."""
    from kvcap.capacity.memory import weight_bytes_per_gpu

    qc = {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
          "config_groups": {"g": {"targets": ["Linear"],
                                  "weights": {"num_bits": 4, "type": "int", "group_size": 32}}}}
    top = parse_config({**llama(), "quantization_config": qc})
    nested = parse_config({"model_type": "llava", "architectures": ["X"],
                           "text_config": {**llama(), "quantization_config": qc}})
    plain = parse_config(llama())
    assert (nested.quant_method, nested.quant_bits) == (top.quant_method, top.quant_bits)
    assert nested.quant_bits is not None and nested.quant_bits < 8
    assert weight_bytes_per_gpu(nested, 1, 1, None) < weight_bytes_per_gpu(plain, 1, 1, None) / 2
