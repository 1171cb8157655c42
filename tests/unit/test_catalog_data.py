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
        names = [entry["id"]] + list(entry.get("aliases", []))
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
        for alias in [gpu["name"]] + list(gpu.get("aliases", [])):
            key = str(alias).lower()
            assert key not in seen or seen[key] == gpu["name"], (
                f"alias {alias!r} used by {seen.get(key)} and {gpu['name']}"
            )
            seen[key] = gpu["name"]
