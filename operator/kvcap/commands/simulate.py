"""The `kvcap simulate` command: arguments, progress bar, output (cli.py only registers it)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from kvcap.api.errors import InvalidArgument
from kvcap.api.models import ModelDeploymentSpec
from kvcap.capacity.arch import ModelArch
from kvcap.commands.argtypes import number, positive_int
from kvcap.sim.model import ClusterConfig, Slo
from kvcap.sim.run import POLICIES, SimOptions, render_table, run
from kvcap.sim.trace import cut, read_trace, scale


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", required=True, help="ModelDeployment YAML ('-' for stdin)")
    p.add_argument("--trace", required=True,
                   help="Mooncake JSONL, Azure LLM CSV, or a length CSV (Poisson arrivals)")
    p.add_argument("--policy", action="append", choices=POLICIES, dest="policies",
                   help="policy to simulate (repeatable; default: all)")
    p.add_argument("--rate-multiplier", type=number(0, strict=True), default=1.0,
                   help="scale the load (superposed, time-rotated copies of the trace)")
    p.add_argument("--duration", type=number(0, strict=True),
                   help="simulate only the first N seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--poisson-rate", type=number(0, strict=True), default=2.0,
                   help="requests/s for a length-only trace")
    p.add_argument("--slo-ttft", type=number(0, strict=True), default=None,
                   help="TTFT SLO base in seconds (default: the spec's latency objective, else 1)")
    p.add_argument("--slo-ttft-per-1k", type=number(0, strict=False), default=0.05,
                   help="seconds added to the TTFT SLO per 1k prompt tokens")
    p.add_argument("--slo-tpot", type=number(0, strict=True), default=None,
                   help="TPOT SLO in seconds (default: the spec's latency objective, else 0.1)")
    p.add_argument("--startup-seconds", type=number(0, strict=False),
                   help="pod start-up time (default: 60 s + weights at 1 GB/s)")
    p.add_argument("--scrape-interval", type=number(0, strict=True), default=15.0,
                   help="Prometheus scrape interval in seconds")
    p.add_argument("--max-replicas", type=positive_int, help="override autoscaling.maxReplicas")
    p.add_argument("--output", "-o", choices=("table", "json"), default="table")
    p.add_argument("--plot", metavar="DIR", help="write PNG plots (needs pip install 'kvcap[sim]')")


def _objectives(spec: ModelDeploymentSpec) -> tuple[float | None, float | None]:
    obj = getattr(spec.workload, "latency_objectives", None)
    if obj is None:
        return None, None
    ttft = getattr(obj, "ttft_milliseconds", None)
    tpot = getattr(obj, "tpot_milliseconds", None)
    return (ttft / 1000 if ttft else None), (tpot / 1000 if tpot else None)


class Bar:
    """A one-line progress bar on stderr, shown once a run takes more than a second."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.last = ""

    def __call__(self, policy: str, fraction: float) -> None:
        if time.monotonic() - self.start < 1.0 or not sys.stderr.isatty():
            return
        filled = int(fraction * 30)
        line = f"\r{policy:<12} [{'#' * filled}{'.' * (30 - filled)}] {fraction * 100:5.1f}%"
        if line != self.last:
            sys.stderr.write(line)
            sys.stderr.flush()
            self.last = line

    def done(self) -> None:
        if self.last:
            sys.stderr.write("\r" + " " * len(self.last) + "\r")
            sys.stderr.flush()


def execute(ns: argparse.Namespace, spec: ModelDeploymentSpec, arch: ModelArch) -> int:
    if ns.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InvalidArgument("--plot needs matplotlib: pip install 'kvcap[sim]'") from None
    trace = read_trace(ns.trace, poisson_rate=ns.poisson_rate, seed=ns.seed)
    trace = scale(cut(trace, ns.duration), ns.rate_multiplier, ns.seed)
    if not trace.requests:
        raise InvalidArgument(f"'{ns.trace}' holds no requests in the chosen duration")
    spec_ttft, spec_tpot = _objectives(spec)
    slo = Slo(ttft_s=ns.slo_ttft if ns.slo_ttft is not None else (spec_ttft or 1.0),
              ttft_per_1k_prompt_s=ns.slo_ttft_per_1k,
              tpot_s=ns.slo_tpot if ns.slo_tpot is not None else (spec_tpot or 0.1))
    opts = SimOptions(policies=tuple(dict.fromkeys(ns.policies or POLICIES)), seed=ns.seed,
                      slo=slo, cluster=ClusterConfig(scrape_interval_s=ns.scrape_interval),
                      startup_s=ns.startup_seconds, max_replicas=ns.max_replicas)
    bar = Bar()
    started = time.monotonic()
    doc, results = run(spec, trace, arch, opts, progress=bar)
    bar.done()
    doc["wall_seconds"] = round(time.monotonic() - started, 2)
    if ns.plot:
        from kvcap.commands.plots import write_plots
        doc["plots"] = write_plots(results, ns.plot, slo)
    if ns.output == "json":
        print(json.dumps(doc, indent=2))
    else:
        print(render_table(doc))
        for path in doc.get("plots", []):
            print(f"plot    {path}")
    return 0
