"""Layer kinds, recurrent-state sizes and parameter counts of the newer architectures.

Real catalog configs where the catalog has them (each file cites its config.json); a minimal config only
where the rule itself is tested (Kimi-Linear's 1-based `kda_layers`, Gemma 3n's KV-shared layers).
"""

from __future__ import annotations

from typing import Any

import pytest

from kvcap.api.errors import InvalidModelConfig
from kvcap.capacity.arch import CROSS, FULL, MAMBA, MLA, SLIDING, parse_config
from kvcap.capacity.configs import load_model


@pytest.mark.parametrize(
    ("model", "kinds"),
    [
        # Qwen3.5: 3 Gated DeltaNet layers per full-attention layer
        ("Qwen/Qwen3.5-27B", {MAMBA: 48, FULL: 16}),
        ("Qwen/Qwen3.5-35B-A3B", {MAMBA: 30, FULL: 10}),
        ("Qwen/Qwen3-Next-80B-A3B-Instruct", {MAMBA: 36, FULL: 12}),
        # Nemotron 3 Nano: M = Mamba2, * = attention; E (MoE) and - (MLP) layers hold no cache
        ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", {MAMBA: 23, FULL: 6}),
        # DeepSeek-V3.2 / GLM-5: MLA on every layer
        ("deepseek-ai/DeepSeek-V3.2", {MLA: 61}),
        ("zai-org/GLM-5", {MLA: 78}),
        # Llama 3.2 Vision: the 20 cross-attention layers are inside num_hidden_layers = 100
        ("meta-llama/Llama-3.2-90B-Vision-Instruct", {FULL: 80, CROSS: 20}),
    ],
)
def test_layer_kinds_of_catalog_hybrids(model: str, kinds: dict[str, int]) -> None:
    assert load_model(model).kind_counts == kinds


def test_gated_deltanet_state_matches_vllm_shape() -> None:
    # MambaStateShapeCalculator.gated_delta_net_state_shape: conv (kernel-1, 2*kh*kd + vh*vd),
    # temporal (vh, vd, kd). Qwen3.5-27B: kh 16, kd 128, vh 48, vd 128, kernel 4.
    state = load_model("Qwen/Qwen3.5-27B").mamba
    assert state is not None
    assert state.conv_elems == 3 * (2 * 16 * 128 + 48 * 128)
    assert state.ssm_elems == 48 * 128 * 128
    # conv state in the model dtype, recurrent state in the checkpoint's mamba_ssm_dtype (float32)
    assert state.bytes_per_rank(tp=2, dtype_bytes=2) == 3 * 10240 // 2 * 2 + 48 * 128 * 128 // 2 * 4


@pytest.mark.parametrize(
    ("extra", "ssm_bytes"),
    [({}, 2), ({"mamba_ssm_dtype": "float32"}, 4), ({"mamba_ssm_cache_dtype": "float32"}, 4),
     ({"mamba_ssm_dtype": "bfloat16"}, 2)],
)
def test_recurrent_state_dtype_follows_the_checkpoint(extra: dict[str, Any], ssm_bytes: int) -> None:
    # Qwen3.5 ships mamba_ssm_dtype "float32"; vLLM copies it into --mamba-ssm-cache-dtype ("auto")
    cfg = {"model_type": "qwen3_next", "hidden_size": 2048, "num_hidden_layers": 4,
           "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256, "vocab_size": 151936,
           "intermediate_size": 5120, "full_attention_interval": 4, "linear_num_key_heads": 16,
           "linear_key_head_dim": 128, "linear_num_value_heads": 32, "linear_value_head_dim": 128,
           "linear_conv_kernel_dim": 4, "torch_dtype": "bfloat16", **extra}
    state = parse_config(cfg).mamba
    assert state is not None and state.ssm_dtype_bytes == ssm_bytes


@pytest.mark.parametrize(
    ("model", "card_params", "tolerance"),
    [
        ("Qwen/Qwen3.5-27B", 27e9, 0.03),  # model card: 27B
        ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", 31.6e9, 0.03),  # card: 31.6B total
        ("Qwen/Qwen3.5-397B-A17B", 397e9, 0.03),
    ],
)
def test_hybrid_parameter_counts_are_close_to_the_card(model: str, card_params: float,
                                                       tolerance: float) -> None:
    # Every hybrid decoder layer carries an MLP/MoE besides its mixer; dropping it halved Qwen3.5-27B.
    assert load_model(model).num_parameters == pytest.approx(card_params, rel=tolerance)


@pytest.mark.parametrize("model", ["deepseek-ai/DeepSeek-V3.2", "zai-org/GLM-5"])
def test_sparse_attention_indexer_bytes(model: str) -> None:
    # index_head_dim 128 fp8 values + one fp32 scale per 128 = 132 bytes per token per layer
    arch = load_model(model)
    assert arch.indexer_bytes_per_token == 132
    assert arch.mla_latent_dim == 512 + 64


def test_models_without_an_indexer_have_none() -> None:
    assert load_model("deepseek-ai/DeepSeek-V3").indexer_bytes_per_token == 0


def test_vision_towers_count_in_the_weights() -> None:
    qwen = load_model("Qwen/Qwen3.5-27B")
    # 27 ViT blocks of hidden 1152 / intermediate 4304, the patch embedding (3 channels x 2 frames x
    # 16 x 16 -> 1152), the 2,304-entry position table and one 2x2 patch merger into the 5,120-wide LM
    blocks = 27 * (4 * 1152 * 1152 + 2 * 1152 * 4304)
    patch, pos, merger = 3 * 2 * 16 * 16 * 1152, 2304 * 1152, 4608 * 4608 + 4608 * 5120
    assert qwen.vision_parameters == blocks + patch + pos + merger
    # Qwen3-VL adds a merger per deepstack level (3): 0.13 B parameters outside the ViT blocks
    vl = load_model("Qwen/Qwen3-VL-30B-A3B-Instruct")
    vl_blocks = 27 * (4 * 1152 * 1152 + 2 * 1152 * 4304)
    assert vl.vision_parameters - vl_blocks == patch + pos + 4 * (4608 * 4608 + 4608 * 2048)
    mllama = load_model("meta-llama/Llama-3.2-90B-Vision-Instruct")
    assert mllama.vision_parameters > 0


def _kimi_linear(**over: Any) -> dict[str, Any]:
    # Field names of moonshotai/Kimi-Linear-48B-A3B-Instruct's config.json (model_type kimi_linear)
    cfg: dict[str, Any] = {
        "model_type": "kimi_linear", "architectures": ["KimiLinearForCausalLM"], "hidden_size": 2304,
        "num_hidden_layers": 4, "num_attention_heads": 32, "num_key_value_heads": 32,
        "intermediate_size": 9216, "vocab_size": 163840, "torch_dtype": "bfloat16",
        "kv_lora_rank": 512, "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        "v_head_dim": 128, "num_experts": 8, "moe_intermediate_size": 1024, "num_shared_experts": 1,
        "num_experts_per_token": 2,
        "linear_attn_config": {"kda_layers": [1, 2, 3], "full_attn_layers": [4], "num_heads": 32,
                               "head_dim": 128, "short_conv_kernel_size": 4},
    }
    cfg.update(over)
    return cfg


def test_kimi_linear_kda_layers_are_one_based() -> None:
    arch = parse_config(_kimi_linear())
    assert arch.layer_kinds == (MAMBA, MAMBA, MAMBA, MLA)
    assert arch.mla_latent_dim == 576


def test_kimi_delta_attention_state_matches_vllm_shape() -> None:
    # kda_state_shape: q, k, v conv states (heads*head_dim, kernel-1) + (heads, hd, hd) float32 state
    state = parse_config(_kimi_linear()).mamba
    assert state is not None
    assert state.conv_elems == 3 * 3 * 32 * 128
    assert state.ssm_elems == 32 * 128 * 128
    assert state.ssm_dtype_bytes == 4


def _gemma3n_text(shared: int) -> dict[str, Any]:
    layer_types = (["sliding_attention"] * 4 + ["full_attention"]) * 6
    return {"model_type": "gemma3n_text", "hidden_size": 2048, "num_hidden_layers": 30,
            "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 256,
            "intermediate_size": 16384, "vocab_size": 262400, "sliding_window": 512,
            "layer_types": layer_types, "num_kv_shared_layers": shared,
            "vocab_size_per_layer_input": 262144, "hidden_size_per_layer_input": 256,
            "tie_word_embeddings": True, "torch_dtype": "bfloat16"}


@pytest.mark.parametrize(("shared", "own"), [(0, 30), (10, 20)])
def test_gemma3n_kv_shared_layers_hold_no_cache(shared: int, own: int) -> None:
    arch = parse_config({"model_type": "gemma3n", "text_config": _gemma3n_text(shared)})
    assert len(arch.layer_kinds) == own
    assert arch.kv_shared_layers == shared
    assert arch.kind_counts == {SLIDING: own * 4 // 5, FULL: own // 5}


def test_gemma3n_per_layer_embeddings_count_as_embeddings() -> None:
    arch = parse_config({"model_type": "gemma3n", "text_config": _gemma3n_text(10)})
    assert arch.embedding_parameters == 262400 * 2048 + 262144 * 256 * 30


def test_kv_shared_layers_must_leave_one_layer() -> None:
    with pytest.raises(InvalidModelConfig, match="num_kv_shared_layers"):
        parse_config({"model_type": "gemma3n", "text_config": _gemma3n_text(30)})
