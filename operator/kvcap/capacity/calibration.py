"""`kvcap calibrate`: read a real vLLM startup log, compare it with kvcap's prediction, and turn the
difference into a calibration object that `kvcap plan` and the operator apply (pure: no I/O).

The line formats are vLLM's own, across versions (the validation set in
benchmarks/data/vllm_launches.yaml has one of each):
  version   "vLLM API server version X" (v0.9+), "Initializing a V1 LLM engine (vX)",
            "Initializing an LLM engine (vX)" (V0)
  flags     "non-default args: {...}" (v0.9+), the engine's "with config: model='...', ..." line,
            a pasted `vllm serve MODEL --flag value` command line,
            "Defaulting max_num_seqs to N" / "Defaulting max_num_batched_tokens to N" (DEBUG),
            "Chunked prefill is enabled with max_num_batched_tokens=N"
  memory    "Requested memory: U (util), X GiB" and "total_memory=XGiB" (v0.19 DEBUG),
            "Free memory on device (F/T GiB) ... Desired GPU memory utilization is (U, X GiB).
            Actual usage is W GiB for weight, A GiB for peak activation, N GiB for non-torch
            memory, and G GiB for CUDAGraph memory ... Current kv cache memory in use is K GiB"
            (v0.11+ INFO),
            "total_gpu_memory=XGiB" / "total_gpu_memory  XGiB" (V0)
  weights   "Model loading took X GiB", "model weights take XGiB", "weights memory: XGiB",
            "Loading model weights took X GB" (V0; GiB despite the unit)
  activation "torch peak memory increase: XGiB" (v0.19),
            "PyTorch activation peak memory [takes] XGiB"
  non-torch "non-torch forward increase memory: XGiB" (v0.19), "non_torch_memory [takes|=] XGiB"
  graphs    "CUDA graph pool memory: X GiB (actual)" (v0.19+), "Graph capturing finished in N secs,
            took X GiB"
  KV        "Available KV cache memory: X GiB",
            "the rest of the memory reserved for KV Cache is X GiB",
            "kv_cache_size=XGiB", "GPU KV cache size: N tokens",
            "Maximum concurrency for L tokens per request: Cx"
  refusal   "To serve at least one request with the model's max seq len (L)",
            "No available memory for the cache blocks", "is larger than the maximum number of tokens
            that can be stored in KV cache"
When a line repeats (one per worker) the first one counts (TP rank 0; with pipeline parallelism the
first stage -- vLLM keeps the minimum over stages, so pass the last stage's lines for PP).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from kvcap.api.errors import InvalidArgument
from kvcap.capacity.arch import ModelArch
from kvcap.capacity.catalog import GIB, Gpu
from kvcap.capacity.memory import Calibration, Estimate, ServeArgs, estimate

_NUM = r"(-?[0-9][0-9,]*(?:\.[0-9]+)?)"


@dataclass(frozen=True, slots=True)
class LogFacts:
    """What one vLLM startup log says (None = not in the log)."""

    model: str | None = None
    vllm_version: str | None = None
    gpu_name: str | None = None
    gpu_total_gib: float | None = None
    flags: dict[str, Any] = field(default_factory=dict)  # ServeArgs field -> value
    weights_gib: float | None = None
    activation_gib: float | None = None
    non_torch_gib: float | None = None
    cudagraph_gib: float | None = None
    available_kv_gib: float | None = None
    kv_tokens: int | None = None
    max_concurrency: float | None = None
    concurrency_tokens: int | None = None
    refused: str | None = None


_REFUSALS = ("To serve at least one request with the model's max seq len",
             "No available memory for the cache blocks",
             "larger than the maximum number of tokens that can be stored in KV cache")

_FIRST: list[tuple[str, str]] = [
    ("weights_gib", r"Model loading took " + _NUM + r" ?GiB"),
    ("weights_gib", r"model weights take\s+" + _NUM + r" ?GiB"),
    ("weights_gib", r"weights memory: " + _NUM + r" ?GiB"),
    ("weights_gib", r"Loading model weights took " + _NUM + r" ?GB"),
    ("activation_gib", r"torch peak memory increase: " + _NUM + r" ?GiB"),
    ("activation_gib", r"PyTorch activation peak memory(?: takes)?\s+" + _NUM + r" ?GiB"),
    ("non_torch_gib", r"non-torch forward increase memory: " + _NUM + r" ?GiB"),
    ("non_torch_gib", r"non_torch_memory(?: takes|=|\s)\s*" + _NUM + r" ?GiB"),
    ("cudagraph_gib", r"CUDA graph pool memory: " + _NUM + r" ?GiB \(actual\)"),
    ("cudagraph_gib", r"Graph capturing finished in [0-9.]+ secs?, took " + _NUM + r" ?GiB"),
    ("available_kv_gib", r"Available KV cache memory: " + _NUM + r" ?GiB"),
    ("available_kv_gib", r"the rest of the memory reserved for KV Cache is " + _NUM + r" ?GiB"),
    ("available_kv_gib", r"kv_cache_size=" + _NUM + r" ?GiB"),
    ("available_kv_gib", r"available_kv_cache_memory\s+" + _NUM + r" ?GiB"),
    # v0.11+ INFO summary (gpu_worker, with the --kv-cache-memory advice): "Free memory on device
    # (F/T GiB) on startup. Desired GPU memory utilization is (U, X GiB). Actual usage is W GiB for
    # weight, A GiB for peak activation, N GiB for non-torch memory, and G GiB for CUDAGraph
    # memory. ... Current kv cache memory in use is K GiB." (quoted in vllm PR #48601)
    ("weights_gib", r"Actual usage is " + _NUM + r" ?GiB for weight"),
    ("activation_gib", _NUM + r" ?GiB for peak activation"),
    ("non_torch_gib", _NUM + r" ?GiB for non-torch memory"),
    ("cudagraph_gib", _NUM + r" ?GiB for CUDAGraph memory"),
    ("available_kv_gib", r"Current kv cache memory in use is " + _NUM + r" ?GiB"),
    ("gpu_total_gib", r"Free memory on device \(" + _NUM + r"/" + _NUM + r" ?GiB\)"),
    ("gpu_total_gib", r"total_memory=" + _NUM + r" ?GiB"),
    ("gpu_total_gib", r"total_gpu_memory[=\s]+" + _NUM + r" ?GiB"),
]
_VERSION = [r"vLLM API server version v?([0-9][^\s,]*)",
            r"Initializing an? (?:V1 )?LLM engine \(v([0-9][^)\s]*)\)",
            r"vLLM [Vv]ersion:? v?([0-9][^\s,]*)"]
_GPU_NAME = [r"GPU 0: (NVIDIA [^\n(]+?|AMD [^\n(]+?)\s*(?:\(|$)",
             r"device_name[=:] ?'?((?:NVIDIA|AMD) [^',\n]+)"]

# `non-default args` keys / engine config keys -> ServeArgs fields
_FLAG_KEYS = {
    "tensor_parallel_size": "tensor_parallel_size",
    "pipeline_parallel_size": "pipeline_parallel_size",
    "decode_context_parallel_size": "decode_context_parallel_size",
    "gpu_memory_utilization": "gpu_memory_utilization", "max_model_len": "max_model_len",
    "max_seq_len": "max_model_len", "max_num_seqs": "max_num_seqs",
    "max_num_batched_tokens": "max_num_batched_tokens", "kv_cache_dtype": "kv_cache_dtype",
    "block_size": "block_size", "quantization": "quantization",
    "kv_cache_memory_bytes": "kv_cache_memory_bytes", "enforce_eager": "enforce_eager",
    "disable_hybrid_kv_cache_manager": "disable_hybrid_kv_cache_manager", "dtype": "dtype",
}


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def _flag_value(field_name: str, value: Any) -> Any:
    if value in (None, "None"):
        return None
    if field_name in ("kv_cache_dtype", "quantization", "dtype"):
        text = str(value).replace("torch.", "")
        return None if field_name == "quantization" and text in ("", "None") else text
    if field_name in ("enforce_eager", "disable_hybrid_kv_cache_manager"):
        return str(value).lower() in ("true", "1")
    if field_name == "gpu_memory_utilization":
        return float(value)
    return int(float(value))


def _non_default_args(line: str) -> dict[str, Any]:
    start = line.find("{", line.find("non-default args"))
    end = line.rfind("}")
    if start < 0 or end < start:
        return {}
    try:
        parsed = ast.literal_eval(line[start:end + 1])
    except (ValueError, SyntaxError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _engine_config(line: str) -> dict[str, str]:
    body = line.split("with config:", 1)[1]
    return {k: v.strip("'\"") for k, v in re.findall(r"(\w+)=('[^']*'|[^,\s]+)", body)}


_CLI_FLAGS = {f"--{key.replace('_', '-')}": name for key, name in _FLAG_KEYS.items()} | {
    "-tp": "tensor_parallel_size", "-pp": "pipeline_parallel_size", "-q": "quantization"}
_BOOL_FLAGS = {"--enforce-eager", "--disable-hybrid-kv-cache-manager"}


def _command_line(line: str) -> tuple[str | None, dict[str, Any]]:
    """`vllm serve MODEL --flag value ...` as users paste it above their log."""
    words = line.split("vllm serve", 1)[1].replace("\\", " ").split()
    model = words[0] if words and not words[0].startswith("-") else None
    flags: dict[str, Any] = {}
    i = 1 if model else 0
    while i < len(words):
        word = words[i]
        key, eq, value = word.partition("=")
        name = _CLI_FLAGS.get(key)
        if key in _BOOL_FLAGS and name:
            flags[name] = True
        elif name and eq:
            flags[name] = _flag_value(name, value)
        elif name and i + 1 < len(words):
            flags[name] = _flag_value(name, words[i + 1])
            i += 1
        i += 1
    return model, flags


def parse_log(text: str) -> LogFacts:
    """Facts from a vLLM startup log (INFO or DEBUG). Raises InvalidArgument when the text holds
    none of the lines vLLM prints while sizing its KV cache."""
    values: dict[str, Any] = {}
    flags: dict[str, Any] = {}
    model = version = gpu_name = refused = None
    kv_tokens = None
    conc = None
    conc_tokens = None
    for line in text.splitlines():
        snapshot = "memory snapshot" in line  # v0.19 worker init: before loading, only its total
        for key, pattern in _FIRST:
            if key not in values and (not snapshot or key == "gpu_total_gib"):
                m = re.search(pattern, line)
                if m:
                    values[key] = _num(m.group(m.lastindex or 1))  # "(free/total)": the total
        if version is None:
            for pattern in _VERSION:
                m = re.search(pattern, line)
                if m:
                    version = m.group(1).rstrip(".")
                    break
        if gpu_name is None:
            for pattern in _GPU_NAME:
                m = re.search(pattern, line)
                if m:
                    gpu_name = m.group(1).strip()
                    break
        if "vllm serve" in line and "non-default args" not in line:
            cli_model, cli_flags = _command_line(line)
            model = model or cli_model
            for fname, value in cli_flags.items():
                flags.setdefault(fname, value)
        if "non-default args" in line:
            args = _non_default_args(line)
            model = model or args.get("model") or args.get("model_tag")
            for key, fname in _FLAG_KEYS.items():
                if key in args and fname not in flags:
                    flags[fname] = _flag_value(fname, args[key])
        elif "with config:" in line:
            cfg = _engine_config(line)
            model = model or cfg.get("model")
            for key, fname in _FLAG_KEYS.items():
                if key in cfg and fname not in flags:
                    flags[fname] = _flag_value(fname, cfg[key])
        m = re.search(r"Defaulting (max_num_seqs|max_num_batched_tokens) to ([0-9]+)", line)
        if m and m.group(1) not in flags:
            flags[m.group(1)] = int(m.group(2))
        m = re.search(r"Chunked prefill is enabled with max_num_batched_tokens=([0-9]+)", line)
        if m and "max_num_batched_tokens" not in flags:
            flags["max_num_batched_tokens"] = int(m.group(1))
        m = re.search(r"Desired GPU memory utilization is \(([0-9.]+),", line)
        if m and "gpu_memory_utilization" not in flags:
            flags["gpu_memory_utilization"] = float(m.group(1))
        m = re.search(r"Requested memory: ([0-9.]+) \(util\)", line)
        if m and "gpu_memory_utilization" not in flags:
            flags["gpu_memory_utilization"] = float(m.group(1))
        m = re.search(r"GPU KV cache size: " + _NUM + " tokens", line)
        if m and kv_tokens is None:
            kv_tokens = int(_num(m.group(1)))
        m = re.search(r"Maximum concurrency for " + _NUM + r" tokens per request: " + _NUM + "x",
                      line)
        if m and conc is None:
            conc_tokens, conc = int(_num(m.group(1))), _num(m.group(2))
        m = re.search(r"max seq len \(([0-9]+)\)", line)
        if m and "max_model_len" not in flags:
            flags["max_model_len"] = int(m.group(1))
        m = re.search(r"larger than the available KV cache memory \(" + _NUM + r" ?GiB\)", line)
        if m and "available_kv_gib" not in values:
            values["available_kv_gib"] = _num(m.group(1))
        m = re.search(r"can be stored in KV cache \(([0-9]+)\)", line)
        if m and kv_tokens is None:
            kv_tokens = int(m.group(1))
        if refused is None:
            for phrase in _REFUSALS:
                if phrase in line:
                    refused = line[line.find(phrase.split(" ")[0]):].strip()
    if not values and kv_tokens is None and conc is None and refused is None:
        raise InvalidArgument(
            "the log holds none of the lines vLLM prints while sizing its KV cache (e.g. "
            "'Available KV cache memory: X GiB', 'GPU KV cache size: N tokens', 'Model loading "
            "took X GiB'); must be the startup log of `vllm serve` at INFO or DEBUG level")
    if conc_tokens and "max_model_len" not in flags:
        flags["max_model_len"] = conc_tokens
    return LogFacts(
        model=str(model) if model else None, vllm_version=version, gpu_name=gpu_name,
        gpu_total_gib=values.get("gpu_total_gib"), flags=flags,
        weights_gib=values.get("weights_gib"), activation_gib=values.get("activation_gib"),
        non_torch_gib=values.get("non_torch_gib"), cudagraph_gib=values.get("cudagraph_gib"),
        available_kv_gib=values.get("available_kv_gib"), kv_tokens=kv_tokens,
        max_concurrency=conc, concurrency_tokens=conc_tokens, refused=refused)


def serve_args(facts: LogFacts, version: str | None = None) -> ServeArgs:
    return ServeArgs(**{**facts.flags, "vllm_version": version or facts.vllm_version})


@dataclass(frozen=True, slots=True)
class Row:
    what: str
    logged: float | None
    predicted: float
    unit: str  # "GiB" | "tokens" | "x"

    @property
    def difference(self) -> float | None:
        return None if self.logged is None else self.predicted - self.logged


@dataclass(frozen=True, slots=True)
class Comparison:
    facts: LogFacts
    estimate: Estimate
    rows: tuple[Row, ...]
    calibration: Calibration


def compare(facts: LogFacts, arch: ModelArch, gpu: Gpu, args: ServeArgs,
            source: str = "") -> Comparison:
    """kvcap's prediction next to every line the log has, and the calibration that closes the
    gap."""
    est = estimate(arch, gpu, replace(args, calibrations=()))
    rows = [
        Row("weights", facts.weights_gib, est.weights_bytes / GIB, "GiB"),
        Row("activation peak", facts.activation_gib, est.activation_bytes / GIB, "GiB"),
        Row("non-torch", facts.non_torch_gib, est.non_torch_bytes / GIB, "GiB"),
        Row("CUDA graphs" + ("" if est.cudagraph_bytes else " (not subtracted by this version)"),
            facts.cudagraph_gib, est.cudagraph_bytes / GIB, "GiB"),
        Row("available KV cache", facts.available_kv_gib, est.available_kv_bytes / GIB, "GiB"),
        Row("GPU KV cache size", facts.kv_tokens, float(est.kv_tokens), "tokens"),
        Row(f"max concurrency at {est.max_model_len:,}", facts.max_concurrency, est.max_concurrency,
            "x"),
    ]
    if facts.available_kv_gib is not None:
        logged_kv = int(facts.available_kv_gib * GIB)
        given = estimate(arch, gpu, replace(args, calibrations=(), kv_cache_memory_bytes=logged_kv))
        rows += [Row("GPU KV cache size, from the logged KV memory", facts.kv_tokens,
                     float(given.kv_tokens), "tokens"),
                 Row("max concurrency, from the logged KV memory", facts.max_concurrency,
                     given.max_concurrency, "x")]
    return Comparison(facts, est, tuple(rows), calibration_from(facts, est, source))


def calibration_from(facts: LogFacts, est: Estimate, source: str = "") -> Calibration:
    """Deltas (logged - predicted) per component. A log without the breakdown (INFO level before
    v0.19) charges the whole available-memory gap to the activation peak."""
    def delta(logged: float | None, predicted: int) -> int:
        return 0 if logged is None else round(logged * GIB) - predicted

    weights = delta(facts.weights_gib, est.weights_bytes)
    act = delta(facts.activation_gib, est.activation_bytes)
    non_torch = delta(facts.non_torch_gib, est.non_torch_bytes)
    graph = delta(facts.cudagraph_gib, est.cudagraph_bytes) if est.cudagraph_bytes else 0
    if facts.available_kv_gib is not None and not est.kv_memory_given:
        # Whatever the breakdown leaves unexplained goes to the activation term, so the calibrated
        # estimate reproduces the logged KV memory exactly.
        explained = weights + act + non_torch + graph
        gap = est.available_kv_bytes - round(facts.available_kv_gib * GIB)
        act += gap - explained
    return Calibration(model=est.model, gpu=est.gpu, vllm_version=est.vllm_version,
                       weights_delta_bytes=weights, activation_delta_bytes=act,
                       non_torch_delta_bytes=non_torch, cudagraph_delta_bytes=graph,
                       source=source)


# ---------------------------------------------------------------------------------------------
# The override file / ConfigMap: a YAML (or JSON) document
#   calibrations:
#   - {model: ..., gpu: ..., vllmVersion: ..., weightsDeltaBytes: ..., activationDeltaBytes: ...,
#      nonTorchDeltaBytes: ..., cudagraphDeltaBytes: ..., source: ...}
# ---------------------------------------------------------------------------------------------

_KEYS = {"model": "model", "gpu": "gpu", "vllmVersion": "vllm_version",
         "weightsDeltaBytes": "weights_delta_bytes",
         "activationDeltaBytes": "activation_delta_bytes",
         "nonTorchDeltaBytes": "non_torch_delta_bytes",
         "cudagraphDeltaBytes": "cudagraph_delta_bytes",
         "source": "source"}


def to_document(cals: Iterable[Calibration]) -> dict[str, Any]:
    return {"calibrations": [{k: getattr(c, f) for k, f in _KEYS.items()} for c in cals]}


def merge(existing: Sequence[Calibration], new: Calibration) -> tuple[Calibration, ...]:
    """`new` replaces an entry for the same model, GPU and version."""
    kept = [c for c in existing if not c.matches(new.model, new.gpu, new.vllm_version)]
    return (*kept, new)


def parse_calibrations(text: str, where: str = "calibration file") -> tuple[Calibration, ...]:
    """Calibration objects from the override document; a clear error for anything malformed."""
    try:
        doc = yaml.safe_load(text) if text.strip() else {"calibrations": []}
    except yaml.YAMLError as err:
        raise InvalidArgument(f"{where} is not valid YAML/JSON: {err}") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("calibrations"), list):
        raise InvalidArgument(f"{where} must be a mapping with a `calibrations` list")
    out = []
    for i, item in enumerate(doc["calibrations"]):
        if not isinstance(item, Mapping):
            raise InvalidArgument(f"{where}: calibrations[{i}] must be a mapping")
        unknown = sorted(set(item) - set(_KEYS))
        if unknown:
            raise InvalidArgument(f"{where}: calibrations[{i}] has unknown keys {unknown}; "
                                  f"allowed: {', '.join(_KEYS)}")
        missing = [k for k in ("model", "gpu", "vllmVersion") if not item.get(k)]
        if missing:
            raise InvalidArgument(f"{where}: calibrations[{i}] must set {', '.join(missing)}")
        kwargs: dict[str, Any] = {}
        for key, fname in _KEYS.items():
            if key not in item:
                continue
            value = item[key]
            if fname.endswith("_bytes"):
                if isinstance(value, bool) or not isinstance(value, int) \
                        or abs(value) > 1 << 40:
                    raise InvalidArgument(f"{where}: calibrations[{i}].{key} must be an integer "
                                          f"number of bytes (|value| <= 1 TiB), got {value!r}")
            else:
                value = str(value)
            kwargs[fname] = value
        out.append(Calibration(**kwargs))
    return tuple(out)


def applied_to(cals: Sequence[Calibration], model: str, gpu: str,
               version: str) -> Calibration | None:
    return next((c for c in cals if c.matches(model, gpu, version)), None)
