"""Figures of the KV-headroom autoscaling loop (issue 7), with a real Prometheus and vLLM emulators.

  .venv/bin/python benchmarks/autoscale_loop.py [--objects 100] [--pools 2] [--replicas 2]

Starts /usr/bin/prometheus on loopback (scrape every --scrape seconds, file_sd targets with
`namespace` and `pod` labels) and one emulated vLLM server per pod (objects x pools x replicas),
then measures, in the operator's own code paths (`Autoscaler.snapshot` -> `live_pools` ->
`Autoscaler.scale` = `scale_pools` -> `policy.decide`):

1. queries per tick and the tick's wall and CPU time at that scale;
2. time from KV pressure (the emulators of one pool jump to 97 % KV, queue, preemptions) to the
   decision to scale that pool, ticking every --tick seconds; the patch itself is one
   server-side apply (the e2e test `test_autoscale_operator.py` prints the whole path, patch
   included, as "[kvcap-operator timing] saturated: KV pressure -> 3 replicas (patched)");
3. Prometheus down: how long a tick takes, and whether any pool's replicas change;
4. status writes per minute: every object reconciled every tick through the operator's own
   `decide.decide` -> `decide.assess` (a write is `Report.changed`, the stored status then merged as
   the apiserver's merge patch would), under a load that moves every tick but keeps the replicas.
   `--status-writes-only` runs just this part (no Prometheus); KVCAP_BENCH_OPERATOR_DIR=DIR runs it
   against another source tree (e.g. `git archive <commit> operator | tar -x -C /tmp/old`) for a
   before/after comparison.
Prints tables; nothing is asserted (figures, not tests).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("KVCAP_BENCH_OPERATOR_DIR") or str(REPO / "operator"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

import prometheus_fixture  # noqa: E402
from prometheus_fixture import PrometheusServer  # noqa: E402

from kvcap.api.models import ModelDeploymentSpec  # noqa: E402
from kvcap.autoscale.emulator import EmulatedServer, Levels, Scenario, ServerConfig  # noqa: E402
from kvcap.autoscale.policy import PodSample  # noqa: E402
from kvcap.capacity.plan_types import CapacityPlan, PoolPlan  # noqa: E402
from kvcap.controller.autoscaler import Autoscaler, AutoscaleSettings, live_pools  # noqa: E402
from kvcap.controller.conditions import Check  # noqa: E402
from kvcap.controller.decide import ActOutcome, ModelConfig, Observation, Policy, assess, decide  # noqa: E402
from kvcap.controller.render import Features  # noqa: E402
from kvcap.controller.scaling import ObjectMetrics, PoolLive  # noqa: E402

CAPACITY = 131_072
IDLE = Levels(kv_usage=0.3, running=10)
PRESSURE = Levels(kv_usage=0.97, running=60, waiting_capacity=12, preemptions_per_second=0.5)


def pool_plan(name: str, replicas: int) -> PoolPlan:
    return PoolPlan(
        name=name, gpu_product="H100-80GB", gpu_labels=(), tensor_parallel_size=1,
        pipeline_parallel_size=1, replicas=replicas, gpus_per_replica=1, max_model_len=8192,
        min_context_tokens=0, max_num_seqs=256, kv_tokens_per_replica=CAPACITY,
        kv_bytes_per_gpu=1, gpu_memory_utilization=0.9, concurrency_per_replica=64.0,
        target_concurrency=64 * replicas, headroom_percent=10.0, vllm_args=(),
    )


def k8s_objects(name: str, pools: list[str], replicas: int) -> tuple[list[Any], list[Any]]:
    children, pods = [], []
    for pool in pools:
        children.append({"kind": "Deployment", "metadata": {"labels": {"kvcap.io/pool": pool},
                         "ownerReferences": [{"uid": name, "controller": True}]},
                         "spec": {"replicas": replicas}})
        for r in range(replicas):
            pods.append({"metadata": {"name": f"{name}-{pool}-abc12-{r:05d}",
                                      "labels": {"kvcap.io/pool": pool, "kvcap.io/role": "server"}},
                         "status": {"phase": "Running",
                                    "conditions": [{"type": "Ready", "status": "True"}]}})
    return children, pods


class Fleet:
    def __init__(self, prom: PrometheusServer, objects: int, pools: list[str], replicas: int) -> None:
        self.servers: dict[tuple[str, str, str], list[EmulatedServer]] = {}
        self.objects: dict[str, tuple[list[Any], list[Any]]] = {}
        self.prom = prom
        for i in range(objects):
            name = f"md{i:03d}"
            children, pods = k8s_objects(name, pools, replicas)
            self.objects[name] = (children, pods)
            for pod in pods:
                pool = pod["metadata"]["labels"]["kvcap.io/pool"]
                server = EmulatedServer(
                    ServerConfig(kv_cache_size_tokens=CAPACITY), Scenario.constant(IDLE)
                ).start()
                self.servers.setdefault(("bench", name, pool), []).append(server)
                prom.targets[("bench", pod["metadata"]["name"])] = server.port
        prom.write_targets()

    def stop(self) -> None:
        for servers in self.servers.values():
            for s in servers:
                s.stop()


def decide_all(autoscaler: Autoscaler, snap: Any, fleet: Fleet, pools: list[str], replicas: int,
               spec: ModelDeploymentSpec) -> dict[tuple[str, str], int]:
    plan = CapacityPlan(True, "PlanFits", "ok", "m", pools=tuple(pool_plan(p, replicas) for p in pools))
    out = {}
    for name, (children, pods) in fleet.objects.items():
        metrics = ObjectMetrics(now=snap.time, error=snap.error, namespace="bench", name=name,
                                pools=live_pools(snap, "bench", name, children, pods))
        for pool, scale in autoscaler.scale(spec, plan, metrics, {}).items():
            out[(name, pool)] = scale.replicas
    return out


def merge_patch(stored: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the apiserver applies the operator's status patch."""
    out = dict(stored)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = value
    return out


def status_writes(objects: int, minutes: float, tick: float, refresh: float, seed: int = 7) -> tuple[int, int]:
    """(status writes, reconciles) of `objects` autoscaled ModelDeployments (2 pools x 2 replicas)
    reconciled every `tick` seconds for `minutes`, KV usage drawn from 0.40-0.46 each tick (no trend:
    2 replicas stay right), running 10-30 requests."""
    rng = random.Random(seed)
    pools = ["default", "long"]
    plan = CapacityPlan(True, "PlanFits", "ok", "m", pools=tuple(pool_plan(p, 2) for p in pools))
    spec = {
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
        "workload": {"maxContextTokens": 8192, "targetConcurrency": 128},
        "autoscaling": {"policy": "KVHeadroom", "minReplicas": 1, "maxReplicas": 8,
                        "targetKvUtilizationPercent": 75, "scaleDownDelaySeconds": 300},
    }
    settings = AutoscaleSettings(prometheus_url="http://127.0.0.1:9")
    if "refresh_seconds" in AutoscaleSettings.__dataclass_fields__:
        settings = AutoscaleSettings(prometheus_url="http://127.0.0.1:9", refresh_seconds=refresh)
    autoscaler = Autoscaler(settings)
    policy = Policy(plan_fn=lambda *a, **k: plan, scale=autoscaler.scale)
    has_memory = "memory" in ObjectMetrics.__dataclass_fields__
    stored: dict[str, dict[str, Any]] = {}
    replicas = {(f"md{i:04d}", p): 2 for i in range(objects) for p in pools}
    usage = {(f"md{i:04d}", p): 0.45 for i in range(objects) for p in pools}
    writes = reconciles = 0
    t0 = 1_800_000_000.0
    from datetime import UTC, datetime

    for step in range(int(minutes * 60 / tick)):
        now = t0 + step * tick
        for i in range(objects):
            name = f"md{i:04d}"
            key = ("bench", name)
            live = {}
            children = []
            for pool in pools:
                n = replicas[(name, pool)]
                usage[(name, pool)] = rng.uniform(0.40, 0.46)
                live[pool] = PoolLive(n, tuple(
                    PodSample(name=f"{name}-{pool}-{r}", ready=True, kv_usage=usage[(name, pool)],
                              running=float(rng.randint(10, 30)), waiting=0.0, sample_time=now)
                    for r in range(n)))
                children.append({"apiVersion": "apps/v1", "kind": "Deployment",
                                 "metadata": {"name": f"{name}-{pool}", "generation": 1,
                                              "labels": {"kvcap.io/pool": pool},
                                              "ownerReferences": [{"uid": name, "controller": True}]},
                                 "spec": {"replicas": n},
                                 "status": {"observedGeneration": 1, "readyReplicas": n, "updatedReplicas": n}})
            extra = {"memory": autoscaler.memory.get(key, {})} if has_memory else {}
            autoscaler.objects[key] = settings.prometheus_url
            metrics = ObjectMetrics(now=now, error=None, pools=live, namespace="bench", name=name, **extra)
            obj = {"metadata": {"name": name, "namespace": "bench", "uid": name, "generation": 1},
                   "spec": spec, "status": stored.get(name, {})}
            obs = Observation(obj, Features(), None, ModelConfig(), tuple(children), (),
                              datetime.fromtimestamp(now, UTC), metrics)
            decision = decide(obs, policy)
            report = assess(obs, decision, ActOutcome(Check("True", "Applied", "")), "resync", policy)
            reconciles += 1
            if report.changed:
                writes += 1
                stored[name] = merge_patch(stored.get(name, {}), report.status)
            for pool in decision.plan.pools if decision.plan else ():
                replicas[(name, pool.name)] = pool.replicas
    return writes, reconciles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objects", type=int, default=100)
    ap.add_argument("--pools", type=int, default=2)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--scrape", default="5s", help="Prometheus scrape interval")
    ap.add_argument("--tick", type=float, default=1.0, help="autoscaler tick for the pressure test")
    ap.add_argument("--status-writes-only", action="store_true",
                    help="only part 4 (status writes per minute; no Prometheus)")
    ap.add_argument("--writes-objects", type=int, default=1000)
    ap.add_argument("--writes-minutes", type=float, default=10.0)
    args = ap.parse_args()
    if args.status_writes_only:
        print_status_writes(args.writes_objects, args.writes_minutes)
        return
    pools = ["default", "long"][: args.pools]
    prometheus_fixture.SCRAPE_INTERVAL = args.scrape
    workdir = Path(tempfile.mkdtemp(prefix="kvcap-bench-"))
    prom = PrometheusServer(workdir).start()
    fleet = Fleet(prom, args.objects, pools, args.replicas)
    n_pods = args.objects * len(pools) * args.replicas
    spec = ModelDeploymentSpec.model_validate({
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
        "workload": {"maxContextTokens": 8192, "targetConcurrency": 128},
        "autoscaling": {"policy": "KVHeadroom", "minReplicas": 1, "maxReplicas": 8,
                        "targetKvUtilizationPercent": 75, "scaleDownDelaySeconds": 300},
    })
    autoscaler = Autoscaler(AutoscaleSettings(prometheus_url=prom.url, rate_window="30s"))
    try:
        print(f"# {args.objects} ModelDeployments x {len(pools)} pools x {args.replicas} replicas "
              f"= {n_pods} emulated vLLM servers, Prometheus scrape {args.scrape}")
        prom.wait_for("count(up == 1)", lambda r: bool(r) and int(float(r[0]["value"][1])) >= n_pods,
                      timeout=180)
        time.sleep(float(args.scrape.rstrip("s")) * 2)

        # 1. one tick at scale
        rows = []
        for _ in range(5):
            q0 = autoscaler.queries_sent
            w0, c0 = time.perf_counter(), time.process_time()
            snap = asyncio.run(autoscaler.snapshot(prom.url, max_age=0))
            w1, c1 = time.perf_counter(), time.process_time()
            decided = decide_all(autoscaler, snap, fleet, pools, args.replicas, spec)
            w2, c2 = time.perf_counter(), time.process_time()
            rows.append((autoscaler.queries_sent - q0, len(snap.pods), len(decided),
                         (w1 - w0) * 1000, (c1 - c0) * 1000, (w2 - w1) * 1000, (c2 - c1) * 1000))
        print("\n## One tick at scale (5 runs)")
        print("| queries | pods returned | pools decided | fetch wall ms | fetch CPU ms | "
              "decide wall ms | decide CPU ms |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.0f} | {r[4]:.0f} | {r[5]:.0f} | {r[6]:.0f} |")

        # 2. KV pressure -> decision, one pool at a time (the scrape phase differs per trial)
        print("\n## KV pressure -> scale-up decision")
        print("| trial | scrape | tick | seconds | ticks | decision |")
        print("|---:|---|---:|---:|---:|---|")
        for trial in range(min(5, args.objects)):
            name = f"md{trial:03d}"
            t0 = time.monotonic()
            for server in fleet.servers[("bench", name, "default")]:
                server.set_levels(PRESSURE)
            ticks = 0
            while True:
                ticks += 1
                snap = asyncio.run(autoscaler.snapshot(prom.url, max_age=0))
                decided = decide_all(autoscaler, snap, fleet, pools, args.replicas, spec)
                if (decided.get((name, "default")) or 0) > args.replicas:
                    break
                time.sleep(args.tick)
            print(f"| {trial} | {args.scrape} | {args.tick:g}s | {time.monotonic() - t0:.1f} | "
                  f"{ticks} | {decided[(name, 'default')]} replicas |")
            for server in fleet.servers[("bench", name, "default")]:
                server.set_levels(IDLE)
            time.sleep(1.3)

        # 3. Prometheus down
        prom.stop()
        w0, c0 = time.perf_counter(), time.process_time()
        snap = asyncio.run(autoscaler.snapshot(prom.url, max_age=0))
        decided = decide_all(autoscaler, snap, fleet, pools, args.replicas, spec)
        w1, c1 = time.perf_counter(), time.process_time()
        changed = sum(1 for v in decided.values() if v != args.replicas)
        print("\n## Prometheus down")
        print("| error | tick wall ms | tick CPU ms | pools whose replicas changed |")
        print("|---|---:|---:|---:|")
        print(f"| {(snap.error or '')[:40]}... | {(w1 - w0) * 1000:.0f} | {(c1 - c0) * 1000:.0f} | {changed} |")
        print_status_writes(args.writes_objects, args.writes_minutes)
    finally:
        prom.stop()
        fleet.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def print_status_writes(objects: int, minutes: float) -> None:
    print(f"\n## Status writes: {objects} ModelDeployments x 2 pools, 15 s tick, {minutes:g} min, "
          f"a load that moves every tick (source: {sys.path[1]})")
    print("| figures refreshed | reconciles | status writes | writes per minute | per object per minute |")
    print("|---|---:|---:|---:|---:|")
    refreshes = [0.0, 60.0, 300.0] if "refresh_seconds" in AutoscaleSettings.__dataclass_fields__ else [0.0]
    for refresh in refreshes:
        c0 = time.process_time()
        writes, reconciles = status_writes(objects, minutes, 15.0, refresh)
        label = "every tick" if refresh == 0 else f"at most every {refresh:g} s"
        if "refresh_seconds" not in AutoscaleSettings.__dataclass_fields__:
            label = "(this source tree has no throttle)"
        print(f"| {label} | {reconciles} | {writes} | {writes / minutes:.0f} | "
              f"{writes / minutes / objects:.2f} |  ({time.process_time() - c0:.0f} s CPU)")


if __name__ == "__main__":
    main()
