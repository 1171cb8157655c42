"""The `kvcap` CLI as users run it: real subprocesses, real files, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def kvcap(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvcap", *args], capture_output=True, text=True,
                          input=stdin, cwd=ROOT, timeout=60,
                          env={"PYTHONPATH": str(ROOT / "operator"), "PATH": "/usr/bin:/bin"})


def test_estimate_json_contract():
    r = kvcap("estimate", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "H100-80GB", "--max-model-len",
              "8192", "--output", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("kv_bytes_per_token_per_gpu", "weights_gib_per_gpu", "available_kv_gib_per_gpu",
                "kv_tokens", "max_concurrency", "fits"):
        assert key in out
    assert out["kv_bytes_per_token_per_gpu"] == 131072
    assert out["fits"] is True


def test_estimate_unfit_gives_reason_with_fix_and_exit_1():
    r = kvcap("estimate", "meta-llama/Llama-3.1-70B-Instruct", "--gpu", "H100-80GB", "-o", "json")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["fits"] is False
    assert "--tensor-parallel-size 2" in out["reason"]  # a concrete, re-estimated configuration
    assert out["what_would_fit"] and "1 x" not in out["what_would_fit"][0]


def test_estimate_table_explains_arithmetic():
    r = kvcap("estimate", "Qwen/Qwen2.5-7B-Instruct", "--gpu", "NVIDIA-L4", "--max-model-len", "16384")
    assert r.returncode == 0, r.stderr
    for line in ("total x utilization", "- weights", "available KV cache memory", "blocks = available",
                 "GPU KV cache size", "maximum concurrency"):
        assert line in r.stdout


def test_estimate_from_config_file_and_directory(tmp_path):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
           "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "torch_dtype": "bfloat16",
           "max_position_embeddings": 8192}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for target in (str(tmp_path / "config.json"), str(tmp_path)):
        r = kvcap("estimate", target, "--gpu", "L4", "-o", "json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["kv_bytes_per_token_per_gpu"] == 2 * 16 * 8 * 64 * 2


@pytest.mark.parametrize(("args", "message"), [
    (["estimate", "llama-3.1-8b-instruc"], "closest known ids: meta-llama/Llama-3.1-8B-Instruct"),
    (["estimate", "no-such-org/no-such-model"], "is not in the kvcap catalog"),
    (["estimate", "./missing/config.json"], "does not exist"),
    (["estimate", "meta-llama/Llama-3.1-8B-Instruct", "--tensor-parallel-size", "3"],
     "must divide the model's 32 attention heads"),
    (["estimate", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "H1000"], "is not in the kvcap catalog"),
    (["estimate", "meta-llama/Llama-3.1-8B-Instruct", "--gpu-memory-utilization", "90"],
     "must be in (0, 1]"),
    (["estimate", "meta-llama/Llama-3.1-8B-Instruct", "--kv-cache-memory-bytes", "lots"],
     "not a memory quantity"),
    (["estimate", "meta-llama/Llama-3.1-8B-Instruct", "--vllm-version", "nightly"],
     "must look like '0.11.0'"),
    (["plan", "-f", "does-not-exist.yaml"], "cannot read"),
])
def test_bad_input_is_a_clear_error_and_exit_2(args, message):
    r = kvcap(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_malformed_config_json(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"num_hidden_layers": 32,,}')
    r = kvcap("estimate", str(bad))
    assert r.returncode == 2
    assert "is not valid JSON (line 1" in r.stderr
    bad.write_text('{"model_type": "llama", "num_hidden_layers": 32}')
    r = kvcap("estimate", str(bad))
    assert r.returncode == 2 and "has no 'hidden_size'" in r.stderr


def test_plan_rejects_invalid_manifest_with_field_paths(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("""apiVersion: kvcap.io/v1alpha1
kind: ModelDeployment
metadata: {name: bad}
spec:
  model: {name: meta-llama/Llama-3.1-8B-Instruct}
  workload: {maxContextTokens: 0, targetConcurrency: 4}
""")
    r = kvcap("plan", "-f", str(manifest))
    assert r.returncode == 2
    assert "spec.workload.maxContextTokens" in r.stderr
    manifest.write_text("kind: ConfigMap\n")
    r = kvcap("plan", "-f", str(manifest))
    assert r.returncode == 2 and "holds no ModelDeployment" in r.stderr
    manifest.write_text("a: [\n")
    assert "is not valid YAML" in kvcap("plan", "-f", str(manifest)).stderr


def test_plan_json_contract_on_shipped_example():
    r = kvcap("plan", "-f", "examples/llama-3.1-8b.yaml", "-o", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("feasible", "reason", "total_gpus", "lower_bound_gpus", "pools"):
        assert key in out
    pool = out["pools"][0]
    for key in ("name", "gpu_product", "tensor_parallel_size", "pipeline_parallel_size", "replicas",
                "gpus_per_replica", "max_model_len", "max_num_seqs", "kv_tokens_per_replica",
                "vllm_args"):
        assert key in pool
    assert out["total_gpus"] >= out["lower_bound_gpus"] >= 1


def test_plan_reads_stdin():
    text = (ROOT / "examples" / "llama-3.1-8b.yaml").read_text()
    r = kvcap("plan", "-f", "-", "-o", "yaml", stdin=text)
    assert r.returncode == 0, r.stderr
    assert "total_gpus:" in r.stdout
