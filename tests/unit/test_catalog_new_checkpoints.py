"""The checkpoints issue 8 lists ("the checkpoints people actually serve") resolve from the catalog,
and their KV geometry, recurrent state and weights match values derived by hand from the cited
config fields (the data files under operator/kvcap/capacity/data/models/ record each source).

Hand derivations (bf16 = 2 bytes; KV per token = layers x 2 (K, V) x kv_heads x head_dim x 2, or
for MLA layers x (kv_lora_rank + qk_rope_head_dim) x 2; "full-attention equivalent", as
`Estimate.kv_bytes_per_token` reports it, at TP 1):

- allenai/Olmo-3-7B-Instruct: 32 layers (3 sliding : 1 full, window 4096), MHA 32 KV heads x 128
  -> 32 x 2 x 32 x 128 x 2 = 524,288 B/token. Weights: untied embeddings 2 x 100278 x 4096
  = 821,477,376 + 32 x (attention 4 x 4096^2 = 67,108,864 + SwiGLU 3 x 4096 x 11008 =
  135,266,304 + q/k norms 2 x 4096 + 2 layer norms 2 x 4096 = 16,384) + final norm 4096
  = 7,298,011,136 params = 13.594 GiB.
- meta-llama/Llama-3.2-11B-Vision-Instruct: 40 text layers (32 self-attention + 8 cross-attention,
  both charged as self-attention-sized KV as for the 90B), 8 KV heads x 128
  -> 40 x 2 x 8 x 128 x 2 = 163,840 B/token. Weights: 10.6B (model card) = 19.744 GiB.
- moonshotai/Kimi-Linear-48B-A3B-Instruct: 7 MLA layers x (512 + 64) x 2 = 8,064 B/token; 20 KDA
  layers, each 3 short convs x (4 - 1) x 32 x 128 = 36,864 bf16 values = 73,728 B + a 32 x 128 x 128
  float32 state = 2,097,152 B -> 2,170,880 B per layer. Weights: 48B (README) = 89.407 GiB.
- nvidia/NVIDIA-Nemotron-Nano-9B-v2: 4 attention layers x 2 x 8 x 128 x 2 = 16,384 B/token; 27
  Mamba2 layers, each conv (4 - 1) x (128 x 80 + 2 x 8 x 128) = 36,864 values = 73,728 B + SSM
  128 x 80 x 128 = 1,310,720 values = 2,621,440 B -> 2,695,168 B. Weights: untied embeddings
  2 x 131072 x 4480 + 27 Mamba2 (in_proj 4480 x 22656, conv 12288 x 4 + bias, 3 x 128, norm 10240,
  out_proj 10240 x 4480) + 4 GQA attention (4480 x 5120 x 2 + 4480 x 1024 x 2) + 25 squared-ReLU MLPs
  (2 x 4480 x 15680) + 56 block norms + final norm = 8,888,227,328 params = 16.556 GiB.
- nvidia/NVIDIA-Nemotron-Nano-12B-v2: 6 attention layers -> 24,576 B/token; 28 Mamba2 layers (same
  state as the 9B: 2,695,168 B); 12,310,001,152 params = 22.929 GiB.
- ibm-granite/granite-4.0-h-small: 4 attention layers x 2 x 8 x 128 x 2 = 16,384 B/token; 36 Mamba2
  layers of conv 3 x (8192 + 2 x 128) x 2 = 50,688 B + SSM 128 x 64 x 128 x 2 = 2,097,152 B
  = 2,147,840 B. 32,207,337,984 params (card: 32B) = 59.991 GiB.
- ibm-granite/granite-4.0-h-tiny: 4 x 2 x 4 x 128 x 2 = 8,192 B/token; Mamba2 3 x (3072 + 256) x 2
  + 48 x 64 x 128 x 2 = 806,400 B; 6,939,037,248 params (card: 7B) = 12.925 GiB.
- ibm-granite/granite-4.0-h-micro: 4 x 2 x 8 x 64 x 2 = 8,192 B/token; Mamba2 3 x (4096 + 256) x 2
  + 64 x 64 x 128 x 2 = 1,074,688 B; 3,191,396,096 params (card: 3B) = 5.944 GiB.
- ibm-granite/granite-4.0-micro: dense, 40 x 2 x 8 x 64 x 2 = 81,920 B/token; 3,402,836,480 params
  (card: 3B) = 6.338 GiB.
- google/gemma-3n-E4B-it: 35 layers, the last 15 share earlier layers' KV, so 20 own KV: 16 sliding
  (512) + 4 global, 2 KV heads x 256 -> 20 x 2 x 2 x 256 x 2 = 40,960 B/token; 8B raw = 14.901 GiB.
- google/gemma-3n-E2B-it: 30 layers, 10 shared -> the same 20 KV layers, 40,960 B/token; 5B = 9.313 GiB.
- zai-org/GLM-5.1 (+ -FP8): GLM-5's shapes, 78 MLA layers x ((512 + 64) x 2 + DSA indexer key
  128 + 128 / 128 x 4 = 132) = 100,152 B/token.
- Qwen/Qwen3.6-27B: 16 gated full-attention layers x 2 x 4 x 256 x 2 = 65,536 B/token (48 Gated
  DeltaNet layers hold state); Qwen/Qwen3.6-35B-A3B: 10 x 2 x 2 x 256 x 2 = 20,480 B/token.

Weights at TP 1 in bf16 are params x 2 plus the RoPE cos/sin table kvcap charges on every GPU
(at most 128 MiB here), so they are checked to within that table.
"""

from __future__ import annotations

import pytest

from kvcap.api.errors import InvalidModelConfig, ModelNotFound
from kvcap.capacity.arch import parse_config
from kvcap.capacity.catalog import GIB, get_gpu
from kvcap.capacity.configs import load_model
from kvcap.capacity.memory import ServeArgs, estimate

KV_GIVEN = 20 * GIB  # KV memory given, so nothing fitted enters the comparison
ROPE_TABLE_MAX = 128 << 20

# (id, layer kinds, KV bytes/token, Mamba/KDA state bytes per layer (None: no state),
#  num_parameters, weight GiB at TP 1)
CASES = [
    ("allenai/Olmo-3-7B-Instruct", {"sliding": 24, "full": 8}, 524_288, None,
     7_298_011_136, 13.594),
    ("meta-llama/Llama-3.2-11B-Vision-Instruct", {"full": 32, "cross": 8}, 163_840, None,
     10_600_000_000, 19.744),
    ("moonshotai/Kimi-Linear-48B-A3B-Instruct", {"mamba": 20, "mla": 7}, 8_064, 2_170_880,
     48_000_000_000, 89.407),
    ("nvidia/NVIDIA-Nemotron-Nano-9B-v2", {"mamba": 27, "full": 4}, 16_384, 2_695_168,
     8_888_227_328, 16.556),
    ("nvidia/NVIDIA-Nemotron-Nano-12B-v2", {"mamba": 28, "full": 6}, 24_576, 2_695_168,
     12_310_001_152, 22.929),
    ("ibm-granite/granite-4.0-h-small", {"mamba": 36, "full": 4}, 16_384, 2_147_840,
     32_207_337_984, 59.991),
    ("ibm-granite/granite-4.0-h-tiny", {"mamba": 36, "full": 4}, 8_192, 806_400,
     6_939_037_248, 12.925),
    ("ibm-granite/granite-4.0-h-micro", {"mamba": 36, "full": 4}, 8_192, 1_074_688,
     3_191_396_096, 5.944),
    ("ibm-granite/granite-4.0-micro", {"full": 40}, 81_920, None,
     3_402_836_480, 6.338),
    ("google/gemma-3n-E4B-it", {"sliding": 16, "full": 4}, 40_960, None,
     8_000_000_000, 14.901),
    ("google/gemma-3n-E2B-it", {"sliding": 16, "full": 4}, 40_960, None,
     5_000_000_000, 9.313),
]


@pytest.mark.parametrize(("model", "kinds", "kv_per_token", "state", "params", "weight_gib"), CASES,
                         ids=[c[0] for c in CASES])
def test_new_checkpoint_resolves_with_hand_derived_geometry(
        model: str, kinds: dict[str, int], kv_per_token: int, state: int | None, params: int,
        weight_gib: float) -> None:
    arch = load_model(model)
    assert arch.kind_counts == kinds
    assert arch.num_parameters == params
    if state is None:
        assert arch.mamba is None
    else:
        assert arch.mamba is not None
        assert arch.mamba.bytes_per_rank(1, arch.dtype_bytes) == state

    # Llama 3.2 Vision: vLLM serves it up to 0.10.2 only (REMOVED_ARCHITECTURES)
    version = "0.10.2" if "Vision" in model else None
    est = estimate(arch, get_gpu("H100-80GB"),
                   ServeArgs(max_model_len=4096, kv_cache_memory_bytes=KV_GIVEN,
                             vllm_version=version))
    assert est.kv_bytes_per_token == kv_per_token
    assert 0 <= est.weights_bytes - 2 * params <= ROPE_TABLE_MAX
    assert abs(2 * params / GIB - weight_gib) < 0.001


@pytest.mark.parametrize(("alias", "model"), [
    ("allenai/Olmo-3-7B-Think", "allenai/Olmo-3-7B-Instruct"),
    ("allenai/Olmo-3-1025-7B", "allenai/Olmo-3-7B-Instruct"),
    ("meta-llama/Llama-3.2-11B-Vision", "meta-llama/Llama-3.2-11B-Vision-Instruct"),
    ("moonshotai/Kimi-Linear-48B-A3B-Base", "moonshotai/Kimi-Linear-48B-A3B-Instruct"),
    ("nvidia/NVIDIA-Nemotron-Nano-9B-v2-Base", "nvidia/NVIDIA-Nemotron-Nano-9B-v2"),
    ("ibm-granite/granite-4.0-h-small-base", "ibm-granite/granite-4.0-h-small"),
    ("granite-4.0-h-tiny", "ibm-granite/granite-4.0-h-tiny"),
])
def test_variants_resolve_to_the_same_shapes(alias: str, model: str) -> None:
    assert load_model(alias) == load_model(model)


def test_gemma_3n_kv_shared_layers_own_no_cache() -> None:
    assert load_model("google/gemma-3n-E4B-it").kv_shared_layers == 15
    assert load_model("google/gemma-3n-E2B-it").kv_shared_layers == 10


def _gemma3n_text(intermediate: object) -> dict[str, object]:
    return {"model_type": "gemma3n", "text_config": {
        "model_type": "gemma3n_text", "hidden_size": 2048, "num_hidden_layers": 4, "num_attention_heads": 8,
        "num_key_value_heads": 2, "head_dim": 256, "intermediate_size": intermediate, "vocab_size": 1000}}


def test_per_layer_mlp_widths_count_like_their_sum() -> None:
    # Gemma 3n's config.json lists intermediate_size per layer: 4 x 16384 counts as 16384 each, and
    # mixed widths (MatFormer mix-and-match) count their sum: 3 x (8192 + 16384 + 8192 + 16384) x 2048.
    same = parse_config(_gemma3n_text([16384] * 4)).num_parameters
    assert same == parse_config(_gemma3n_text(16384)).num_parameters
    mixed = parse_config(_gemma3n_text([8192, 16384, 8192, 16384])).num_parameters
    assert same - mixed == 3 * 2048 * 2 * (16384 - 8192)


@pytest.mark.parametrize("bad", [[16384] * 3, [16384, 16384, 0, 16384], [16384, "wide", 1, 1]])
def test_per_layer_mlp_widths_must_match_the_layers(bad: list[object]) -> None:
    with pytest.raises(InvalidModelConfig, match=r"'intermediate_size' lists \d+ widths for 4 layers"):
        parse_config(_gemma3n_text(bad))


def _kv_per_token(model: str) -> int:
    return estimate(load_model(model), get_gpu("H200"),
                    ServeArgs(max_model_len=4096, kv_cache_memory_bytes=KV_GIVEN)).kv_bytes_per_token


@pytest.mark.parametrize(("model", "same_shapes_as", "kv_per_token", "quant"), [
    ("zai-org/GLM-5.1", "zai-org/GLM-5", 100_152, (None, None)),
    ("zai-org/GLM-5.1-FP8", "zai-org/GLM-5", 100_152, ("fp8", 8.0)),
    ("Qwen/Qwen3.6-27B", "Qwen/Qwen3.5-27B", 65_536, (None, None)),
    ("Qwen/Qwen3.6-35B-A3B", "Qwen/Qwen3.5-35B-A3B", 20_480, (None, None)),
])
def test_newest_releases_resolve_to_their_family_shapes(
        model: str, same_shapes_as: str, kv_per_token: int,
        quant: tuple[str | None, float | None]) -> None:
    new, old = load_model(model), load_model(same_shapes_as)
    assert (new.layer_kinds, new.num_kv_heads, new.head_dim, new.mamba, new.num_parameters) == (
        old.layer_kinds, old.num_kv_heads, old.head_dim, old.mamba, old.num_parameters)
    assert (new.quant_method, new.quant_bits) == quant
    assert _kv_per_token(model) == kv_per_token


def test_tensor_parallel_splits_the_new_hybrids_like_vllm() -> None:
    # TP 2: Nemotron Nano 9B's 8 KV heads -> 4 per GPU (8,192 B/token), its Mamba2 state halves.
    arch = load_model("nvidia/NVIDIA-Nemotron-Nano-9B-v2")
    est = estimate(arch, get_gpu("H100-80GB"),
                   ServeArgs(tensor_parallel_size=2, max_model_len=4096, kv_cache_memory_bytes=KV_GIVEN))
    assert est.kv_bytes_per_token == 8_192
    assert arch.mamba is not None and arch.mamba.bytes_per_rank(2, 2) == 2_695_168 // 2
    # MLA keeps the whole latent on every rank: Kimi-Linear stays at 8,064 B/token at TP 2.
    kimi = estimate(load_model("moonshotai/Kimi-Linear-48B-A3B-Instruct"), get_gpu("H100-80GB"),
                    ServeArgs(tensor_parallel_size=2, max_model_len=4096,
                              kv_cache_memory_bytes=KV_GIVEN))
    assert kimi.kv_bytes_per_token == 8_064


@pytest.mark.parametrize("unknown", ["allenai/Olmo-3-13B-Instruct", "ibm-granite/granite-4.0-h-huge"])
def test_unknown_neighbours_keep_the_clear_error(unknown: str) -> None:
    with pytest.raises(ModelNotFound, match=r"not in the kvcap catalog \(closest known ids: .*"
                                            r"--hf-hub"):
        load_model(unknown)
