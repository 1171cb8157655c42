"""`kvcap simulate`: a ModelDeployment and a trace -> one simulation per policy (pure; reading the
trace file is the only I/O).

The planner decides the pools (GPU, TP, KV tokens per replica, max-num-seqs, routing ranges)
exactly as `kvcap plan` and the operator do; the simulator then replays the trace through those
pools under each policy. Static and clairvoyant provisioning use the demand the trace will
generate (`demand_need`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kvcap.api.errors import InvalidArgument
from kvcap.api.models import ModelDeploymentSpec
from kvcap.capacity import catalog
from kvcap.capacity.arch import ModelArch
from kvcap.capacity.latency import pairs
from kvcap.capacity.plan_types import CapacityPlan
from kvcap.capacity.planner import plan_deployment, step_model_for
from kvcap.sim.cluster import RunResult, route, simulate, summarize
from kvcap.sim.engine import EngineConfig
from kvcap.sim.model import ClusterConfig, PoolSetup, Slo
from kvcap.sim.policies import (
    Bounds,
    Clairvoyant,
    HpaRps,
    KedaQueue,
    Kvcap,
    KvPercent,
    Policy,
    Static,
)
from kvcap.sim.trace import Trace

POLICIES = ("kvcap", "hpa-rps", "keda-queue", "kv-percent", "static", "clairvoyant")
NEED_BIN_S = 10.0

# Pod start-up: container start, vLLM's profiling run, torch.compile and CUDA-graph capture take
# about a minute on current vLLM V1 (server logs: "torch.compile takes ~20-40 s", "Graph capturing
# finished in ~10-30 s"), plus the weights streamed from the cache volume or the Hub at an assumed
# 1 GB/s per pod. Override with --startup-seconds.
STARTUP_FIXED_S = 60.0
WEIGHT_LOAD_BYTES_PER_S = 1e9


@dataclass(frozen=True)
class SimOptions:
    policies: tuple[str, ...] = POLICIES
    seed: int = 0
    slo: Slo = field(default_factory=Slo)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    startup_s: float | None = None
    keda_waiting_per_replica: float = 5.0  # KEDA threshold (AverageValue)
    kv_percent_target: float = 0.8  # llm-d / AIBrix samples
    hpa_rps_per_replica: float | None = None  # default: what one replica sustains at the target
    # Start every policy with the replicas the opening minutes need (the clairvoyant's figure)
    # instead of the plan's, so a cold start under full load does not dominate the comparison.
    warm_start: bool = False
    min_replicas: int | None = None  # default: spec.autoscaling.minReplicas
    max_replicas: int | None = None  # default: spec.autoscaling.maxReplicas


def pool_setups(spec: ModelDeploymentSpec, plan: CapacityPlan, arch: ModelArch, trace: Trace,
                startup_s: float | None) -> list[PoolSetup]:
    """One `PoolSetup` per planned pool, with the mean lengths of the trace's requests it gets."""
    if not plan.feasible:
        raise InvalidArgument(f"the ModelDeployment has no feasible plan: {plan.message}")
    setups: list[PoolSetup] = []
    for p in plan.pools:
        gpu = catalog.get_gpu(p.gpu_product)
        model, est = step_model_for(arch, gpu, spec, p.tensor_parallel_size,
                                    p.pipeline_parallel_size, p.max_model_len)
        bs = est.block_size
        engine = EngineConfig(total_blocks=max(1, p.kv_tokens_per_replica // bs), block_size=bs,
                              max_num_seqs=p.max_num_seqs,
                              max_num_batched_tokens=est.max_num_batched_tokens,
                              hash_block_tokens=trace.block_tokens)
        weights = est.weights_bytes * p.gpus_per_replica
        start = startup_s if startup_s is not None else \
            STARTUP_FIXED_S + weights / WEIGHT_LOAD_BYTES_PER_S
        setups.append(PoolSetup(
            name=p.name, min_context=p.min_context_tokens, max_model_len=p.max_model_len,
            gpu_product=p.gpu_product, tensor_parallel_size=p.tensor_parallel_size,
            gpus_per_replica=p.gpus_per_replica, planned_replicas=p.replicas,
            kv_tokens_per_replica=p.kv_tokens_per_replica, engine=engine, model=model,
            startup_s=start, plan=p))
    sums = [[0, 0, 0] for _ in setups]
    for r in trace.requests:
        i = route(setups, max(1, r.prompt) + max(1, r.output))
        if i >= 0:
            sums[i][0] += 1
            sums[i][1] += r.prompt
            sums[i][2] += r.output
    return [replace(s, mean_prompt=(sums[i][1] / sums[i][0]) if sums[i][0] else 1000.0,
                    mean_output=(sums[i][2] / sums[i][0]) if sums[i][0] else 200.0)
            for i, s in enumerate(setups)]


def demand_need(trace: Trace, setups: Sequence[PoolSetup], target_util: float,
                bin_s: float = NEED_BIN_S) -> dict[int, list[int]]:
    """Replicas each pool needs per `bin_s` bin if every request ran at unloaded speed: KV tokens
    in flight (prompt + half the output, over the request's unloaded lifetime) at `target_util` of
    a replica, requests in flight at `target_util` of max-num-seqs, and prompt tokens per second at
    70 % of one replica's prefill throughput."""
    n_bins = int(trace.duration // bin_s) + 2
    out: dict[int, list[int]] = {}
    for pi, s in enumerate(setups):
        m, e = s.model, s.engine
        batch = max(1, min(e.max_num_seqs, 32))
        tpot = m.decode_step(batch, batch * int(s.mean_prompt + s.mean_output / 2))
        chunk = e.max_num_batched_tokens
        prefill_tput = chunk / m.step_time(chunk, pairs(0, chunk), 0, 0)
        tokens = [0.0] * n_bins
        seqs = [0.0] * n_bins
        prompt = [0.0] * n_bins
        for r in trace.requests:
            if route(setups, max(1, r.prompt) + max(1, r.output)) != pi:
                continue
            life = m.prefill_time(r.prompt, chunk) + r.output * tpot
            a = int(r.arrival // bin_s)
            b = min(n_bins - 1, int((r.arrival + life) // bin_s))
            occ = r.prompt + r.output / 2
            for k in range(a, b + 1):
                tokens[k] += occ
                seqs[k] += 1
            prompt[a] += r.prompt
        cap = target_util * s.kv_tokens_per_replica
        need = []
        for k in range(n_bins):
            need.append(max(
                1,
                math.ceil(tokens[k] / cap - 1e-9),
                math.ceil(seqs[k] / (target_util * e.max_num_seqs) - 1e-9),
                math.ceil(prompt[k] / bin_s / (0.7 * prefill_tput) - 1e-9),
            ))
        out[pi] = need
    return out


def make_policy(name: str, spec: ModelDeploymentSpec, setups: Sequence[PoolSetup],
                need: dict[int, list[int]], opts: SimOptions) -> Policy:
    a = spec.autoscaling
    bounds = Bounds(opts.min_replicas if opts.min_replicas is not None else a.min_replicas,
                    opts.max_replicas if opts.max_replicas is not None else a.max_replicas)
    target = a.target_kv_utilization_percent
    if name == "kvcap":
        return Kvcap(bounds, target, float(a.scale_down_delay_seconds),
                     gpu_budget=spec.gpu.max_total)
    if name == "hpa-rps":
        rps = opts.hpa_rps_per_replica
        if rps is None:
            # What a load test would find one replica sustains, at the KV target: the smaller of
            # the KV bound (requests held / lifetime) and the compute bound (prefill + decode
            # seconds per request at that batch).
            s = setups[0]
            held = max(1.0, min(float(s.engine.max_num_seqs), target / 100
                                * s.kv_tokens_per_replica / max(1.0, s.mean_prompt
                                                                + s.mean_output / 2)))
            batch = int(held)
            step = s.model.decode_step(batch, batch * int(s.mean_prompt + s.mean_output / 2))
            chunk = s.engine.max_num_batched_tokens
            prefill_s = s.mean_prompt / (chunk / s.model.step_time(chunk, pairs(0, chunk), 0, 0))
            life = prefill_s + s.mean_output * step
            compute_rps = 1.0 / (prefill_s + s.mean_output * step / batch)
            rps = target / 100 * min(held / max(life, 1e-3), compute_rps)
        return HpaRps(bounds, rps)
    if name == "keda-queue":
        return KedaQueue(bounds, opts.keda_waiting_per_replica)
    if name == "kv-percent":
        return KvPercent(bounds, opts.kv_percent_target)
    if name == "static":
        return Static({pi: bounds.clamp(max(n)) for pi, n in need.items()})
    if name == "clairvoyant":
        return Clairvoyant(need, NEED_BIN_S, bounds)
    raise InvalidArgument(f"unknown policy '{name}'; must be one of {', '.join(POLICIES)}")


def run(spec: ModelDeploymentSpec, trace: Trace, arch: ModelArch, opts: SimOptions,
        progress: Callable[[str, float], None] | None = None,
        plan: CapacityPlan | None = None) -> tuple[dict[str, Any], list[RunResult]]:
    """Simulate every policy in `opts.policies`; returns the JSON document and the raw runs."""
    plan = plan or plan_deployment(spec, arch=arch)
    setups = pool_setups(spec, plan, arch, trace, opts.startup_s)
    need = demand_need(trace, setups, spec.autoscaling.target_kv_utilization_percent / 100)
    if opts.warm_start:
        opening = Clairvoyant(need, NEED_BIN_S, Bounds(1, 1 << 30))
        setups = [replace(s, planned_replicas=opening.initial(i, s)) for i, s in enumerate(setups)]
    results: list[RunResult] = []
    doc_policies: dict[str, Any] = {}
    for name in opts.policies:
        policy = make_policy(name, spec, setups, need, opts)
        cb = None if progress is None else (lambda f, n=name: progress(n, f))
        res = simulate(trace, setups, policy, opts.cluster, cb)
        results.append(res)
        doc_policies[name] = summarize(res, opts.slo)
    doc = {
        "trace": {"name": trace.name, "format": trace.format, "requests": len(trace.requests),
                  "duration_s": round(trace.duration, 1)},
        "seed": opts.seed,
        "slo": opts.slo.to_dict(),
        "pools": [{
            "name": s.name, "gpu": s.gpu_product, "tensor_parallel_size": s.tensor_parallel_size,
            "gpus_per_replica": s.gpus_per_replica, "initial_replicas": s.planned_replicas,
            "kv_tokens_per_replica": s.kv_tokens_per_replica,
            "max_num_seqs": s.engine.max_num_seqs,
            "max_num_batched_tokens": s.engine.max_num_batched_tokens,
            "requests_longer_than": s.min_context, "max_model_len": s.max_model_len,
            "startup_s": round(s.startup_s, 1), "mean_prompt": round(s.mean_prompt, 1),
            "mean_output": round(s.mean_output, 1),
            "unloaded_tpot_ms": round(s.model.decode_step(1, int(s.mean_prompt)) * 1e3, 2),
        } for s in setups],
        "cluster": {"scrape_interval_s": opts.cluster.scrape_interval_s,
                    "drain_s": opts.cluster.drain_s},
        "policies": doc_policies,
    }
    return doc, results


def render_table(doc: dict[str, Any]) -> str:
    slo = doc["slo"]
    lines = [
        f"trace   {doc['trace']['name']}: {doc['trace']['requests']} requests over "
        f"{doc['trace']['duration_s']:.0f} s",
        "pools   " + "; ".join(
            f"{p['name']}: {p['gpu']} TP {p['tensor_parallel_size']}, "
            f"{p['kv_tokens_per_replica']:,} KV tokens/replica, start-up {p['startup_s']:.0f} s"
            for p in doc["pools"]),
        f"SLO     TTFT <= {slo['ttft_s']} s + {slo['ttft_per_1k_prompt_s']} s per 1k prompt "
        f"tokens, TPOT <= {slo['tpot_s'] * 1e3:.0f} ms",
        "",
    ]
    header = ("POLICY", "GPU-HOURS", "SLO", "TTFT-P99", "TPOT-P99", "PREEMPT", "REJECTED",
              "UNFINISHED", "SCALE-EVENTS", "MEAN-REPLICAS")
    rows = [header]
    for name, m in doc["policies"].items():
        rows.append((name, f"{m['gpu_hours']:.2f}", f"{m['slo_attainment'] * 100:.1f}%",
                     f"{m['ttft_p99_s']:.2f}s", f"{m['tpot_p99_s'] * 1e3:.0f}ms",
                     str(m["preemptions"]), str(m["rejected"]), str(m["unfinished"]),
                     str(m["scale_events"]),
                     "/".join(f"{p['mean_replicas']:.1f}" for p in m["pools"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)
