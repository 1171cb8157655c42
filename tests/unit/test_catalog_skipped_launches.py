"""Checkpoints whose real vLLM launches (benchmarks/data/vllm_launches.yaml) were skipped because the
catalog lacked them now resolve -- under the id each launch names -- and their per-token KV bytes
and per-GPU weights match values derived by hand from the cited config fields (each data file under
operator/kvcap/capacity/data/models/ records its sources).

Hand derivations (bf16 = 2 bytes, fp8 = 1 byte; KV per token = layers x 2 (K, V) x kv_heads/TP x
head_dim x 2; weights per GPU = (quantized body + bf16 vision tower) / TP + untied embeddings in
bf16 / TP + the RoPE cos/sin table kvcap charges on every GPU, 262,144 positions x 128 x 2 =
67,108,864 B):

- mistralai/Ministral-3-14B-Instruct-2512 (alias RedHatAI/Ministral-3-14B-Instruct-2512, the id
  the openshift-psap launches name): 40 layers x 2 x 8 x 128 x 2 = 163,840 B/token. Parameters
  (exact, from the shapes): language model 2 x 131072 x 5120 + 40 x (2 x 5120 x 4096 + 2 x 5120 x
  1024 + 3 x 5120 x 16384 + 2 x 5120) + 5120 = 13,506,073,600; Pixtral tower 3 x 14^2 x 1024 + 1024
  + 24 x (2 x 1024 + 4 x 1024^2 + 3 x 1024 x 4096) = 403,305,472; projector 1024 + 4096 x 1024 +
  1024 x 5120 + 5120^2 = 35,652,608; total 13,945,031,680. kvcap's ViT-block estimate of the tower,
  24 x (4 x 1024^2 + 2 x 1024 x 4096) = 301,989,888, scaled by 13,945,031,680 / 13,807,648,768 (the
  catalog count over the shape estimate) = 304,994,617 stays bf16 with the untied embeddings
  (1,342,177,280); the remaining 12,297,859,783 are FP8. TP 1: 12,297,859,783 x 1 + (1,342,177,280
  + 304,994,617) x 2 + 67,108,864 = 15,659,312,441 B = 14.584 GiB (vLLM logged 14.71 GiB on H200).
- mistralai/Ministral-3-14B-Reasoning-2512: the same shapes in bf16. TP 1: 13,945,031,680 x 2 +
  67,108,864 = 27,957,172,224 B = 26.037 GiB; TP 4: 13,945,031,680 x 2 / 4 + 67,108,864 =
  7,039,624,704 B = 6.556 GiB (vLLM logged 7.208: it keeps the vision tower whole on every rank, which
  kvcap does not model yet); 40 x 2 x (8 / 4) x 128 x 2 = 40,960 B/token.
- sarvamai/sarvam-105b (bf16, DeepSeek-V3 layout): 32 MLA layers x (512 + 64) x 2 = 36,864 B/token,
  the same on every TP rank. Parameters (exact, from the shapes) 106,031,767,424, of which untied
  embeddings 2 x 262144 x 4096 = 2,147,483,648, MLA down-projections 32 x 4096 x (512 + 64) =
  75,497,472 and routers 31 x 4096 x 128 = 16,252,928 (both whole on every rank); the other
  103,792,533,376 split by TP. TP 2: 103,792,533,376 x 2 / 2 + (75,497,472 + 16,252,928) x 2
  + 2,147,483,648 x 2 / 2 + RoPE 131072 x 64 x 2 = 16,777,216 -> 106,140,295,040 B = 98.851 GiB
  (vLLM logged 99.03 GiB on H200).
- moonshotai/Kimi-K2.5 (Kimi K2 language model, INT4 compressed-tensors routed experts, group 32 ->
  4 + 16/32 = 4.5 bits; attention in bf16 by the ignore list): 61 MLA layers x (512 + 64) x 2 =
  70,272 B/token on every rank. TP 8, from the 1,026,408,232,448 parameters: embeddings
  2 x 163840 x 7168 = 2,348,810,240 in bf16 / 8 = 587,202,560 B; MLA down-projections 61 x 7168 x
  (1536 + 512 + 64) = 923,467,776, ignored -> bf16, whole on every rank = 1,846,935,552 B; routers
  60 x 7168 x 384 = 165,150,720 in bf16, whole = 330,301,440 B; the split body 1,022,970,803,712 of
  which the ignored q_b/kv_b/o projections 61 x (1536 x 64 x 192 + 512 x 64 x 256 + 64 x 128 x 7168)
  = 5,244,977,152 stay bf16 and 1,017,725,826,560 are 4.5-bit: (5,244,977,152 x 2 +
  1,017,725,826,560 x 4.5 / 8) / 8 = 72,870,091,468 B (kv_b_proj is bf16, so no absorbed copy);
  RoPE 262144 x 64 x 2 = 33,554,432 B. Total 75,668,085,452 B = 70.471 GiB (vLLM logged 72.02 GiB).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kvcap.capacity.catalog import GIB, find_model, get_gpu
from kvcap.capacity.configs import load_model
from kvcap.capacity.memory import ServeArgs, estimate

LAUNCHES = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "vllm_launches.yaml"
KV_GIVEN = 20 * GIB

# (id or alias, TP, quantization method, KV bytes/token/GPU, weight bytes/GPU, weight GiB/GPU)
CASES = [
    ("mistralai/Ministral-3-14B-Instruct-2512", 1, "fp8", 163_840, 15_659_312_441, 14.584),
    ("RedHatAI/Ministral-3-14B-Instruct-2512", 1, "fp8", 163_840, 15_659_312_441, 14.584),
    ("mistralai/Ministral-3-14B-Reasoning-2512", 1, None, 163_840, 27_957_172_224, 26.037),
    ("mistralai/Ministral-3-14B-Reasoning-2512", 4, None, 40_960, 7_039_624_704, 6.556),
    ("sarvamai/sarvam-105b", 2, None, 36_864, 106_140_295_040, 98.851),
    ("moonshotai/Kimi-K2.5", 8, "compressed-tensors", 70_272, 75_668_085_452, 70.471),
]


@pytest.mark.parametrize(("model", "tp", "quant", "kv_per_token", "weight_bytes", "weight_gib"),
                         CASES, ids=[f"{c[0]}-tp{c[1]}" for c in CASES])
def test_catalog_entry_matches_hand_derivation(model: str, tp: int, quant: str | None,
                                               kv_per_token: int, weight_bytes: int,
                                               weight_gib: float) -> None:
    arch = load_model(model)
    assert arch.quant_method == quant
    est = estimate(arch, get_gpu("H200"),
                   ServeArgs(tensor_parallel_size=tp, max_model_len=8192,
                             kv_cache_memory_bytes=KV_GIVEN))
    assert est.kv_bytes_per_token == kv_per_token
    assert est.weights_bytes == weight_bytes
    assert round(weight_bytes / GIB, 3) == weight_gib


NEW_IDS = sorted({c[0] for c in CASES})


def _launch_models() -> set[str]:
    return {str(launch["model"]) for launch in yaml.safe_load(LAUNCHES.read_text())}


@pytest.mark.parametrize("name", NEW_IDS)
def test_every_new_id_resolves_with_its_sources(name: str) -> None:
    entry = find_model(name)
    assert entry is not None, name
    assert entry.source and entry.num_parameters


def test_red_hat_copy_is_the_mistral_fp8_checkpoint() -> None:
    red_hat = find_model("RedHatAI/Ministral-3-14B-Instruct-2512")
    assert red_hat is not None and red_hat.id == "mistralai/Ministral-3-14B-Instruct-2512"


# The model ids as the launch records in vllm_launches.yaml spell them.
LAUNCH_IDS = ["RedHatAI/Ministral-3-14B-Instruct-2512", "mistralai/Ministral-3-14B-Reasoning-2512",
              "sarvamai/sarvam-105b", "moonshotai/Kimi-K2.5"]


@pytest.mark.parametrize("model", LAUNCH_IDS)
def test_the_launches_that_were_skipped_now_resolve(model: str) -> None:
    assert model in _launch_models()
    assert find_model(model) is not None, model


def test_kimi_k25_carries_the_quantization_config_vllm_reads() -> None:
    # The checkpoint publishes quantization_config inside text_config only; vLLM falls back to it for
    # multimodal models, and so does kvcap's parser (`arch.quantization_config`): the entry keeps
    # the published layout.
    entry = find_model("moonshotai/Kimi-K2.5")
    assert entry is not None
    assert "quantization_config" not in entry.config
    nested = entry.config["text_config"]["quantization_config"]
    assert nested["config_groups"]["group_0"]["weights"]["num_bits"] == 4
    assert load_model("moonshotai/Kimi-K2.5").quant_bits == 4.5


def test_given_the_logged_kv_memory_the_token_line_matches_vllm() -> None:
    # openshift-psap record 7d726321 (RedHatAI/Ministral-3-14B-Instruct-2512, H200, TP 1, vLLM
    # 0.13.0+rhai5): "Available KV cache memory: 108.8 GiB", "GPU KV cache size: 713,040 tokens".
    # Nothing is fitted here: 108.8 GiB / 163,840 B per token, in whole 16-token blocks.
    est = estimate(load_model("RedHatAI/Ministral-3-14B-Instruct-2512"), get_gpu("H200"),
                   ServeArgs(max_model_len=8192, kv_cache_memory_bytes=int(108.8 * GIB),
                             vllm_version="0.13.0"))
    assert abs(est.kv_tokens - 713_040) / 713_040 < 0.001
