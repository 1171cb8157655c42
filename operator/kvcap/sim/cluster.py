"""The cluster around the replicas: routing, Prometheus scrapes, the controller's ticks, pod
start-up, scale-down by draining, and the bookkeeping of GPU-hours and latencies (pure).

Routing sends a request to the pool whose (min_context, max_model_len] range holds its prompt +
output (the operator's routing labels), and inside the pool to the Ready replica with the fewest
requests in flight (ties: least KV in use). Requests longer than every pool are rejected. While a
pool has no Ready replica its requests wait at the gateway.

Policies see only what Prometheus saw at the last scrape (rates over the last 2 minutes; token
rates as the highest per-scrape-interval rate of the last 10 minutes, as the operator's subquery
reads them) and decide every `interval_s`. A new pod takes GPUs at once and serves after the
pool's start-up time. A pod scaled down stops taking requests, finishes what it holds, and then
frees its GPUs.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kvcap.sim.engine import Replica, Req
from kvcap.sim.model import ClusterConfig, PodView, PoolSetup, Slo
from kvcap.sim.policies import Policy
from kvcap.sim.trace import Trace

Progress = Callable[[float], None]


@dataclass
class PoolRun:
    setup: PoolSetup
    replicas: list[Replica] = field(default_factory=list)
    gone: list[Replica] = field(default_factory=list)
    pending: deque[Req] = field(default_factory=deque)
    views: list[PodView] = field(default_factory=list)
    history: dict[int, deque[tuple[float, int, int, int, int, int, int]]] = field(
        default_factory=dict)
    # per replica: (scrape time, prompt and generated tokens/s since the previous scrape)
    token_rates: dict[int, deque[tuple[float, float, float]]] = field(default_factory=dict)
    scale_events: int = 0
    max_used_fraction: float = 0.0


@dataclass
class Timeline:
    t: list[float] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    kv_used: list[float] = field(default_factory=list)
    kv_capacity: list[float] = field(default_factory=list)
    waiting: list[float] = field(default_factory=list)


@dataclass
class RunResult:
    policy: str
    requests: list[Req]
    rejected: int
    pools: list[PoolRun]
    timelines: list[Timeline]
    end: float  # last arrival (GPU-hours are counted over [0, end])
    messages: list[tuple[float, int, str]]

    def gpu_hours(self) -> float:
        total = 0.0
        for pr in self.pools:
            for r in (*pr.replicas, *pr.gone):
                stop = r.removed_at if r.removed_at >= 0 else self.end
                total += max(0.0, min(stop, self.end) - min(r.created, self.end)) \
                    * pr.setup.gpus_per_replica
        return total / 3600.0


def route(pools: Sequence[PoolSetup], length: int) -> int:
    """Index of the pool that takes a request of `length` tokens, -1 if none does."""
    for i, p in enumerate(pools):
        if p.min_context < length <= p.max_model_len:
            return i
    return -1


def _pick(replicas: list[Replica]) -> Replica | None:
    best: Replica | None = None
    best_key = (0, 0)
    for r in replicas:
        if r.draining or r.clock < r.ready_at:
            continue
        key = (len(r.running) + len(r.waiting), r.used_blocks)
        if best is None or key < best_key:
            best, best_key = r, key
    return best


def simulate(trace: Trace, pools: Sequence[PoolSetup], policy: Policy, cfg: ClusterConfig,
             progress: Progress | None = None) -> RunResult:
    """Replay `trace` through `pools` scaled by `policy`. Deterministic: no randomness inside."""
    runs = [PoolRun(p) for p in pools]
    reqs: list[Req] = []
    rejected = 0
    for i, tr in enumerate(trace.requests):
        out = max(1, tr.output)
        pool = route(pools, tr.prompt + out)
        r = Req(i, tr.arrival, max(1, tr.prompt), out, tr.hashes, pool)
        if pool < 0:
            rejected += 1
        reqs.append(r)
    end = trace.duration
    timelines = [Timeline() for _ in pools]
    done: list[Req] = []
    names = [0]

    def new_replica(pi: int, now: float, ready_now: bool) -> None:
        s = runs[pi].setup
        rep = Replica(cfg=s.engine, model=s.model, created=now,
                      ready_at=now if ready_now else now + s.startup_s, clock=now)
        names[0] += 1
        rep.counters.requests = 0
        runs[pi].replicas.append(rep)
        runs[pi].history[id(rep)] = deque()

    for pi, pr in enumerate(runs):
        for _ in range(max(0, policy.initial(pi, pr.setup))):
            new_replica(pi, 0.0, True)

    def advance(t: float) -> None:
        for pr in runs:
            for rep in pr.replicas:
                rep.advance(t, done)
            # drained replicas leave
            keep = []
            for rep in pr.replicas:
                if rep.draining and not rep.busy():
                    rep.removed_at = max(t, rep.clock if math.isfinite(rep.clock) else t)
                    pr.gone.append(rep)
                else:
                    keep.append(rep)
            pr.replicas = keep
            if pr.pending:
                while pr.pending:
                    target = _pick(pr.replicas)
                    if target is None:
                        break
                    req = pr.pending.popleft()
                    target.add(req)

    def scrape(t: float) -> None:
        for pi, pr in enumerate(runs):
            views = []
            used = cap = waiting = 0.0
            ready = 0
            for k, rep in enumerate(pr.replicas):
                is_ready = rep.ready_at <= t and not rep.draining
                c = rep.counters
                hist = pr.history.setdefault(id(rep), deque())
                hist.append((t, c.preemptions, c.requests, c.prefix_queries, c.prefix_hits,
                             c.prompt_tokens, c.generation_tokens))
                while hist and hist[0][0] < t - cfg.rate_window_s - 1e-9:
                    hist.popleft()
                t0, p0, q0, pq0, ph0, _, _ = hist[0]
                dt = t - t0
                if dt > 0:
                    pre = (c.preemptions - p0) / dt
                    rps = (c.requests - q0) / dt
                    dq = c.prefix_queries - pq0
                    hit = (c.prefix_hits - ph0) / dq if dq > 0 else float("nan")
                else:
                    pre = rps = 0.0
                    hit = float("nan")
                # irate: the last two samples; the peak: max_over_time over `peak_window_s`
                rates = pr.token_rates.setdefault(id(rep), deque())
                if len(hist) >= 2:
                    tp, *_, ptp, gtp = hist[-2]
                    rates.append((t, (c.prompt_tokens - ptp) / (t - tp),
                                  (c.generation_tokens - gtp) / (t - tp)))
                while rates and rates[0][0] <= t - cfg.peak_window_s + 1e-9:
                    rates.popleft()
                ptr = max((r[1] for r in rates), default=0.0)
                gtr = max((r[2] for r in rates), default=0.0)
                views.append(PodView(
                    name=f"{pr.setup.name}-{k}", ready=is_ready, kv_usage=rep.kv_usage,
                    kv_capacity_tokens=rep.kv_capacity_tokens, running=float(len(rep.running)),
                    waiting=float(len(rep.waiting)),
                    waiting_capacity=float(min(rep.capacity_waiting, len(rep.waiting))),
                    preemption_rate=pre, prefix_hit_rate=hit,
                    request_rate=rps, sample_time=t, peak_prompt_token_rate=ptr,
                    peak_generation_token_rate=gtr))
                if is_ready:
                    ready += 1
                    used += rep.used_blocks * rep.cfg.block_size
                    cap += rep.kv_capacity_tokens
                    waiting += len(rep.waiting)
                pr.max_used_fraction = max(pr.max_used_fraction,
                                           rep.peak_blocks / rep.cfg.total_blocks)
            pr.views = views
            tl = timelines[pi]
            tl.t.append(t)
            tl.replicas.append(len([r for r in pr.replicas if not r.draining]))
            tl.ready.append(ready)
            tl.kv_used.append(used)
            tl.kv_capacity.append(cap)
            tl.waiting.append(waiting + len(pr.pending))

    def tick(t: float) -> None:
        for pi, pr in enumerate(runs):
            active = [r for r in pr.replicas if not r.draining]
            current = len(active)
            want = policy.desired(pi, pr.setup, t, current, pr.views)
            if want > current:
                for _ in range(want - current):
                    new_replica(pi, t, False)
                pr.scale_events += 1
            elif want < current:
                # Kubernetes removes not-Ready pods first, then the most recently started.
                order = sorted(active, key=lambda r: (r.ready_at <= t, -r.created))
                for rep in order[:current - want]:
                    rep.draining = True
                    if rep.ready_at > t:  # never served: its GPUs go at once
                        rep.removed_at = t
                        rep.clock = t
                        pr.pending.extendleft(reversed(list(rep.waiting)))
                        rep.waiting.clear()
                pr.scale_events += 1

    # --- the event loop ---
    scrape_every = cfg.scrape_interval_s
    tick_every = policy.interval_s
    next_scrape, next_tick = 0.0, tick_every
    ai = 0
    n = len(reqs)
    horizon = end + cfg.drain_s
    t = 0.0
    last_progress = -1.0
    while True:
        next_arrival = reqs[ai].arrival if ai < n else math.inf
        t = min(next_arrival, next_scrape, next_tick)
        if t > horizon:
            break
        if ai >= n and all(not r.busy() for pr in runs for r in pr.replicas) \
                and all(not pr.pending for pr in runs):
            break
        advance(t)
        if t == next_arrival:
            while ai < n and reqs[ai].arrival <= t:
                req = reqs[ai]
                ai += 1
                if req.pool < 0:
                    continue
                pr = runs[req.pool]
                target = _pick(pr.replicas)
                if target is None:
                    pr.pending.append(req)
                else:
                    target.add(req)
        if t == next_scrape:
            scrape(t)
            next_scrape += scrape_every
        if t == next_tick:
            if t <= end:
                tick(t)
            next_tick += tick_every
        if progress is not None and end > 0 and t - last_progress >= end / 100:
            last_progress = t
            progress(min(1.0, t / end))
    for pr in runs:  # replicas still up at the end
        for rep in pr.replicas:
            if rep.removed_at < 0:
                rep.removed_at = end
    messages = list(getattr(policy, "messages", []))
    return RunResult(policy.name, reqs, rejected, runs, timelines, end, messages)


def summarize(res: RunResult, slo: Slo) -> dict[str, object]:
    """The figures `kvcap simulate --output json` reports for one policy."""
    finished = [r for r in res.requests if r.finish >= 0]
    ttft = sorted(r.first_token - r.arrival for r in finished)
    tpot = sorted((r.finish - r.first_token) / (r.output - 1) for r in finished if r.output > 1)
    met = 0
    for r in finished:
        tp = (r.finish - r.first_token) / (r.output - 1) if r.output > 1 else 0.0
        if r.first_token - r.arrival <= slo.ttft_limit(r.prompt) and tp <= slo.tpot_s:
            met += 1
    total = len(res.requests)
    unfinished = total - len(finished) - res.rejected
    replicas_mean = []
    for tl in res.timelines:
        replicas_mean.append(sum(tl.replicas) / len(tl.replicas) if tl.replicas else 0.0)
    return {
        "gpu_hours": round(res.gpu_hours(), 3),
        "slo_attainment": round(met / total, 4) if total else 1.0,
        "ttft_p50_s": round(_pct(ttft, 50), 4),
        "ttft_p99_s": round(_pct(ttft, 99), 4),
        "tpot_p50_s": round(_pct(tpot, 50), 5),
        "tpot_p99_s": round(_pct(tpot, 99), 5),
        "preemptions": sum(r.preemptions for r in res.requests),
        "rejected": res.rejected,
        "unfinished": unfinished,
        "finished": len(finished),
        "requests": total,
        "scale_events": sum(pr.scale_events for pr in res.pools),
        "pools": [{
            "name": pr.setup.name,
            "mean_replicas": round(replicas_mean[i], 2),
            "max_replicas": max(res.timelines[i].replicas, default=0),
            "peak_kv_fraction": round(pr.max_used_fraction, 4),
        } for i, pr in enumerate(res.pools)],
    }


def _pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (0 when empty)."""
    if not values:
        return 0.0
    k = max(0, min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1))
    return values[k]
