"""Planner and estimator speed, in-process (targets: a whole `kvcap plan` search < 50 ms;
>= 10,000 `estimate` evaluations per second).

Usage: python benchmarks/plan_speed.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from kvcap.api.models import ModelDeploymentSpec, parse_manifest  # noqa: E402
from kvcap.capacity.catalog import get_gpu  # noqa: E402
from kvcap.capacity.configs import load_model  # noqa: E402
from kvcap.capacity.memory import ServeArgs, estimate  # noqa: E402
from kvcap.capacity.planner import plan_deployment  # noqa: E402

ESTIMATES = [
    ("meta-llama/Llama-3.1-8B-Instruct", "H100-80GB", ServeArgs(max_model_len=8192)),
    ("Qwen/Qwen3-30B-A3B", "H100-80GB", ServeArgs(max_model_len=32768, tensor_parallel_size=2)),
    ("deepseek-ai/DeepSeek-V3", "H200-141GB", ServeArgs(max_model_len=32768, tensor_parallel_size=8)),
    ("openai/gpt-oss-120b", "H100-80GB", ServeArgs(max_model_len=131072, tensor_parallel_size=2)),
    ("google/gemma-3-27b-it", "L40S", ServeArgs(max_model_len=16384, tensor_parallel_size=2)),
]


INFEASIBLE = [
    ("infeasible: 405B on L4, 4 per node", {
        "model": {"name": "meta-llama/Llama-3.1-405B-Instruct"},
        "workload": {"maxContextTokens": 131072, "targetConcurrency": 1},
        "gpu": {"products": ["L4"], "perNode": 4}}),
    ("infeasible: 70B on L4/A10G, 1 per node", {
        "model": {"name": "meta-llama/Llama-3.1-70B-Instruct"},
        "workload": {"maxContextTokens": 131072, "targetConcurrency": 1},
        "gpu": {"products": ["L4", "A10G"], "perNode": 1}}),
]


def bench_estimate(seconds: float = 2.0) -> float:
    prepared = [(load_model(m), get_gpu(g), a) for m, g, a in ESTIMATES]
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for arch, gpu, args in prepared:
            estimate(arch, gpu, args)
        n += len(prepared)
    return n / (time.perf_counter() - start)


def bench_plan(path: Path, repeats: int = 30, all_gpus: bool = False) -> tuple[float, float, int]:
    spec = parse_manifest(yaml.safe_load(path.read_text())).spec
    if all_gpus:  # the widest search: every GPU in the catalog
        spec = spec.model_copy(update={"gpu": spec.gpu.model_copy(update={"products": []})})
    plan_deployment(spec)  # warm the catalog caches, as a running operator has them
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        plan = plan_deployment(spec)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times), plan.total_gpus


def bench_cold_cli(path: Path) -> float:
    import subprocess
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kvcap", "plan", "-f", str(path), "-o", "json"], check=False,
                   capture_output=True, env={"PYTHONPATH": str(ROOT / "operator")})
    return (time.perf_counter() - t) * 1000


def main() -> None:
    rate = bench_estimate()
    print(f"estimate: {rate:,.0f} evaluations/s in-process (target >= 10,000)")
    print()
    print(f"{'example':<45} {'median ms':>10} {'max ms':>8} {'GPUs':>5}   (target < 50 ms)")
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    for path in examples:
        med, worst, gpus = bench_plan(path)
        print(f"{path.name:<45} {med:>10.1f} {worst:>8.1f} {gpus:>5}")
        med, worst, gpus = bench_plan(path, all_gpus=True)
        print(f"{path.name + ' (all catalog GPUs)':<45} {med:>10.1f} {worst:>8.1f} {gpus:>5}")
    # Infeasible specs: the planner re-estimates what would fit (hints.what_would_fit over the
    # allowed GPUs, their shapes and every larger catalog GPU) before it answers.
    for name, doc in INFEASIBLE:
        spec = ModelDeploymentSpec.model_validate(doc)
        plan_deployment(spec)
        times = []
        for _ in range(30):
            t = time.perf_counter()
            plan = plan_deployment(spec)
            times.append((time.perf_counter() - t) * 1000)
        assert not plan.feasible, name
        print(f"{name:<45} {statistics.median(times):>10.1f} {max(times):>8.1f} {'-':>5}")
    print()
    print(f"whole CLI process (`kvcap plan -f {examples[0].name}`, cold start): "
          f"{bench_cold_cli(examples[0]):.0f} ms")


if __name__ == "__main__":
    main()
