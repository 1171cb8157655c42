"""The operator at scale on a real control plane (issue 10, part 3).

Starts etcd + kube-apiserver + controller-manager + scheduler + kwok with N fake 8-GPU H100 nodes
(hack/devcluster.py), runs `python -m kvcap run` as a subprocess, creates M ModelDeployments at once
(a cold start: no children exist), and measures

* time to converge: every ModelDeployment planned, its children applied and its status written for
  its generation (ChildrenSynced=True), and, separately, every one Ready (pods running on kwok);
* reconcile latency: p50/p99 from the operator's own per-minute `kvcap stats` log lines (p50 is the
  median of the per-minute medians, p99 the worst per-minute p99);
* API requests per minute at steady state, twice: what the operator sent (its client's counter, in
  the stats lines) and what the API server counted for kvcap's resources (apiserver_request_total
  for modeldeployments, and PATCH/APPLY of deployments/services/poddisruptionbudgets, which only
  kvcap sends here);
* the operator's RSS (VmRSS from /proc), peak and at steady state.

Targets (issue 10): converge < 5 min, p99 < 1 s, RSS < 300 MiB at 1,000 ModelDeployments over
500 nodes. Usage:

    python benchmarks/operator_scale.py                       # 1,000 over 500 nodes
    python benchmarks/operator_scale.py --mds 200 --nodes 100 --steady 120
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))

import devcluster  # noqa: E402
import yaml  # noqa: E402

SPEC = {  # Llama 3.1 8B, one replica on one H100 (kwok), the planner's cheapest shape
    "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
    "workload": {"maxContextTokens": 8192, "targetConcurrency": 16},
    "gpu": {"products": ["H100-80GB"]},
}
NAMESPACES = 10
STATS = re.compile(
    r"kvcap stats: (\d+) reconciles in \d+s, p50 (\d+) ms, p99 (\d+) ms, (\d+) API requests"
)
KVCAP_CHILDREN = ("deployments", "services", "poddisruptionbudgets")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def apiserver_kvcap_requests(cluster: devcluster.Cluster) -> int:
    """apiserver_request_total for what only kvcap sends on this cluster."""
    text = devcluster._http_text(f"{cluster.server}/metrics", cluster._ssl, cluster.token)
    total = 0
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        resource, verb = labels.get("resource"), labels.get("verb")
        if resource == "modeldeployments" or (
            resource in KVCAP_CHILDREN and verb in ("PATCH", "APPLY")
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def conditions(md: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (md.get("status") or {}).get("conditions") or ()}


def census(cluster: devcluster.Cluster, namespaces: list[str]) -> tuple[int, int, int]:
    """(ModelDeployments, synced for their generation, Ready for their generation)."""
    total = synced = ready = 0
    for ns in namespaces:
        items = cluster.request(
            "GET", f"/apis/kvcap.io/v1alpha1/namespaces/{ns}/modeldeployments", timeout=120
        )["items"]
        for md in items:
            total += 1
            gen = md["metadata"]["generation"]
            conds = conditions(md)
            sync = conds.get("ChildrenSynced", {})
            if sync.get("status") == "True" and sync.get("observedGeneration") == gen:
                synced += 1
            rdy = conds.get("Ready", {})
            if rdy.get("status") == "True" and rdy.get("observedGeneration") == gen:
                ready += 1
    return total, synced, ready


class Sampler(threading.Thread):
    """RSS of the operator every second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                self.samples.append((time.monotonic(), rss_mib(self.pid)))
            except OSError:
                return


def stats_lines(log: Path) -> list[tuple[int, int, int, int]]:
    return [tuple(map(int, m.groups())) for m in STATS.finditer(log.read_text(errors="replace"))]  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mds", type=int, default=1000, help="ModelDeployments (default 1000)")
    ap.add_argument("--nodes", type=int, default=500, help="fake 8-GPU H100 nodes (default 500)")
    ap.add_argument("--steady", type=float, default=180.0, help="steady-state window, s")
    ap.add_argument("--timeout", type=float, default=900.0, help="give up converging after, s")
    ap.add_argument("--workers", type=int, default=4, help="KVCAP_WORKERS of the operator")
    ap.add_argument("--resync", type=float, default=60.0,
                    help="KVCAP_RESYNC_SECONDS (default 60: the steady window sees resyncs)")
    ap.add_argument("--workdir", default=None, help="keep the cluster's logs here")
    args = ap.parse_args(argv)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kvcap-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    cluster = devcluster.Cluster.start(
        tier="e2e",
        nodes=[devcluster.GpuNodePool.of("H100", count=args.nodes, gpus=8)],
        workdir=workdir / "cluster",
        timeout=max(180.0, args.nodes * 1.0),
    )
    print(f"control plane with {args.nodes} kwok nodes up in {time.monotonic() - t0:.0f}s",
          file=sys.stderr)
    proc: subprocess.Popen[bytes] | None = None
    try:
        for crd in yaml.safe_load_all((ROOT / "crds" / "modeldeployments.kvcap.io.yaml").read_text()):
            if crd:
                name = crd["metadata"]["name"]
                cluster.request(
                    "PATCH",
                    f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
                    "?fieldManager=bench&force=true",
                    crd,
                    content_type="application/apply-patch+yaml",
                )
        time.sleep(2)
        namespaces = [f"kvbench-{i}" for i in range(NAMESPACES)]
        for ns in namespaces:
            cluster.ensure_namespace(ns)

        log = workdir / "operator.log"
        env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "PYTHONPATH": str(ROOT / "operator"),
            "KVCAP_EXTRA_TOLERATIONS": json.dumps([devcluster.KWOK_TOLERATION]),
            "KVCAP_HF_ENDPOINT": "http://127.0.0.1:9",
            "KVCAP_WORKERS": str(args.workers),
            "KVCAP_RESYNC_SECONDS": str(args.resync),
        }
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kvcap", "run", "--namespace", "kvbench-*"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        sampler = Sampler(proc.pid)
        sampler.start()
        time.sleep(5)  # the operator is up and watching (a cold start: nothing to resume)

        started = time.monotonic()

        def create(i: int) -> None:
            ns = namespaces[i % NAMESPACES]
            body = {"apiVersion": "kvcap.io/v1alpha1", "kind": "ModelDeployment",
                    "metadata": {"name": f"md-{i:04d}"}, "spec": SPEC}
            cluster.request("POST", f"/apis/kvcap.io/v1alpha1/namespaces/{ns}/modeldeployments",
                            body, timeout=120)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(args.mds)))
        created = time.monotonic() - started
        synced_at = ready_at = None
        last = (0, 0, 0)
        while time.monotonic() - started < args.timeout:
            last = census(cluster, namespaces)
            now = time.monotonic() - started
            if synced_at is None and last[1] >= args.mds:
                synced_at = now
            if last[2] >= args.mds:
                ready_at = now
                break
            print(f"  t={now:5.0f}s  synced {last[1]}/{args.mds}  ready {last[2]}/{args.mds}  "
                  f"operator RSS {rss_mib(proc.pid):.0f} MiB", file=sys.stderr)
            time.sleep(5)
        converge_lines = len(stats_lines(log))

        # steady state: nothing changes; what does the operator cost per minute?
        time.sleep(60)  # let the last stats window of the cold start pass
        api_before, t_before = apiserver_kvcap_requests(cluster), time.monotonic()
        lines_before = len(stats_lines(log))
        time.sleep(args.steady)
        api_after, t_after = apiserver_kvcap_requests(cluster), time.monotonic()
        steady = stats_lines(log)[lines_before:]
        cold = stats_lines(log)[:converge_lines + 1]
        steady_rss = [r for t, r in sampler.samples if t >= t_before]
        sampler.stop.set()

        minutes = (t_after - t_before) / 60
        def fmt(x: float | None, unit: str = "s") -> str:
            return "not reached" if x is None else f"{x:.0f} {unit}"
        cold_p50 = statistics.median([p50 for n, p50, _, _ in cold if n]) if cold else None
        cold_p99 = max((p99 for n, _, p99, _ in cold if n), default=None)
        steady_p99 = max((p99 for n, _, p99, _ in steady if n), default=None)
        op_requests = sum(r for _, _, _, r in steady)
        rows = [
            ("ModelDeployments / fake GPU nodes", f"{args.mds} / {args.nodes}", ""),
            ("operator workers / resync", f"{args.workers} / {args.resync:.0f} s", ""),
            ("created (API calls of this script)", fmt(created), ""),
            ("converge: all planned + children synced", fmt(synced_at), "< 300 s"),
            ("converge: all Ready (pods Running on kwok)", fmt(ready_at), ""),
            ("reconcile p50 during the cold start", fmt(cold_p50, "ms"), ""),
            ("reconcile p99 during the cold start (worst minute)", fmt(cold_p99, "ms"), "< 1000 ms"),
            ("reconcile p99 at steady state (worst minute)", fmt(steady_p99, "ms"), "< 1000 ms"),
            ("operator API requests / min, steady", f"{op_requests / minutes:.0f}", ""),
            ("apiserver kvcap requests / min, steady", f"{(api_after - api_before) / minutes:.0f}", ""),
            ("operator RSS peak", f"{max(r for _, r in sampler.samples):.0f} MiB", "< 300 MiB"),
            ("operator RSS steady", f"{max(steady_rss or [0]):.0f} MiB", "< 300 MiB"),
        ]
        width = max(len(r[0]) for r in rows)
        print(f"\n{'measure':<{width}}  {'value':>14}  target")
        for name, value, target in rows:
            print(f"{name:<{width}}  {value:>14}  {target}")
        print(f"\nfinal census: {last[0]} ModelDeployments, {last[1]} synced, {last[2]} Ready; "
              f"operator log {log}")
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
