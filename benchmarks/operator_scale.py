"""The operator at scale on a real control plane (issue 10, part 3).

Starts etcd + kube-apiserver + controller-manager + scheduler + kwok with N fake 8-GPU H100 nodes
(hack/devcluster.py), runs `python -m kvcap run` as a subprocess, creates M ModelDeployments at once
(a cold start: no children exist), and measures

* time to converge: every ModelDeployment planned, its children applied and its status written for
  its generation (ChildrenSynced=True), and, separately, every one Ready (pods running on kwok);
* reconcile latency, from the operator's own per-minute `kvcap stats` log lines. A reconcile's
  latency runs from the moment a worker takes its key off the queue to the moment the worker is
  done with it (waiting for the object's lock, every read, the planner, every write, the events,
  a re-run after a status conflict); the time the key waited in the queue before is reported
  apart (at a cold start it grows with the number of objects: it is the backlog, not the work).
  Reconciles that return at once (object gone, nothing to check) are not counted. Reported: the
  p99 over every reconcile of the cold start (pooled from the lines' histograms: the exact share
  within 1 s, and the histogram bucket holding the p99), the worst per-minute p99, p50 (median of
  the per-minute medians), and the same for the reconciles that wrote something;
* where the slow reconciles spent their time: the operator logs the slowest one of each minute
  with its phases and every API request (`kvcap slowest reconcile`), and the API server's own
  mean request duration for kvcap's resources (apiserver_request_duration_seconds) says how much
  of it the server took;
* API requests per minute at steady state, twice: what the operator sent (its client's counter, in
  the stats lines) and what the API server counted for kvcap's resources (apiserver_request_total
  for modeldeployments, and PATCH/APPLY of deployments/services/poddisruptionbudgets, which only
  kvcap sends here);
* the operator's RSS (VmRSS from /proc), peak and at steady state, and the CPU each process of
  the control plane and the operator used during the cold start (what saturates the machine).

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
    r".*?; writing (\d+) p50 (\d+) ms p99 (\d+) ms; queue wait p50 (\d+) ms p99 (\d+) ms; "
    r"pool waits (\d+), peak in flight (\d+); re-reads \d+; loop lag p99 (\d+) ms max (\d+) ms; "
    r"full gc (\d+) max (\d+) ms; histogram ([\d ]+)"
)
SLOWEST = re.compile(r"kvcap slowest reconcile: (.*)")
# the upper bounds (s) of the histogram's buckets (kvcap.controller.runtime.LATENCY_BUCKETS)
sys.path.insert(0, str(ROOT / "operator"))
from kvcap.controller.runtime import LATENCY_BUCKETS  # noqa: E402

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


class Stats:
    """One `kvcap stats` line."""

    def __init__(self, m: re.Match[str]) -> None:
        g = m.groups()
        self.n, self.p50, self.p99, self.requests = map(int, g[:4])
        self.writing, self.writing_p50, self.writing_p99 = map(int, g[4:7])
        self.wait_p50, self.wait_p99, self.pool_waits, self.peak_in_flight = map(int, g[7:11])
        self.lag_p99, self.lag_max, self.gcs, self.gc_max = map(int, g[11:15])
        self.histogram = [int(x) for x in g[15].split()]


def stats_lines(log: Path) -> list[Stats]:
    return [Stats(m) for m in STATS.finditer(log.read_text(errors="replace"))]


def pooled(lines: list[Stats]) -> tuple[int, float, str]:
    """(reconciles, share within 1 s, the bucket holding the p99) over `lines`."""
    counts = [sum(col) for col in zip(*(line.histogram for line in lines), strict=True)]
    total = sum(counts)
    if not total:
        return 0, 0.0, "-"
    within = sum(c for c, bound in zip(counts, LATENCY_BUCKETS, strict=False) if bound <= 1.0)
    seen, rank = 0, 0.99 * total
    bounds = [f"{b * 1000:.0f} ms" for b in LATENCY_BUCKETS]
    for i, c in enumerate(counts):
        seen += c
        if seen >= rank:
            low = "0" if i == 0 else bounds[i - 1]
            return total, within / total, (f"{low}-{bounds[i]}" if i < len(bounds)
                                           else f"> {bounds[-1]}")
    return total, within / total, "-"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, s."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Durations = dict[tuple[str, str], dict[str, float]]


def durations(cluster: devcluster.Cluster) -> Durations:
    """apiserver_request_duration_seconds by (verb, resource[/subresource]): its sum, count and
    cumulative bucket counts ("le=0.5": n)."""
    text = devcluster._http_text(f"{cluster.server}/metrics", cluster._ssl, cluster.token)
    out: Durations = {}
    for line in text.splitlines():
        for suffix in ("_sum{", "_count{", "_bucket{"):
            if line.startswith("apiserver_request_duration_seconds" + suffix):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
                res = labels.get("resource", "")
                if labels.get("subresource"):
                    res += "/" + labels["subresource"]
                field = suffix[1:-1] if suffix != "_bucket{" else f"le={labels.get('le')}"
                row = out.setdefault((labels.get("verb", ""), res), {})
                row[field] = row.get(field, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def server_p99(after: dict[str, float], before: dict[str, float]) -> str:
    """The bucket bound holding the API server's p99 between two scrapes ("<= 1.0 s")."""
    count = after.get("count", 0.0) - before.get("count", 0.0)
    bounds = sorted((float(k[3:]), k) for k in after if k.startswith("le=") and k != "le=+Inf")
    for bound, key in bounds:
        if after[key] - before.get(key, 0.0) >= 0.99 * count:
            return f"<= {bound:g} s"
    return f"> {bounds[-1][0]:g} s" if bounds else "-"


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
    ap.add_argument("--verbose", action="store_true", help="the operator logs at DEBUG")
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
                [sys.executable, "-m", "kvcap", "run", "--namespace", "kvbench-*",
                 *(["--verbose"] if args.verbose else [])],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        sampler = Sampler(proc.pid)
        sampler.start()
        time.sleep(5)  # the operator is up and watching (a cold start: nothing to resume)

        loadavg = Path("/proc/loadavg").read_text().split()[:3]
        processes = {p.name: p.pid for p in cluster.procs if p.pid}
        processes["operator"] = proc.pid
        cpu_before = {n: cpu_seconds(pid) for n, pid in processes.items()}
        machine_before = sum(map(float, Path("/proc/stat").read_text().split("\n")[0].split()[1:8]))
        durations_before = durations(cluster)
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
        cold_wall = time.monotonic() - started
        cpu_cold = {n: cpu_seconds(pid) - cpu_before[n] for n, pid in processes.items()}
        machine_cold = (sum(map(float, Path("/proc/stat").read_text().split("\n")[0].split()[1:8]))
                        - machine_before) / os.sysconf("SC_CLK_TCK")
        durations_cold = durations(cluster)

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
        cold_p50 = statistics.median([s.p50 for s in cold if s.n]) if cold else None
        cold_p99 = max((s.p99 for s in cold if s.n), default=None)
        cold_wp99 = max((s.writing_p99 for s in cold if s.writing), default=None)
        cold_wait = max((s.wait_p99 for s in cold if s.n), default=None)
        n_cold, within, bucket = pooled(cold)
        steady_p99 = max((s.p99 for s in steady if s.n), default=None)
        op_requests = sum(s.requests for s in steady)
        rows = [
            ("ModelDeployments / fake GPU nodes", f"{args.mds} / {args.nodes}", ""),
            ("operator workers / resync", f"{args.workers} / {args.resync:.0f} s", ""),
            ("created (API calls of this script)", fmt(created), ""),
            ("converge: all planned + children synced", fmt(synced_at), "< 300 s"),
            ("converge: all Ready (pods Running on kwok)", fmt(ready_at), ""),
            ("cold start: reconciles (dequeue to done)", f"{n_cold}", ""),
            ("cold start: share of reconciles within 1 s", f"{within * 100:.1f} %", ">= 99 %"),
            ("cold start: reconcile p99, all reconciles pooled", bucket, "< 1000 ms"),
            ("reconcile p50 during the cold start", fmt(cold_p50, "ms"), ""),
            ("reconcile p99 during the cold start (worst minute)", fmt(cold_p99, "ms"), "< 1000 ms"),
            ("  of reconciles that wrote (worst minute)", fmt(cold_wp99, "ms"), ""),
            ("queue wait p99 during the cold start (worst minute)", fmt(cold_wait, "ms"),
             "(apart)"),
            ("operator event loop lag p99 / max, cold (worst minute)",
             f"{max((s.lag_p99 for s in cold), default=0)} / "
             f"{max((s.lag_max for s in cold), default=0)} ms", ""),
            ("operator full GCs / longest pause, cold",
             f"{sum(s.gcs for s in cold)} / {max((s.gc_max for s in cold), default=0)} ms", ""),
            ("client pool waits / peak requests in flight, cold",
             f"{sum(s.pool_waits for s in cold)} / {max((s.peak_in_flight for s in cold), default=0)}",
             ""),
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
        print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(loadavg)} before the "
              f"cold start; during it ({cold_wall:.0f} s) the machine was busy "
              f"{machine_cold / cold_wall / (os.cpu_count() or 1) * 100:.0f} % of its CPU time")
        print("CPU during the cold start (s, and cores on average): " + ", ".join(
            f"{n} {c:.0f} ({c / cold_wall:.2f})"
            for n, c in sorted(cpu_cold.items(), key=lambda x: -x[1])))
        print("API server's own request durations for kvcap's requests during the cold start "
              "(apiserver_request_duration_seconds; p99 as the bucket bound holding it):")
        for key in sorted(durations_cold):
            verb, res = key
            if res.split("/")[0] not in ("modeldeployments", "events", *KVCAP_CHILDREN):
                continue
            after, before = durations_cold[key], durations_before.get(key, {})
            count = after.get("count", 0.0) - before.get("count", 0.0)
            if count >= 1:
                mean = (after.get("sum", 0.0) - before.get("sum", 0.0)) / count * 1000
                print(f"  {verb:>6} {res:<26} {count:>7.0f} requests, mean {mean:6.1f} ms, "
                      f"p99 {server_p99(after, before)}")
        slow = sorted(SLOWEST.findall(log.read_text(errors="replace")),
                      key=lambda line: -int(line.split(" ", 1)[0]))[:3]
        if slow:
            print("slowest reconciles (operator's own breakdown):")
            for line in slow:
                print(f"  {line}")
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
