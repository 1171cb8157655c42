"""`kvcap calibrate --log FILE`: the shell around `kvcap.capacity.calibration` (file I/O, model and
GPU resolution, rendering). cli.py registers it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from kvcap.api.errors import InvalidArgument
from kvcap.capacity import catalog
from kvcap.capacity.calibration import (
    Comparison,
    LogFacts,
    compare,
    merge,
    parse_calibrations,
    parse_log,
    serve_args,
    to_document,
)
from kvcap.capacity.catalog import GIB, Gpu
from kvcap.capacity.memory import Calibration
from kvcap.clients.hfhub import resolve_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", required=True, help="a vLLM startup log (INFO or DEBUG), '-' for stdin")
    p.add_argument("--model", help="model id, when the log names a local path or none")
    p.add_argument("--gpu", help="GPU product, when the log does not name it")
    p.add_argument("--vllm-version", help="vLLM version, when the log does not print it")
    p.add_argument("--write-override", metavar="FILE",
                   help="add (or replace) this launch's calibration in FILE, the document "
                   "`kvcap plan --calibration` and the operator's calibration ConfigMap read")


def read_calibration_file(path: str) -> tuple[Calibration, ...]:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise InvalidArgument(f"cannot read calibration file '{path}': {err.strerror}") from err
    return parse_calibrations(text, where=f"calibration file '{path}'")


def _gpu(facts: LogFacts, name: str | None) -> tuple[Gpu, str]:
    if name:
        return catalog.get_gpu(name, facts.gpu_total_gib), "from --gpu"
    if facts.gpu_name:
        for key in (facts.gpu_name, facts.gpu_name.replace("NVIDIA ", ""),
                    facts.gpu_name.replace(" ", "-")):
            found = catalog.find_gpu(key)
            if found:
                return catalog.get_gpu(found.name, facts.gpu_total_gib), "from the log"
    if facts.gpu_total_gib:
        near = [g for g in catalog.all_gpus() if abs(g.memory_gib - facts.gpu_total_gib) < 0.3]
        if len(near) == 1:
            return (catalog.get_gpu(near[0].name, facts.gpu_total_gib),
                    f"inferred from total memory {facts.gpu_total_gib} GiB")
    raise InvalidArgument(
        "the log does not say which GPU ran it"
        + (f" ({facts.gpu_total_gib} GiB matches several catalog GPUs)" if facts.gpu_total_gib
           else "") + "; must pass --gpu (see `kvcap gpus`)")


def run(ns: argparse.Namespace) -> int:
    try:
        text = (Path("/dev/stdin") if ns.log == "-" else Path(ns.log)).read_text(errors="replace")
    except OSError as err:
        raise InvalidArgument(f"cannot read log '{ns.log}': {err.strerror}") from err
    facts = parse_log(text)
    model = ns.model or facts.model
    if not model:
        raise InvalidArgument("the log does not name the model; must pass --model")
    version = ns.vllm_version or facts.vllm_version
    if not version:
        raise InvalidArgument("the log does not print the vLLM version; must pass --vllm-version")
    arch = resolve_model(model, hub=ns.hf_hub, token=ns.hf_token, revision=ns.revision)
    gpu, gpu_how = _gpu(facts, ns.gpu)
    args = serve_args(facts, version)
    result = compare(facts, arch, gpu, args, source=f"kvcap calibrate --log {ns.log}")
    if ns.write_override:
        path = Path(ns.write_override)
        existing = read_calibration_file(str(path)) if path.exists() else ()
        doc = to_document(merge(existing, result.calibration))
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    if ns.output == "json":
        print(json.dumps(_as_dict(result, gpu_how), indent=2))
    else:
        print(render(result, gpu_how))
        if ns.write_override:
            print(f"\nwrote the calibration to {ns.write_override}")
    return 0


def _as_dict(c: Comparison, gpu_how: str) -> dict[str, Any]:
    return {
        "model": c.estimate.model, "gpu": c.estimate.gpu, "gpu_source": gpu_how,
        "vllm_version": c.estimate.vllm_version, "flags": c.facts.flags,
        "lines": [{"line": r.what, "logged": r.logged, "kvcap": round(r.predicted, 4),
                   "difference": None if r.difference is None else round(r.difference, 4),
                   "unit": r.unit} for r in c.rows],
        "refused": c.facts.refused, "kvcap_fits": c.estimate.fits,
        "calibration": to_document([c.calibration])["calibrations"][0],
    }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "tokens":
        return f"{value:,.0f}"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.2f} GiB"


def render(c: Comparison, gpu_how: str) -> str:
    e = c.estimate
    flags = ", ".join(f"{k}={v}" for k, v in sorted(c.facts.flags.items()))
    lines = [
        f"model   {e.model}",
        f"gpu     {e.gpu} ({e.gpu_total_bytes / GIB:.2f} GiB; {gpu_how})",
        f"vllm    {e.vllm_version} ({e.engine})",
        f"flags   {flags or '(defaults)'}",
        "",
        f"{'line':<48} {'logged':>14} {'kvcap':>14} {'kvcap - logged':>15}",
    ]
    for r in c.rows:
        diff = "-" if r.difference is None else (
            f"{r.difference:+,.0f}" if r.unit == "tokens" else f"{r.difference:+.2f}")
        lines.append(f"{r.what:<48} {_fmt(r.logged, r.unit):>14} {_fmt(r.predicted, r.unit):>14} "
                     f"{diff:>15}")
    lines.append("")
    if c.facts.refused:
        lines.append(f"vLLM refused to start: {c.facts.refused[:160]}")
        lines.append(f"kvcap: {'fits' if e.fits else 'does not fit'}"
                     + (f" ({e.reason[:120]})" if e.reason else ""))
    cal = c.calibration
    lines.append(
        f"calibration (logged - kvcap): weights {cal.weights_delta_bytes / GIB:+.2f} GiB, "
        f"activation {cal.activation_delta_bytes / GIB:+.2f} GiB, non-torch "
        f"{cal.non_torch_delta_bytes / GIB:+.2f} GiB, CUDA graphs "
        f"{cal.cudagraph_delta_bytes / GIB:+.2f} GiB")
    return "\n".join(lines)
