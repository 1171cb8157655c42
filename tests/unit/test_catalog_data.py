"""Sanity checks for the built-in catalog data (models/*.json and gpus.yaml)."""
import json
import pathlib

import pytest
import yaml

DATA = pathlib.Path(__file__).resolve().parents[2] / "operator" / "kvcap" / "capacity" / "data"
MODELS_DIR = DATA / "models"
GPUS_FILE = DATA / "gpus.yaml"

MODEL_FILES = sorted(MODELS_DIR.glob("*.json"))
REQUIRED_MODEL_KEYS = ("id", "source", "num_parameters", "config")


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_catalog_has_models():
    assert len(MODEL_FILES) >= 45


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.name)
def test_model_file_shape(path):
    entry = _load(path)
    for key in REQUIRED_MODEL_KEYS:
        assert key in entry, f"{path.name}: missing {key}"
    assert isinstance(entry["id"], str) and "/" in entry["id"]
    assert path.name == entry["id"].replace("/", "--") + ".json"
    assert isinstance(entry["source"], str) and entry["source"].strip()
    assert isinstance(entry["num_parameters"], int) and entry["num_parameters"] > 0
    if "num_parameters_source" in entry:
        assert isinstance(entry["num_parameters_source"], str) and entry["num_parameters_source"].strip()
    active = entry.get("num_active_parameters")
    if active is not None:
        assert isinstance(active, int) and 0 < active <= entry["num_parameters"]
    aliases = entry.get("aliases", [])
    assert isinstance(aliases, list) and all(isinstance(a, str) and a for a in aliases)
    cfg = entry["config"]
    assert isinstance(cfg, dict) and cfg
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    # Every entry must carry the fields needed to size the decoder. (vocab_size and head counts may be
    # absent in real sparse files such as Gemma 3's text_config, where transformers defaults apply.)
    assert "model_type" in cfg or "model_type" in text
    for key in ("hidden_size", "num_hidden_layers"):
        assert key in text or key in cfg, f"{path.name}: missing {key}"


def test_no_duplicate_ids_or_aliases():
    seen = {}
    for path in MODEL_FILES:
        entry = _load(path)
        names = [entry["id"], *list(entry.get("aliases", []))]
        for name in names:
            key = name.lower()
            other = seen.get(key)
            assert other in (None, path.name), f"name {name!r} used by {other} and {path.name}"
            seen[key] = path.name


def _gpus():
    with open(GPUS_FILE, encoding="utf-8") as f:
        return yaml.safe_load(f)


def test_gpu_catalog_shape():
    gpus = _gpus()
    assert isinstance(gpus, list) and len(gpus) >= 20
    for gpu in gpus:
        name = gpu.get("name")
        assert isinstance(name, str) and name, gpu
        assert gpu.get("vendor") in ("nvidia", "amd"), name
        assert isinstance(gpu.get("memory_bytes"), int) and gpu["memory_bytes"] > 8 * 2**30, name
        for key in ("memory_source", "spec_source"):
            assert isinstance(gpu.get(key), str) and gpu[key].strip(), f"{name}: {key}"
        for key in ("bandwidth_gbps", "bf16_tflops"):
            assert isinstance(gpu.get(key), (int, float)) and gpu[key] > 0, f"{name}: {key}"
        assert isinstance(gpu.get("fp8"), bool), name
        assert isinstance(gpu.get("aliases", []), list), name


def test_gpu_names_and_aliases_unique():
    seen = {}
    for gpu in _gpus():
        for alias in [gpu["name"], *list(gpu.get("aliases", []))]:
            key = str(alias).lower()
            assert key not in seen or seen[key] == gpu["name"], (
                f"alias {alias!r} used by {seen.get(key)} and {gpu['name']}"
            )
            seen[key] = gpu["name"]


DERIVED_FILE = DATA / "derived.yaml"


def _derived():
    with open(DERIVED_FILE, encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("entry", _derived(), ids=lambda e: e["id"])
def test_derived_entry_cites_its_card_and_names_a_known_base(entry):
    from kvcap.capacity import catalog

    assert "/" in entry["id"]
    assert entry["source"].startswith("https://huggingface.co/" + entry["id"].split("/")[0] + "/")
    assert catalog.find_model(entry["base"]) is not None, f"{entry['id']}: base {entry['base']} unknown"
    qc = (entry.get("overrides") or {}).get("quantization_config")
    if qc is not None:
        assert qc["quant_method"] in ("compressed-tensors", "awq", "gptq", "fp8", "modelopt")


@pytest.mark.parametrize(
    ("model", "base", "method", "bits"),
    [
        ("RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic", "meta-llama/Llama-3.1-70B-Instruct",
         "compressed-tensors", 8.0),
        ("RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w4a16", "meta-llama/Llama-3.1-8B-Instruct",
         "compressed-tensors", 4.125),  # + one 16-bit scale per group of 128
        ("RedHatAI/Qwen2.5-7B-Instruct-quantized.w8a8", "Qwen/Qwen2.5-7B-Instruct",
         "compressed-tensors", 8.0),
        ("Qwen/Qwen2.5-72B-Instruct-AWQ", "Qwen/Qwen2.5-72B-Instruct", "awq", 4.25),
        ("hugging-quants/Meta-Llama-3.1-70B-Instruct-GPTQ-INT4", "meta-llama/Llama-3.1-70B-Instruct",
         "gptq", 4.25),
        ("nvidia/Llama-3.1-70B-Instruct-FP8", "meta-llama/Llama-3.1-70B-Instruct", "fp8", 8.0),
        ("nvidia/Qwen3-235B-A22B-NVFP4", "Qwen/Qwen3-235B-A22B", "nvfp4", 4.5),
        ("mistralai/Mistral-Small-3.2-24B-Instruct-2506", "mistralai/Devstral-Small-2-24B-Instruct-2512",
         None, None),
    ],
)
def test_quantized_derivatives_resolve_to_base_shapes_plus_their_quantization(model, base, method, bits):
    from kvcap.capacity.configs import load_model

    derived, original = load_model(model), load_model(base)
    assert derived.layer_kinds == original.layer_kinds
    assert (derived.num_kv_heads, derived.head_dim, derived.hidden_size) == (
        original.num_kv_heads, original.head_dim, original.hidden_size)
    assert (derived.quant_method, derived.quant_bits) == (method, bits)


def test_unknown_quantized_id_keeps_the_clear_error():
    from kvcap.api.errors import ModelNotFound
    from kvcap.capacity.configs import load_model

    with pytest.raises(ModelNotFound, match=r"not in the kvcap catalog.*closest known ids"):
        load_model("RedHatAI/Some-Model-That-Does-Not-Exist-quantized.w4a16")
