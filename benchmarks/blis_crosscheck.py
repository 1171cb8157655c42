"""Cross-check `kvcap simulate`'s replica model against BLIS (github.com/inference-sim/inference-sim
v0.7.15), a simulator with published validation against real vLLM, on the same model, GPU, batch
limits, KV blocks and trace slice at fixed replicas.

    .venv/bin/python benchmarks/blis_crosscheck.py [--seconds 300] [--keep DIR]

BLIS is built here, never committed: a throw-away Go module in a temp dir that requires v0.7.15 and
calls its `cmd.Execute()` (`go install ...@latest` fails on the proxy's version list; a required
version builds with `go build`). BLIS needs its own hardware_config.json, defaults.yaml and the
model's config.json, copied from the module cache. Both simulators replay the first `--seconds` of
the Azure conversation trace; BLIS runs its `roofline` and its default `trained-physics` latency
models.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from kvcap.capacity import catalog  # noqa: E402
from kvcap.capacity.configs import load_model  # noqa: E402
from kvcap.capacity.latency import step_model  # noqa: E402
from kvcap.capacity.memory import ServeArgs, estimate  # noqa: E402
from kvcap.sim.cluster import simulate  # noqa: E402
from kvcap.sim.engine import EngineConfig  # noqa: E402
from kvcap.sim.model import ClusterConfig, PoolSetup  # noqa: E402
from kvcap.sim.policies import Static  # noqa: E402
from kvcap.sim.trace import Trace, cut, read_trace, scale  # noqa: E402

BLIS_VERSION = "v0.7.15"
MODEL = "Qwen/Qwen2.5-7B-Instruct"  # in kvcap's catalog and in BLIS's model_configs + defaults
BLIS_MODEL = "qwen/qwen2.5-7b-instruct"
GPU, BLIS_GPU = "H100-80GB", "H100"
MAX_MODEL_LEN = 16384
MAX_NUM_SEQS, MAX_BATCHED = 1024, 8192  # vLLM's defaults on an H100 (arg_utils get_batch_defaults)
BLOCK = 16


def build_blis(work: Path) -> Path:
    mod = work / "wrap"
    mod.mkdir()
    (mod / "go.mod").write_text(f"module kvcapblis\n\ngo 1.24.0\n\nrequire "
                                f"github.com/inference-sim/inference-sim {BLIS_VERSION}\n")
    (mod / "main.go").write_text('package main\n\nimport "github.com/inference-sim/inference-sim/'
                                 'cmd"\n\nfunc main() { cmd.Execute() }\n')
    env = {**os.environ, "GOFLAGS": "-mod=mod"}
    t0 = time.monotonic()
    subprocess.run(["go", "mod", "tidy"], cwd=mod, env=env, check=True, capture_output=True)
    subprocess.run(["go", "build", "-o", str(work / "blis"), "."], cwd=mod, env=env, check=True)
    print(f"built BLIS {BLIS_VERSION} in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    src = Path(subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True,
                              check=True).stdout.strip()) / \
        f"github.com/inference-sim/inference-sim@{BLIS_VERSION}"
    for name in ("hardware_config.json", "defaults.yaml"):
        shutil.copy(src / name, work / name)
    shutil.copytree(src / "model_configs" / "qwen2.5-7b-instruct",
                    work / "model_configs" / "qwen2.5-7b-instruct")
    for p in (work / "model_configs").rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)  # the module cache is read-only
    for name in ("hardware_config.json", "defaults.yaml", "model_configs"):
        (work / name).chmod(0o755 if (work / name).is_dir() else 0o644)
    return work / "blis"


CSV_HEADER = ("request_id,client_id,tenant_id,slo_class,session_id,round_index,prefix_group,"
              "prefix_length,streaming,input_tokens,output_tokens,text_tokens,image_tokens,"
              "audio_tokens,video_tokens,reason_ratio,model,deadline_us,server_input_tokens,"
              "arrival_time_us,send_time_us,first_chunk_time_us,last_chunk_time_us,num_chunks,"
              "status,error_message,finish_reason")


def write_trace_v2(trace: Trace, work: Path) -> tuple[Path, Path]:
    """BLIS TraceV2 (the header/CSV pair `blis run --trace-output` writes)."""
    header = work / "trace.yaml"
    header.write_text("trace_version: 3\ntime_unit: microseconds\nmode: generated\n"
                      "warm_up_requests: 0\nworkload_seed: 0\n")
    data = work / "trace.csv"
    lines = [CSV_HEADER]
    for i, r in enumerate(trace.requests):
        t = int(r.arrival * 1e6)
        lines.append(f"{i},azure,,,,0,,0,false,{max(1, r.prompt)},{max(1, r.output)},0,0,0,0,0,,"
                     f"{t + 600_000_000},0,{t},{t},0,0,0,ok,,")
    data.write_text("\n".join(lines) + "\n")
    return header, data


def run_blis(blis: Path, work: Path, header: Path, data: Path, replicas: int, blocks: int,
             latency_model: str) -> dict[str, Any]:
    results = work / f"r-{latency_model}.json"
    cmd = [str(blis), "replay", "--trace-header", str(header), "--trace-data", str(data),
           "--model", BLIS_MODEL, "--hardware", BLIS_GPU, "--tp", "1",
           "--latency-model", latency_model,
           "--model-config-folder", str(work / "model_configs" / "qwen2.5-7b-instruct"),
           "--num-instances", str(replicas), "--total-kv-blocks", str(blocks),
           "--block-size-in-tokens", str(BLOCK), "--max-num-running-reqs", str(MAX_NUM_SEQS),
           "--max-num-scheduled-tokens", str(MAX_BATCHED), "--max-model-len", str(MAX_MODEL_LEN),
           "--routing-policy", "least-loaded", "--results-path", str(results)]
    t0 = time.monotonic()
    out = subprocess.run(cmd, cwd=work, check=True, capture_output=True, text=True).stdout
    wall = time.monotonic() - t0
    m = json.loads(out.split("=== Simulation Metrics ===", 1)[1].strip().split("\n}", 1)[0]
                   + "\n}")
    per = json.loads(results.read_text())
    ttft = sorted(r["ttft_us"] / 1e6 for r in per if r.get("ttft_us", 0) > 0)
    itl = sorted(r["itl_mean_us"] / 1e3 for r in per if r.get("itl_mean_us", 0) > 0)
    return {"ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
            "tpot_p50_ms": _pct(itl, 50), "tpot_mean_ms": statistics.fmean(itl) if itl else 0.0,
            "preemptions": m.get("preemption_count", 0),
            "completed": f"{m.get('completed_requests', 0)} of {m.get('injected_requests', 0)}",
            "not_done": sum(int(m.get(k, 0)) for k in ("still_queued", "still_running",
                                                         "dropped_unservable",
                                                         "timed_out_requests")),
            "kv_peak": "n/a",  # BLIS v0.7.15 replay prints no KV peak
            "wall_s": wall}


def run_kvcap(trace: Trace, replicas: int, blocks: int) -> dict[str, Any]:
    arch = load_model(MODEL)
    gpu = catalog.get_gpu(GPU)
    est = estimate(arch, gpu, ServeArgs(max_model_len=MAX_MODEL_LEN))
    model = step_model(arch, gpu, tp=1, weight_bytes_per_gpu=est.weights_bytes,
                       kv_bytes_per_token=est.kv_bytes_per_token)
    setup = PoolSetup(name="default", min_context=0, max_model_len=MAX_MODEL_LEN, gpu_product=GPU,
                      tensor_parallel_size=1, gpus_per_replica=1, planned_replicas=replicas,
                      kv_tokens_per_replica=blocks * BLOCK,
                      engine=EngineConfig(total_blocks=blocks, block_size=BLOCK,
                                          max_num_seqs=MAX_NUM_SEQS,
                                          max_num_batched_tokens=MAX_BATCHED),
                      model=model, startup_s=0.0)
    t0 = time.monotonic()
    res = simulate(trace, [setup], Static({0: replicas}), ClusterConfig(drain_s=3600))
    wall = time.monotonic() - t0
    done = [r for r in res.requests if r.finish >= 0]
    ttft = sorted(r.first_token - r.arrival for r in done)
    tpot = sorted((r.finish - r.first_token) / (r.output - 1) * 1e3 for r in done if r.output > 1)
    peak = max(rep.peak_blocks / rep.cfg.total_blocks for rep in res.pools[0].replicas)
    return {"ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
            "tpot_p50_ms": _pct(tpot, 50), "tpot_mean_ms": statistics.fmean(tpot),
            "preemptions": sum(r.preemptions for r in res.requests),
            "completed": f"{len(done)} of {len(res.requests)}",
            "not_done": len(res.requests) - len(done),
            "kv_peak": round(peak, 3), "wall_s": wall}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[max(0, min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--traces", type=Path, default=ROOT.parent / "shared" / "traces")
    ap.add_argument("--keep", type=Path, help="keep the work dir (binary, traces, outputs) here")
    ns = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kvcap-blis-"))
    try:
        blis = build_blis(work)
        base = cut(read_trace(ns.traces / "azure_llm_2023/AzureLLMInferenceTrace_conv.csv"),
                   ns.seconds)
        arch = load_model(MODEL)
        est = estimate(arch, catalog.get_gpu(GPU), ServeArgs(max_model_len=MAX_MODEL_LEN))
        cases = [("1 replica, trace x1", 1, 1.0, est.num_blocks),
                 ("2 replicas, trace x6", 2, 6.0, est.num_blocks),
                 ("1 replica, trace x3, 4,096 KV blocks (65,536 tokens)", 1, 3.0, 4096)]
        rows = []
        for name, replicas, k, blocks in cases:
            trace = scale(base, k, 0)
            header, data = write_trace_v2(trace, work)
            rows.append((name, len(trace.requests), "kvcap", run_kvcap(trace, replicas, blocks)))
            for lm in ("roofline", "trained-physics"):
                rows.append((name, len(trace.requests), f"BLIS {lm}",
                             run_blis(blis, work, header, data, replicas, blocks, lm)))
        print(f"Qwen2.5-7B-Instruct on {GPU}, TP 1, max-num-seqs {MAX_NUM_SEQS}, "
              f"max-num-batched-tokens {MAX_BATCHED}, block {BLOCK}; Azure conv first "
              f"{ns.seconds:.0f} s\n")
        print("| case | requests | simulator | TTFT p50 (s) | TTFT p99 (s) | TPOT p50 (ms) | "
              "TPOT mean (ms) | preemptions | completed of injected | not completed | peak KV | "
              "wall (s) |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, n, sim, m in rows:
            print(f"| {name} | {n} | {sim} | {m['ttft_p50_s']:.3f} | {m['ttft_p99_s']:.3f} | "
                  f"{m['tpot_p50_ms']:.2f} | {m['tpot_mean_ms']:.2f} | {m['preemptions']} | "
                  f"{m['completed']} | {m['not_done']} | {m['kv_peak']} | {m['wall_s']:.1f} |")
    finally:
        if ns.keep:
            shutil.copytree(work, ns.keep, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
