"""`kvcap calibrate` on real vLLM startup logs (the validation set's verbatim excerpts, each cited in
benchmarks/data/vllm_launches.yaml): the parser reads what the log says, the calibration reproduces
the logged KV memory, and `kvcap estimate/plan` apply it."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from validation import Case, load_cases  # noqa: E402

from kvcap.api.errors import InvalidArgument  # noqa: E402
from kvcap.capacity.calibration import (  # noqa: E402
    compare,
    merge,
    parse_calibrations,
    parse_log,
    serve_args,
    to_document,
)
from kvcap.capacity.catalog import GIB  # noqa: E402
from kvcap.capacity.memory import Calibration, estimate  # noqa: E402

CASES, _ = load_cases()
# Launches whose excerpt is vLLM's own log text (not a benchmark's summary table) with the KV memory.
LOGS = [c for c in CASES
        if c.gpu is not None and c.version_known and not c.refused
        and c.observed.get("available_kv_gib") is not None
        and ("Available KV cache memory" in c.raw["log_excerpt"]
             or "reserved for KV Cache" in c.raw["log_excerpt"])
        and c.args.pipeline_parallel_size == 1]

FIELDS = [("weights_gib", "model_weights_gib"), ("activation_gib", "activation_peak_gib"),
          ("available_kv_gib", "available_kv_gib"), ("kv_tokens", "kv_cache_tokens"),
          ("max_concurrency", "max_concurrency")]


def test_enough_real_logs():
    assert len(LOGS) >= 30
    assert len({c.source_id for c in LOGS}) >= 2


@pytest.mark.parametrize("case", LOGS, ids=[c.id for c in LOGS])
def test_parser_reads_what_the_log_says(case: Case):
    facts = parse_log(case.raw["log_excerpt"])
    for attr, key in FIELDS:
        if case.observed.get(key) is not None:
            assert getattr(facts, attr) == pytest.approx(case.observed[key]), attr
    flags = facts.flags
    if "tensor_parallel_size" in flags:
        assert flags["tensor_parallel_size"] == case.args.tensor_parallel_size
    if case.args.max_model_len and "max_model_len" in flags:
        assert flags["max_model_len"] == case.args.max_model_len


@pytest.mark.parametrize("case", LOGS, ids=[c.id for c in LOGS])
def test_calibration_reproduces_the_logged_kv_memory(case: Case):
    facts = parse_log(case.raw["log_excerpt"])
    args = replace(serve_args(facts, case.args.vllm_version), **_missing_flags(facts, case))
    assert case.gpu is not None
    result = compare(facts, case.arch, case.gpu, args)
    calibrated = estimate(case.arch, case.gpu, replace(args, calibrations=(result.calibration,)))
    logged = case.observed["available_kv_gib"]
    assert calibrated.available_kv_bytes / GIB == pytest.approx(logged, abs=0.005)
    assert calibrated.calibration  # says it applied
    if case.observed.get("max_concurrency"):
        assert calibrated.max_concurrency == pytest.approx(case.observed["max_concurrency"],
                                                           rel=0.01, abs=0.011)
    # A calibration for another GPU or version does not apply.
    other = replace(result.calibration, vllm_version="0.1.0")
    assert estimate(case.arch, case.gpu, replace(args, calibrations=(other,))).available_kv_bytes \
        == result.estimate.available_kv_bytes


def _missing_flags(facts, case: Case) -> dict:
    """Flags the excerpt does not show (the validation entry recorded them from the thread)."""
    out = {}
    for name in ("gpu_memory_utilization", "max_model_len", "max_num_seqs", "max_num_batched_tokens",
                 "kv_cache_dtype", "quantization", "dtype"):
        if name not in facts.flags and getattr(case.args, name) not in (None, "auto"):
            out[name] = getattr(case.args, name)
    return out


def test_calibration_carries_over_to_other_flags():
    """A correction measured at 8k applies to a 32k launch of the same model, GPU and version."""
    case = next(c for c in LOGS if c.id.startswith("llama-3.1-8b-instruct-h100-tp2pp1"))
    facts = parse_log(case.raw["log_excerpt"])
    args = serve_args(facts, "0.19.0")
    cal = compare(facts, case.arch, case.gpu, args).calibration
    longer = replace(args, max_model_len=32768)
    plain = estimate(case.arch, case.gpu, longer)
    calibrated = estimate(case.arch, case.gpu, replace(longer, calibrations=(cal,)))
    assert calibrated.available_kv_bytes / GIB == pytest.approx(63.76, abs=0.005)
    assert calibrated.available_kv_bytes != plain.available_kv_bytes


@pytest.mark.parametrize(("text", "message"), [
    ("hello\nworld\n", "none of the lines vLLM prints"),
])
def test_not_a_vllm_log(text, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_log(text)


@pytest.mark.parametrize(("doc", "message"), [
    ("[1, 2]", "must be a mapping with a `calibrations` list"),
    ("calibrations: [{model: m, gpu: H100-80GB}]", "must set vllmVersion"),
    ("calibrations: [{model: m, gpu: g, vllmVersion: 0.19.0, activationDeltaBytes: 1.5}]",
     "must be an integer number of bytes"),
    ("calibrations: [{model: m, gpu: g, vllmVersion: 0.19.0, extra: 1}]", "unknown keys"),
    ("calibrations: [oops", "not valid YAML"),
])
def test_malformed_override_documents_are_explained(doc, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_calibrations(doc)


def test_override_document_round_trip_and_merge():
    a = Calibration("m", "H100-80GB", "0.19.0", activation_delta_bytes=-5, source="x")
    b = Calibration("m", "H100-80GB", "0.19.0", activation_delta_bytes=7)
    c = Calibration("m", "L40S", "0.19.0", non_torch_delta_bytes=3)
    merged = merge(merge((a,), c), b)
    assert merged == (c, b)
    text = json.dumps(to_document(merged))
    assert parse_calibrations(text) == merged


def _kvcap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvcap", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60,
                          env={"PYTHONPATH": str(ROOT / "operator"), "PATH": "/usr/bin:/bin"})


def test_cli_calibrate_then_estimate_and_plan(tmp_path):
    case = next(c for c in LOGS if c.id.startswith("llama-3.1-8b-instruct-h100-tp2pp1"))
    log = tmp_path / "vllm.log"
    log.write_text(case.raw["log_excerpt"])
    override = tmp_path / "calibration.yaml"
    r = _kvcap("calibrate", "--log", str(log), "--vllm-version", "0.19.0", "-o", "json",
               "--write-override", str(override))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["gpu"] == "H100-80GB" and out["vllm_version"] == "0.19.0"
    lines = {row["line"]: row for row in out["lines"]}
    assert lines["available KV cache"]["logged"] == 63.76
    assert lines["weights"]["logged"] == 7.51
    r = _kvcap("estimate", "meta-llama/Llama-3.1-8B-Instruct", "-tp", "2", "--max-model-len",
               "8192", "--gpu-memory-utilization", "0.95", "--vllm-version", "0.19.0",
               "--calibration", str(override), "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["available_kv_gib_per_gpu"] == pytest.approx(63.76, abs=0.005)
    table = _kvcap("calibrate", "--log", str(log), "--vllm-version", "0.19.0")
    assert "kvcap - logged" in table.stdout and "63.76 GiB" in table.stdout
    missing = _kvcap("calibrate", "--log", str(log))
    assert missing.returncode == 2 and "--vllm-version" in missing.stderr


# ---------------------------------------------------------------------------------------------
# The operator side: the setting, and the planner it hands to decide
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("", None),
    ("kvcap-system/kvcap-calibrations", ("kvcap-system", "kvcap-calibrations")),
])
def test_calibration_configmap_setting(value, expected):
    from kvcap.controller.settings import parse_settings
    s = parse_settings({"KVCAP_CALIBRATION_CONFIGMAP": value})
    assert s.calibration_configmap == expected
    assert s.calibration_key == "calibrations.yaml"


@pytest.mark.parametrize("value", ["just-a-name", "Bad/Name", "ns/", "/name"])
def test_calibration_configmap_setting_is_checked(value):
    from kvcap.controller.settings import SettingsError, parse_settings
    with pytest.raises(SettingsError, match="KVCAP_CALIBRATION_CONFIGMAP must be 'namespace/name'"):
        parse_settings({"KVCAP_CALIBRATION_CONFIGMAP": value})


def test_operator_planner_applies_the_configmap_calibrations():
    import yaml

    from kvcap.api.models import parse_manifest
    from kvcap.capacity.planner import plan_deployment
    from kvcap.controller.reconcile import calibrated_plan_fn

    doc = yaml.safe_load((ROOT / "examples" / "llama-3.1-8b.yaml").read_text())
    doc["spec"]["gpu"]["products"] = ["H100-80GB"]
    spec = parse_manifest(doc).spec
    plain = plan_deployment(spec)
    pool = plain.pools[0]
    version = plain.extra["vllm_version"]  # from the image tag
    # A team measured 6 GiB more activation memory than kvcap predicts on that GPU and version.
    text = json.dumps(to_document([Calibration(
        spec.model.name, pool.gpu_product, version, activation_delta_bytes=6 * 1024**3)]))
    fn = calibrated_plan_fn(parse_calibrations(text))
    assert fn is not None and calibrated_plan_fn(()) is None
    calibrated = fn(spec).pools[0]
    assert (calibrated.gpu_product, calibrated.tensor_parallel_size) == (
        pool.gpu_product, pool.tensor_parallel_size)
    assert calibrated.kv_bytes_per_gpu == pool.kv_bytes_per_gpu - 6 * 1024**3
    # for another version the entry does not apply
    other = to_document([Calibration(spec.model.name, pool.gpu_product, "0.1.0",
                                     activation_delta_bytes=6 * 1024**3)])
    fn = calibrated_plan_fn(parse_calibrations(json.dumps(other)))
    assert fn is not None and fn(spec).pools[0].kv_bytes_per_gpu == pool.kv_bytes_per_gpu


def test_pasted_command_line_gives_model_and_flags():
    """vllm #27508: the reporter pasted the command above the log lines."""
    case = next(c for c in CASES if c.id.startswith("gpt-oss-120b-h100-util0.95-mnbt1024"))
    facts = parse_log(case.raw["log_excerpt"])
    assert facts.model == "openai/gpt-oss-120b"
    assert facts.flags == {"gpu_memory_utilization": 0.95, "max_num_batched_tokens": 1024}
    assert facts.available_kv_gib == 1.71
    assert case.gpu is not None
    # at the 0.11 rules kvcap refuses it as vLLM did; the calibration then reproduces 1.71 GiB
    result = compare(facts, case.arch, case.gpu, serve_args(facts, "0.11.0"))
    assert not result.estimate.fits
    calibrated = estimate(case.arch, case.gpu,
                          replace(serve_args(facts, "0.11.0"), calibrations=(result.calibration,)))
    assert calibrated.available_kv_bytes / GIB == pytest.approx(1.71, abs=0.005)


@pytest.mark.parametrize(("line", "model", "flags"), [
    ("$ vllm serve meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B", {}),
    ("vllm serve Qwen/Qwen3-8B -tp 2 --max-model-len=32768 --enforce-eager --kv-cache-dtype fp8",
     "Qwen/Qwen3-8B", {"tensor_parallel_size": 2, "max_model_len": 32768, "enforce_eager": True,
                       "kv_cache_dtype": "fp8"}),
])
def test_command_line_forms(line, model, flags):
    facts = parse_log(line + "\nINFO Available KV cache memory: 10.00 GiB\n")
    assert facts.model == model and facts.flags == flags


def test_v011_info_summary_line():
    """The INFO summary newer versions print (quoted from vllm PR #48601, Qwen3.6-27B-FP8 on H100)."""
    text = (
        "VLLM_USE_V2_MODEL_RUNNER=1 vllm serve Qwen/Qwen3.6-27B-FP8 --served-model-name qwen -tp 4\n"
        "(Worker_TP2 pid=3264437) INFO 07-14 09:50:23 [gpu_worker.py:855] Free memory on device "
        "(77.57/79.11 GiB) on startup. Desired GPU memory utilization is (0.92, 72.78 GiB). Actual "
        "usage is 7.39 GiB for weight, 1.54 GiB for peak activation, 0.6 GiB for non-torch memory, "
        "and 2.04 GiB for CUDAGraph memory. Replace gpu_memory_utilization config with "
        "`--kv-cache-memory=65565989131` (61.06 GiB) to fit into requested memory, or "
        "`--kv-cache-memory=70712017408` (65.86 GiB) to fully utilize gpu memory. Current kv cache "
        "memory in use is 63.25 GiB.\n")
    facts = parse_log(text)
    assert (facts.model, facts.gpu_total_gib, facts.flags) == (
        "Qwen/Qwen3.6-27B-FP8", 79.11, {"tensor_parallel_size": 4, "gpu_memory_utilization": 0.92})
    assert (facts.weights_gib, facts.activation_gib, facts.non_torch_gib, facts.cudagraph_gib,
            facts.available_kv_gib) == (7.39, 1.54, 0.6, 2.04, 63.25)


def test_cli_errors_say_what_to_pass(tmp_path):
    missing = _kvcap("calibrate", "--log", str(tmp_path / "nope.log"))
    assert missing.returncode == 2 and "cannot read log" in missing.stderr
    log = tmp_path / "vllm.log"
    log.write_text("vllm serve meta-llama/Llama-3.1-8B-Instruct\n"
                   "INFO Available KV cache memory: 10.00 GiB\n")
    no_gpu = _kvcap("calibrate", "--log", str(log), "--vllm-version", "0.19.0")
    assert no_gpu.returncode == 2 and "must pass --gpu" in no_gpu.stderr
    bad_file = tmp_path / "cal.yaml"
    bad_file.write_text("calibrations: {}")
    r = _kvcap("estimate", "meta-llama/Llama-3.1-8B-Instruct", "--calibration", str(bad_file))
    assert r.returncode == 2 and "must be a mapping with a `calibrations` list" in r.stderr
