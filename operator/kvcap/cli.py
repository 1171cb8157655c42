"""`kvcap` command line: estimate, plan, models, gpus, run.

Flags for `estimate` are spelled as `vllm serve` spells them, so users paste their own.
Exit codes: 0 success (and `fits`/`feasible`), 1 the launch would not fit / no feasible plan,
2 bad input (unknown model, malformed config, impossible flags).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kvcap import __version__
from kvcap.api.errors import InvalidArgument, KvcapError
from kvcap.capacity import catalog
from kvcap.capacity.catalog import GIB
from kvcap.capacity.configs import load_model
from kvcap.capacity.memory import KV_DTYPES, Estimate, ServeArgs, estimate
from kvcap.capacity.plan_types import CapacityPlan
from kvcap.capacity.vllm_version import NEWEST_VERSION
from kvcap.clients.hfhub import resolve_model
from kvcap.commands.argtypes import positive_int
from kvcap.commands.calibrate import add_arguments as add_calibrate_arguments
from kvcap.commands.calibrate import read_calibration_file

EXIT_OK, EXIT_UNFIT, EXIT_INPUT = 0, 1, 2


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value} (e.g. 0.9 for 90%%)")
    return value


def _bytes(text: str) -> int:
    from kvcap.api.models import parse_quantity
    try:
        value = parse_quantity(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvcap", description="Size and run vLLM model servers from the KV-cache budget.")
    parser.add_argument("--version", action="version", version=f"kvcap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    est = sub.add_parser("estimate", help="predict vLLM's KV cache for one launch",
                         description="Predict what `vllm serve` prints at startup: available KV "
                         "memory, GPU KV cache size (tokens), maximum concurrency, or its refusal.")
    est.add_argument("model", metavar="MODEL",
                     help="HF id or catalog alias, a config.json, or a directory holding one")
    est.add_argument("--gpu", default="H100-80GB",
                     help="GPU name or nvidia.com/gpu.product value (default H100-80GB)")
    est.add_argument("--gpu-memory-gib", type=_positive_float,
                     help="GPU memory as the CUDA runtime reports it, for a GPU the catalog lacks")
    est.add_argument("--tensor-parallel-size", "-tp", type=positive_int, default=1)
    est.add_argument("--pipeline-parallel-size", "-pp", type=positive_int, default=1)
    est.add_argument("--decode-context-parallel-size", "-dcp", type=positive_int, default=1)
    est.add_argument("--gpu-memory-utilization", type=_fraction)
    est.add_argument("--max-model-len", type=positive_int)
    est.add_argument("--max-num-seqs", type=positive_int)
    est.add_argument("--max-num-batched-tokens", type=positive_int)
    est.add_argument("--kv-cache-dtype", default="auto", choices=KV_DTYPES)
    est.add_argument("--block-size", type=positive_int)
    est.add_argument("--quantization", "-q")
    est.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32",
                                                         "half", "float"))
    est.add_argument("--kv-cache-memory-bytes", type=_bytes,
                     help="per-GPU KV cache size (skips profiling, as in vLLM); accepts 20Gi etc.")
    est.add_argument("--enforce-eager", action="store_true")
    est.add_argument("--disable-hybrid-kv-cache-manager", action="store_true")
    est.add_argument("--vllm-version",
                     help="vLLM version whose accounting to follow (default: the newest kvcap "
                     f"has rules for, {NEWEST_VERSION}; older versions follow their own rules)")
    est.add_argument("--calibration", metavar="FILE",
                     help="calibrations from `kvcap calibrate --write-override`; the one for this "
                     "model, GPU and version applies")
    _hub_flags(est)
    est.add_argument("--output", "-o", choices=("table", "json"), default="table")

    plan = sub.add_parser("plan", help="plan GPUs, TP and replicas for a ModelDeployment",
                          description="Read a ModelDeployment manifest and print the plan the "
                          "operator would apply.")
    plan.add_argument("-f", "--filename", required=True, help="ModelDeployment YAML ('-' for stdin)")
    plan.add_argument("--config", help="config.json to use instead of the catalog")
    _hub_flags(plan)
    plan.add_argument("--calibration", metavar="FILE",
                      help="calibrations from `kvcap calibrate --write-override`")
    plan.add_argument("--output", "-o", choices=("table", "json", "yaml"), default="table")

    models = sub.add_parser("models", help="list the built-in model catalog")
    models.add_argument("--output", "-o", choices=("table", "json"), default="table")
    gpus = sub.add_parser("gpus", help="list the built-in GPU catalog")
    gpus.add_argument("--output", "-o", choices=("table", "json"), default="table")

    sim = sub.add_parser("simulate", help="replay a request trace through the planned pools",
                         description="Replay a real trace (Mooncake, Azure LLM, ShareGPT lengths) "
                         "through vLLM-like replicas of the planned pools under scaling policies: "
                         "GPU-hours, SLO attainment, latency, preemptions per policy.")
    from kvcap.commands.simulate import add_arguments as _sim_arguments
    _sim_arguments(sim)
    sim.add_argument("--config", help="config.json to use instead of the catalog")

    cal = sub.add_parser("calibrate", help="compare a real vLLM startup log with kvcap's prediction",
                         description="Read a vLLM startup log (INFO or DEBUG), find the model, "
                         "version, GPU and flags it names, print kvcap's prediction next to each "
                         "logged line, and optionally write a calibration that `kvcap plan` and the "
                         "operator apply.")
    add_calibrate_arguments(cal)
    _hub_flags(cal)
    cal.add_argument("--output", "-o", choices=("table", "json"), default="table")

    exp = sub.add_parser("export", help="export a ModelDeployment's scaling rule for other tools")
    from kvcap.commands.export import add_arguments as _export_arguments
    _export_arguments(exp)

    emu = sub.add_parser("emulate-vllm", help="vLLM /metrics emulators (tests, sandbox, demos)",
                         description="Serve vLLM's Prometheus metrics from emulated servers: "
                         "`serve` N of them, `follow` the kvcap pods of a cluster, `set` a "
                         "pool's levels.")
    from kvcap.commands.emulate import add_arguments as _emulate_arguments
    _emulate_arguments(emu)

    run = sub.add_parser("run", help="run the operator (kopf)")
    run.add_argument("--namespace", "-n", action="append", dest="namespaces",
                     help="watch only this namespace (repeatable); default: all")
    run.add_argument("--liveness", default=None,
                     help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--verbose", action="store_true")
    return parser


def _hub_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hf-hub", action="store_true",
                   help="fetch config.json from the Hugging Face Hub when MODEL is not in the catalog")
    p.add_argument("--hf-token", default=os.environ.get("HF_TOKEN") or None,
                   help="Hugging Face token (default $HF_TOKEN)")
    p.add_argument("--revision", help="Hub revision (branch, tag or commit)")


# ---------------------------------------------------------------------------------------------

def _gib(b: float) -> str:
    return f"{b / GIB:.2f} GiB"


def render_estimate(est: Estimate) -> str:
    kvt = est.kv_bytes_per_token
    lines = [
        f"model            {est.model}",
        f"gpu              {est.gpu} ({_gib(est.gpu_total_bytes)} as CUDA reports it) x "
        f"{est.gpus_per_replica} (TP {est.tensor_parallel_size}, PP {est.pipeline_parallel_size}"
        + (f", DCP {est.decode_context_parallel_size}" if est.decode_context_parallel_size > 1 else "")
        + ")",
        f"vllm             {est.vllm_version} ({est.engine} engine)",
        "",
        "memory per GPU",
    ]
    if est.kv_memory_given:
        lines.append(f"  KV cache (--kv-cache-memory-bytes)      {_gib(est.available_kv_bytes):>12}")
    else:
        usable = int(est.gpu_total_bytes * est.gpu_memory_utilization)
        lines += [
            f"  total x utilization {est.gpu_memory_utilization:.2f}          "
            f"{_gib(usable):>12}",
            f"  - weights                               {_gib(est.weights_bytes):>12}",
            f"  - activation peak (profile run of {est.max_num_batched_tokens} tokens)"
            f" {_gib(est.activation_bytes):>9}",
            f"  - non-torch (NCCL, cuBLAS, ...)          {_gib(est.non_torch_bytes):>12}",
        ]
        if est.cudagraph_bytes:
            lines.append(f"  - CUDA graphs                           {_gib(est.cudagraph_bytes):>12}")
        lines.append(f"  = available KV cache memory             {_gib(est.available_kv_bytes):>12}")
    lines += [
        "",
        "KV cache",
        f"  bytes per token per GPU                 {kvt:>12,}  ({est.kv_cache_dtype} KV, "
        f"{est.kv_dtype_bytes} byte(s) per value)",
        f"  page (one block, one layer)             {est.page_bytes:>12,}  (block size {est.block_size})",
        f"  KV cache groups                         {len(est.groups):>12}  ("
        + ", ".join(f"{g.kind} x{g.layers}" for g in est.groups) + ")",
        f"  blocks = available // page // {est.group_size:<4}    {est.num_blocks:>12,}",
        f"  GPU KV cache size                       {est.kv_tokens:>12,} tokens",
        f"  one {est.max_model_len:,}-token request needs        {_gib(est.request_kv_bytes):>12}",
        f"  maximum concurrency at {est.max_model_len:,} tokens   {est.max_concurrency:>11.2f}x",
        "",
    ]
    if est.fits:
        lines.append(f"fits: yes (max-num-seqs {est.max_num_seqs}, max-num-batched-tokens "
                     f"{est.max_num_batched_tokens})")
    else:
        lines.append(f"fits: NO — vLLM would refuse to start: {est.reason}")
    return "\n".join(lines)


def suggest_fix(arch: Any, gpu: Any, args: ServeArgs, est: Estimate) -> list[str]:
    """What would fit: concrete configurations, each re-estimated, cheapest first
    (kvcap.capacity.hints)."""
    from dataclasses import replace

    from kvcap.capacity.hints import what_would_fit
    base = replace(args, max_model_len=est.max_model_len)
    fits = what_would_fit(arch, gpu, base, catalog.all_gpus())
    return [f.describe(base) for f in fits]


def _hints(arch: Any, gpu: Any, args: ServeArgs, est: Estimate) -> str:
    fits = suggest_fix(arch, gpu, args, est)
    if not fits:
        return "nothing kvcap knows fits: no catalog GPU holds it with up to 8 x 4 GPUs"
    return "; or ".join(fits)


def cmd_estimate(ns: argparse.Namespace) -> int:
    arch = resolve_model(ns.model, hub=ns.hf_hub, token=ns.hf_token, revision=ns.revision)
    gpu = catalog.get_gpu(ns.gpu, ns.gpu_memory_gib)
    args = ServeArgs(
        tensor_parallel_size=ns.tensor_parallel_size,
        pipeline_parallel_size=ns.pipeline_parallel_size,
        decode_context_parallel_size=ns.decode_context_parallel_size,
        gpu_memory_utilization=ns.gpu_memory_utilization,
        max_model_len=ns.max_model_len,
        max_num_seqs=ns.max_num_seqs,
        max_num_batched_tokens=ns.max_num_batched_tokens,
        kv_cache_dtype=ns.kv_cache_dtype,
        block_size=ns.block_size,
        quantization=ns.quantization,
        kv_cache_memory_bytes=ns.kv_cache_memory_bytes,
        vllm_version=ns.vllm_version,
        enforce_eager=ns.enforce_eager,
        disable_hybrid_kv_cache_manager=ns.disable_hybrid_kv_cache_manager,
        dtype=ns.dtype,
        calibrations=read_calibration_file(ns.calibration) if ns.calibration else (),
    )
    est = estimate(arch, gpu, args)
    result = est.to_dict()
    if not est.fits:
        result["vllm_error"] = est.reason
        result["what_would_fit"] = suggest_fix(arch, gpu, args, est)
        result["reason"] = f"{est.reason.split('. ')[0]}; would fit: {_hints(arch, gpu, args, est)}"
    if ns.output == "json":
        print(json.dumps(result, indent=2))
    else:
        print(render_estimate(est))
        if not est.fits:
            fits = suggest_fix(arch, gpu, args, est)
            print("what would fit (re-estimated, cheapest first):")
            for line in fits or [_hints(arch, gpu, args, est)]:
                print(f"  {line}")
    return EXIT_OK if est.fits else EXIT_UNFIT


# ---------------------------------------------------------------------------------------------

def _read_manifest(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as err:
        raise InvalidArgument(f"cannot read '{path}': {err.strerror}") from err
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise InvalidArgument(f"'{path}' is not valid YAML: {err}") from err
    mdeps = [d for d in docs if isinstance(d, dict) and d.get("kind") == "ModelDeployment"]
    if not mdeps:
        raise InvalidArgument(f"'{path}' holds no ModelDeployment (kind: ModelDeployment, apiVersion: "
                         f"kvcap.io/v1alpha1)")
    if len(mdeps) > 1:
        raise InvalidArgument(f"'{path}' holds {len(mdeps)} ModelDeployments; plan one at a time")
    return mdeps[0]


def _validation_message(err: ValidationError, path: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        parts.append(f"`{loc}`: {e['msg']}")
    return f"'{path}' is not a valid ModelDeployment: " + "; ".join(parts)


def render_plan(plan: CapacityPlan) -> str:
    if not plan.feasible:
        return f"model  {plan.model}\nfeasible: NO — {plan.message}"
    lines = [
        f"model            {plan.model}",
        f"plan             {plan.total_gpus} GPUs (lower bound {plan.lower_bound_gpus}: all KV + one "
        f"copy of the weights over usable memory)",
        f"pools            {plan.split_decision}",
        "",
    ]
    header = ("POOL", "GPU", "TP", "PP", "REPLICAS", "GPUS", "MAX-MODEL-LEN", "MAX-NUM-SEQS",
              "KV-TOKENS/REPLICA", "KV/GPU", "HEADROOM")
    rows = [header]
    for p in plan.pools:
        rows.append((p.name, p.gpu_product, str(p.tensor_parallel_size), str(p.pipeline_parallel_size),
                     str(p.replicas), str(p.total_gpus), f"{p.max_model_len:,}", str(p.max_num_seqs),
                     f"{p.kv_tokens_per_replica:,}", _gib(p.kv_bytes_per_gpu),
                     f"{p.headroom_percent:.0f}%"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append("")
    for p in plan.pools:
        lines.append(f"{p.name} pool: requests {p.min_context_tokens + 1 if p.min_context_tokens else 1}"
                     f"–{p.max_model_len:,} tokens, {p.target_concurrency} concurrent, "
                     f"{p.concurrency_per_replica:.1f} per replica")
        if p.binding_constraint is not None:
            lines.append(f"  latency: {p.binding_constraint} binds; predicted TTFT "
                         f"{p.predicted_ttft_ms or 0:.0f} ms, TPOT {p.predicted_tpot_ms or 0:.1f} ms "
                         f"at {p.concurrency_per_replica:.1f} requests per replica")
        lines.append("  vllm serve " + " ".join(p.vllm_args))
        for note in p.notes:
            lines.append(f"  note: {note}")
    if plan.alternatives:
        lines += ["", "runner-up plans"]
        for alt in plan.alternatives:
            lines.append(f"  {alt.summary}: {alt.why_not}")
    for warning in plan.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def cmd_plan(ns: argparse.Namespace) -> int:
    from kvcap.api.models import parse_manifest
    from kvcap.capacity.configs import read_config_file
    from kvcap.capacity.planner import plan_deployment
    from kvcap.clients.hfhub import fetch_config

    doc = _read_manifest(ns.filename)
    try:
        manifest = parse_manifest(doc)
    except ValidationError as err:
        raise InvalidArgument(_validation_message(err, ns.filename)) from None
    spec = manifest.spec
    config = None
    if ns.config:
        config = read_config_file(Path(ns.config))
    elif ns.hf_hub and catalog.find_model(spec.model.name) is None:
        config = fetch_config(spec.model.name, token=ns.hf_token, revision=ns.revision or
                              spec.model.revision)
    calibrations = read_calibration_file(ns.calibration) if ns.calibration else ()
    plan = plan_deployment(spec, config=config, calibrations=calibrations)
    data = plan.to_dict()
    data["name"] = manifest.metadata.name
    if ns.output == "json":
        print(json.dumps(data, indent=2))
    elif ns.output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
    else:
        print(render_plan(plan))
    return EXIT_OK if plan.feasible else EXIT_UNFIT


def cmd_models(ns: argparse.Namespace) -> int:
    rows = []
    for model_id in catalog.model_ids():
        arch = load_model(model_id)
        rows.append({"id": model_id, "params_b": round(arch.num_parameters / 1e9, 2),
                     "layers": len(arch.layer_kinds), "kv_heads": arch.num_kv_heads,
                     "head_dim": arch.head_dim, "kinds": arch.kind_counts,
                     "quantization": arch.quant_method})
    if ns.output == "json":
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            kinds = ",".join(f"{k}:{v}" for k, v in r["kinds"].items())
            print(f"{r['id']:<55} {r['params_b']:>8}B  layers={r['layers']:<3} kv_heads={r['kv_heads']:<3}"
                  f" head_dim={r['head_dim']:<4} {kinds} {r['quantization'] or ''}")
    return EXIT_OK


def cmd_gpus(ns: argparse.Namespace) -> int:
    rows = [{"name": g.name, "memory_gib": round(g.memory_gib, 2), "bandwidth_gbps": g.bandwidth_gbps,
             "product_labels": list(g.product_labels)} for g in catalog.all_gpus()]
    if ns.output == "json":
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:<16} {r['memory_gib']:>8} GiB  {r['bandwidth_gbps']:>7.0f} GB/s  "
                  f"{', '.join(r['product_labels'])}")
    return EXIT_OK


def cmd_simulate(ns: argparse.Namespace) -> int:
    from kvcap.api.models import parse_manifest
    from kvcap.capacity.configs import read_config_file
    from kvcap.commands.simulate import execute

    doc = _read_manifest(ns.filename)
    try:
        spec = parse_manifest(doc).spec
    except ValidationError as err:
        raise InvalidArgument(_validation_message(err, ns.filename)) from None
    config = read_config_file(Path(ns.config)) if ns.config else None
    return execute(ns, spec, load_model(spec.model.name, config=config))


def cmd_calibrate(ns: argparse.Namespace) -> int:
    from kvcap.commands.calibrate import run as run_calibrate
    return run_calibrate(ns)


def cmd_export(ns: argparse.Namespace) -> int:
    from kvcap.commands.export import run as run_export
    return run_export(ns)


def cmd_emulate(ns: argparse.Namespace) -> int:
    from kvcap.commands.emulate import run as run_emulate
    return run_emulate(ns)


def cmd_run(ns: argparse.Namespace) -> int:
    from kvcap.controller.runner import run
    return run(namespaces=ns.namespaces, liveness_endpoint=ns.liveness, verbose=ns.verbose)


COMMANDS = {"estimate": cmd_estimate, "plan": cmd_plan, "simulate": cmd_simulate,
            "models": cmd_models, "gpus": cmd_gpus,
            "calibrate": cmd_calibrate, "export": cmd_export, "emulate-vllm": cmd_emulate,
            "run": cmd_run}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return COMMANDS[ns.command](ns)
    except KvcapError as err:
        print(f"kvcap {ns.command}: error: {err.message}", file=sys.stderr)
        return EXIT_INPUT
