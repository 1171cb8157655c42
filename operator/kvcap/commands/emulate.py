"""`kvcap emulate-vllm`: vLLM `/metrics` emulators for clusters without GPUs (tests, sandbox).

  kvcap emulate-vllm serve  --count 2 --namespace demo --pod-prefix llama --targets-file t.json
      N emulated servers on loopback ports, optionally driven by a --scenario file; writes a
      Prometheus file_sd target file with `namespace` and `pod` labels.
  kvcap emulate-vllm follow --targets-file t.json --levels-file levels.json
      one emulated server per kvcap serving pod in the cluster (kubeconfig from the environment),
      started and stopped as pods come and go; each reports the KV capacity its ModelDeployment
      planned (x --capacity-factor) and the levels set for its pool in --levels-file.
  kvcap emulate-vllm set --levels-file levels.json --pool NS/NAME/POOL --kv-usage 0.95 ...
      change a pool's levels (what `make sandbox` prints to push a pool into pressure).
  kvcap emulate-vllm serve -f model.yaml --trace TRACE --start 600 --duration 300 --count 2
      a trace slice instead of scripted levels: the slice is replayed through the simulator's
      vLLM replica model (`kvcap.sim.engine`, the planned pool's KV blocks, batch limits and
      step times) and each server reports its replica's KV usage, queue, preemptions, tokens and
      prefix hits second by second (`trace_scenarios`).

The emulator itself is `kvcap.autoscale.emulator` (standard library only).
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from kvcap.api import constants as kc
from kvcap.autoscale.emulator import (
    CACHE_INFOS,
    NAMINGS,
    EmulatedServer,
    Levels,
    Scenario,
    ServerConfig,
    serve_forever,
)

PoolKey = tuple[str, str, str]  # (namespace, ModelDeployment label, pool)


def write_targets(path: Path, targets: Mapping[tuple[str, str], int]) -> None:
    """Prometheus file_sd: one group per pod, labelled with its namespace and pod name."""
    groups = [
        {"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": ns, "pod": pod}}
        for (ns, pod), port in sorted(targets.items())
    ]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(groups, indent=1))
    tmp.replace(path)  # atomic: Prometheus never reads half a file


def read_levels(path: Path | None) -> dict[str, Levels]:
    """'ns/name/pool' -> Levels from a JSON levels file (missing file: none)."""
    if path is None or not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text() or "{}")
    except json.JSONDecodeError:
        return {}  # being rewritten; the next read gets it
    return {key: Levels.from_dict(value) for key, value in raw.items()}


def pool_of(pod: Mapping[str, Any]) -> PoolKey | None:
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    md, pool = labels.get(kc.LABEL_MODEL_DEPLOYMENT), labels.get(kc.LABEL_POOL)
    if not md or not pool or labels.get(kc.LABEL_ROLE) != kc.ROLE_SERVER:
        return None
    return (meta.get("namespace", ""), md, pool)


@dataclass
class PodFollower:
    """One emulated server per live kvcap serving pod; `sync()` reconciles the fleet once.

    `list_pods` returns the pods (dicts), `config_for(pod)` the server config of a new pod,
    `levels_for(pool key)` the levels of a pool (None: leave the server as it is), and
    `on_add`/`on_remove` register and unregister the (namespace, pod) target with Prometheus."""

    list_pods: Callable[[], Iterable[Mapping[str, Any]]]
    on_add: Callable[[str, str, int], None]
    on_remove: Callable[[str, str], None]
    config_for: Callable[[Mapping[str, Any]], ServerConfig] = lambda _pod: ServerConfig()
    levels_for: Callable[[PoolKey], Levels | None] = lambda _key: None
    servers: dict[tuple[str, str], tuple[PoolKey, EmulatedServer]] = field(default_factory=dict)

    def sync(self) -> None:
        live: dict[tuple[str, str], tuple[PoolKey, Mapping[str, Any]]] = {}
        for pod in self.list_pods():
            key = pool_of(pod)
            meta = pod.get("metadata") or {}
            if key is None or meta.get("deletionTimestamp"):
                continue
            live[(key[0], meta["name"])] = (key, pod)
        for name in [n for n in self.servers if n not in live]:
            _, server = self.servers.pop(name)
            self.on_remove(*name)
            server.stop()
        for name, (key, pod) in live.items():
            if name not in self.servers:
                server = EmulatedServer(self.config_for(pod)).start()
                self.servers[name] = (key, server)
                self.on_add(name[0], name[1], server.port)
        for key, server in self.servers.values():
            levels = self.levels_for(key)
            if levels is not None and server.levels() != levels:
                server.set_levels(levels)

    def stop(self) -> None:
        for name, (_, server) in list(self.servers.items()):
            self.on_remove(*name)
            server.stop()
        self.servers.clear()

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        while not stop.is_set():
            try:
                self.sync()
            except Exception as err:  # the API server restarting must not end the follower
                print(f"kvcap emulate-vllm: {err}", flush=True)
            stop.wait(interval)


def trace_scenarios(
    doc: Mapping[str, Any],
    trace_path: str,
    *,
    start: float = 0.0,
    duration: float = 300.0,
    replicas: int = 1,
    pool: str = "default",
    step: float = 1.0,
) -> tuple[list[Scenario], int]:
    """Per-replica scenarios (and the KV tokens per replica) from a slice of a request trace.

    The slice [start, start + duration) of the trace is routed to `pool` of the manifest's plan
    and spread over `replicas` simulated vLLM replicas (least loaded first, as the simulator's
    router); every `step` seconds each replica's gauges and counter rates become one step."""
    from kvcap.api.models import parse_manifest
    from kvcap.capacity.configs import load_model
    from kvcap.capacity.planner import plan_deployment
    from kvcap.sim.cluster import route
    from kvcap.sim.engine import Replica, Req
    from kvcap.sim.run import pool_setups
    from kvcap.sim.trace import read_trace

    spec = parse_manifest(dict(doc)).spec
    plan = plan_deployment(spec)
    trace = read_trace(trace_path)
    window = [r for r in trace.requests if start <= r.arrival < start + duration]
    trace = replace(trace, requests=tuple(window), span=None)
    setups = pool_setups(spec, plan, load_model(spec.model.name), trace, 0.0)
    index = next((i for i, p in enumerate(setups) if p.name == pool), -1)
    if index < 0:
        raise ValueError(f"the plan has no pool '{pool}' (pools: {[p.name for p in setups]})")
    setup = setups[index]
    reps = [
        Replica(cfg=setup.engine, model=setup.model, created=0.0, ready_at=0.0)
        for _ in range(max(1, replicas))
    ]
    arrivals = [
        Req(
            id=i,
            arrival=r.arrival - start,
            prompt=max(1, r.prompt),
            output=max(1, r.output),
            hashes=r.hashes,
        )
        for i, r in enumerate(window)
        if route(setups, max(1, r.prompt) + max(1, r.output)) == index
    ]
    steps: list[list[tuple[float, Levels]]] = [[] for _ in reps]
    last = [(0, 0, 0, 0, 0, 0) for _ in reps]
    done: list[Req] = []
    nxt = 0
    t = 0.0
    while t <= duration:
        while nxt < len(arrivals) and arrivals[nxt].arrival <= t:
            target = min(reps, key=lambda r: (len(r.running) + len(r.waiting), r.used_blocks))
            target.add(arrivals[nxt])
            nxt += 1
        for i, rep in enumerate(reps):
            rep.advance(t, done)
            c = rep.counters
            now = (
                c.preemptions,
                c.prompt_tokens,
                c.generation_tokens,
                c.prefix_queries,
                c.prefix_hits,
                c.finished,
            )
            d = [b - a for a, b in zip(last[i], now, strict=True)]
            last[i] = now
            waiting = len(rep.waiting)
            steps[i].append(
                (
                    t,
                    Levels(
                        kv_usage=min(1.0, rep.kv_usage),
                        running=float(len(rep.running)),
                        waiting_capacity=float(min(waiting, rep.capacity_waiting)),
                        waiting_deferred=float(max(0, waiting - rep.capacity_waiting)),
                        preemptions_per_second=d[0] / step,
                        prompt_tokens_per_second=d[1] / step,
                        generation_tokens_per_second=d[2] / step,
                        prefix_hit_rate=(d[4] / d[3]) if d[3] else 0.0,
                        requests_per_second=d[5] / step,
                    ),
                )
            )
        t += step
    tokens = setup.engine.total_blocks * setup.engine.block_size
    return [Scenario(steps=tuple(st)) for st in steps], tokens


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--naming",
        choices=NAMINGS,
        default="current",
        help="metric names of vLLM >= 0.10 ('current'), <= 0.8 ('legacy') or 0.9",
    )
    p.add_argument(
        "--escaped",
        action="store_true",
        help="write 'vllm_' for 'vllm:' (prometheus-client >= 0.23 under Prometheus 2.x)",
    )
    p.add_argument(
        "--cache-info",
        choices=CACHE_INFOS,
        default="tokens",
        help="vllm:cache_config_info labels: with kv_cache_size_tokens, blocks only, none",
    )
    p.add_argument("--model-name", default="meta-llama/Llama-3.1-8B-Instruct")
    p.add_argument("--num-gpu-blocks", type=int, default=8192)
    p.add_argument("--block-size", type=int, default=16)


def _server_config(ns: argparse.Namespace, **override: Any) -> ServerConfig:
    base = ServerConfig(
        model_name=ns.model_name,
        naming=ns.naming,
        escaped=ns.escaped,
        cache_info=ns.cache_info,
        num_gpu_blocks=ns.num_gpu_blocks,
        block_size=ns.block_size,
    )
    return replace(base, **override)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="emulate_command", required=True, metavar="SUBCOMMAND")
    serve = sub.add_parser("serve", help="N emulated vLLM servers on loopback ports")
    serve.add_argument("--count", type=int, default=1)
    serve.add_argument("--port", type=int, default=0, help="first port (0: any free ports)")
    serve.add_argument("--scenario", help="YAML/JSON {loop: bool, steps: [{at: s, kvUsage: ...}]}")
    serve.add_argument("--trace", help="replay a slice of this request trace (needs -f)")
    serve.add_argument("-f", "--filename", help="the ModelDeployment whose planned pool replays it")
    serve.add_argument("--pool", default="default", help="which planned pool (with --trace)")
    serve.add_argument("--start", type=float, default=0.0, help="slice start, seconds")
    serve.add_argument("--duration", type=float, default=300.0, help="slice length, seconds")
    serve.add_argument("--namespace", default="default", help="namespace label of the targets")
    serve.add_argument("--pod-prefix", default="vllm", help="pod labels: <prefix>-0, -1, ...")
    serve.add_argument("--targets-file", help="write a Prometheus file_sd target file here")
    _config_args(serve)
    follow = sub.add_parser("follow", help="one emulated server per kvcap serving pod")
    follow.add_argument(
        "--namespace",
        "-n",
        action="append",
        dest="namespaces",
        help="only pods in this namespace (repeatable); default: all",
    )
    follow.add_argument("--targets-file", required=True, help="Prometheus file_sd file to write")
    follow.add_argument("--levels-file", help="JSON {'ns/name/pool': {kvUsage: ...}}, re-read")
    follow.add_argument(
        "--capacity-factor",
        type=float,
        default=1.0,
        help="report this share of the planned KV tokens (e.g. 0.5: a mismatch)",
    )
    follow.add_argument("--interval", type=float, default=1.0)
    _config_args(follow)
    setp = sub.add_parser("set", help="set a pool's levels in a --levels-file")
    setp.add_argument("--levels-file", required=True)
    setp.add_argument("--pool", required=True, help="NAMESPACE/MODELDEPLOYMENT/POOL")
    for f in fields(Levels):
        setp.add_argument("--" + f.name.replace("_", "-"), type=float, dest=f.name)


def _planned_tokens(obj: Mapping[str, Any], pool: str) -> int | None:
    for entry in ((obj.get("status") or {}).get("plan") or {}).get("pools") or ():
        if entry.get("name") == pool and entry.get("kvTokensPerReplica"):
            return int(entry["kvTokensPerReplica"])
    return None


def run(ns: argparse.Namespace) -> int:
    if ns.emulate_command == "set":
        path = Path(ns.levels_file)
        current = json.loads(path.read_text()) if path.exists() else {}
        update = {
            f.name: getattr(ns, f.name) for f in fields(Levels) if getattr(ns, f.name) is not None
        }
        merged = Levels.from_dict(update, base=Levels.from_dict(current.get(ns.pool, {})))
        current[ns.pool] = merged.to_dict()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(current, indent=1))
        tmp.replace(path)
        print(f"{ns.pool}: {json.dumps(merged.to_dict())}")
        return 0
    if ns.emulate_command == "serve":
        scenarios: list[Scenario | None] = [None] * ns.count
        config = _server_config(ns)
        if ns.trace:
            if not ns.filename:
                raise SystemExit("kvcap emulate-vllm serve: --trace needs -f MODELDEPLOYMENT.yaml")
            doc = yaml.safe_load(Path(ns.filename).read_text())
            replayed, tokens = trace_scenarios(
                doc,
                ns.trace,
                start=ns.start,
                duration=ns.duration,
                replicas=ns.count,
                pool=ns.pool,
            )
            scenarios = list(replayed)
            config = _server_config(
                ns, kv_cache_size_tokens=tokens, num_gpu_blocks=max(1, tokens // ns.block_size)
            )
        elif ns.scenario:
            one = Scenario.from_dict(yaml.safe_load(Path(ns.scenario).read_text()) or {})
            scenarios = [one] * ns.count
        servers = [
            EmulatedServer(config, scenarios[i], port=(ns.port + i if ns.port else 0))
            for i in range(ns.count)
        ]
        targets = {(ns.namespace, f"{ns.pod_prefix}-{i}"): s.port for i, s in enumerate(servers)}
        if ns.targets_file:
            write_targets(Path(ns.targets_file), targets)
        for (namespace, pod), port in targets.items():
            print(f"{namespace}/{pod}: http://127.0.0.1:{port}/metrics", flush=True)
        serve_forever(servers)
        return 0
    return _follow(ns)


def _follow(ns: argparse.Namespace) -> int:
    from kubernetes import client, config

    try:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    except Exception:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    core = client.CoreV1Api()
    custom = client.CustomObjectsApi()
    selector = f"{kc.LABEL_MANAGED_BY}={kc.MANAGED_BY},{kc.LABEL_ROLE}={kc.ROLE_SERVER}"
    targets: dict[tuple[str, str], int] = {}
    targets_file = Path(ns.targets_file)
    levels_file = Path(ns.levels_file) if ns.levels_file else None
    write_targets(targets_file, targets)

    def list_pods() -> list[dict[str, Any]]:
        items: list[Any] = []
        if ns.namespaces:
            for namespace in ns.namespaces:
                items += core.list_namespaced_pod(namespace, label_selector=selector).items
        else:
            items = core.list_pod_for_all_namespaces(label_selector=selector).items
        api = client.ApiClient()
        return [api.sanitize_for_serialization(p) for p in items]  # type: ignore[no-untyped-call]

    def config_for(pod: Mapping[str, Any]) -> ServerConfig:
        key = pool_of(pod)
        tokens = None
        if key is not None:
            try:
                obj = custom.get_namespaced_custom_object(
                    "kvcap.io", "v1alpha1", key[0], "modeldeployments", key[1]
                )
                tokens = _planned_tokens(obj, key[2]) if isinstance(obj, dict) else None
            except Exception:
                tokens = None
        override: dict[str, Any] = {}
        if tokens is not None:
            override["kv_cache_size_tokens"] = int(tokens * ns.capacity_factor)
            override["num_gpu_blocks"] = max(1, override["kv_cache_size_tokens"] // ns.block_size)
        return _server_config(ns, **override)

    def add(namespace: str, pod: str, port: int) -> None:
        targets[(namespace, pod)] = port
        write_targets(targets_file, targets)
        print(f"+ {namespace}/{pod}: http://127.0.0.1:{port}/metrics", flush=True)

    def remove(namespace: str, pod: str) -> None:
        targets.pop((namespace, pod), None)
        write_targets(targets_file, targets)
        print(f"- {namespace}/{pod}", flush=True)

    def levels_for(key: PoolKey) -> Levels | None:
        return read_levels(levels_file).get("/".join(key))

    follower = PodFollower(list_pods, add, remove, config_for, levels_for)
    stop = threading.Event()
    print(f"Following kvcap pods; targets in {targets_file}", flush=True)
    try:
        follower.run(stop, ns.interval)
    except KeyboardInterrupt:
        pass
    finally:
        follower.stop()
    return 0


__all__ = ["PodFollower", "add_arguments", "read_levels", "run", "trace_scenarios", "write_targets"]
