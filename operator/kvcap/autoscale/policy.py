"""KV-headroom scaling policy for one vLLM pool: pure, clock-free, deterministic.

The operator (through `kvcap.autoscale.prometheus` and the controller) and the simulator
(`kvcap.sim`) call the very same function:

    decision = decide(spec, observation, state)

* `ScalingSpec`        what the pool may do: replica bounds, target KV utilization, scale-down
                       delay,
                       the planned KV tokens per replica, GPUs per replica and the GPU budget, the
                       start-up time of a replica and the pool's request-length model.
* `PoolObservation`    what was seen at time `now` (seconds on any clock, the same clock as the
                       `sample_time` of each pod and as the times kept in `PoolState`): the
                       replicas the workload has now and one `PodSample` per pod of the pool. A
                       metric the server does not report, or that Prometheus did not return, is
                       `NaN`. `prometheus_error` set means the queries themselves failed.
* `PoolState`          what the policy remembers between ticks (when demand went low, the last
                       scale, a short demand history for the trend). `to_dict()`/`from_dict()`
                       round-trip it through JSON-able dicts (the operator keeps it in status).
* `Decision`           desired replicas, the action, a one-line sentence with the arithmetic
                       ("KV demand 1.91M tokens > 75 % of 2 x 1.27M → 3 replicas"), the new state,
                       the figures behind it, and two verdicts: whether metrics were usable
                       (`MetricsVerdict`, for condition MetricsAvailable) and whether the servers'
                       reported KV capacity matches the plan (`CapacityVerdict`, for condition
                       CapacityVerified).

The rule (docs/autoscaling.md explains it with examples):

1. Capacity per replica: the median KV capacity the Ready servers report (`vllm:cache_config_info`:
   `kv_cache_size_tokens`, else `num_gpu_blocks` x `block_size`), else the plan's figure.
2. Tokens in use: sum over Ready pods of `vllm:kv_cache_usage_perc` x that pod's capacity.
3. Demand = tokens in use
         + capacity-waiting requests x (mean prompt x (1 - prefix-cache hit rate) + mean output)
         + running requests x mean output / 2      (decode growth still to come, on average)
         + the recent trend of *running* demand (tokens in use + decode growth, not the queue:
           a draining backlog is not growth) x the replica start-up time (look-ahead: from at
           least MIN_TREND_SPAN_SECONDS of history, at most LOOKAHEAD_CAP x running demand).
   Capacity-waiting is `vllm:num_requests_waiting_by_reason{reason="capacity"}` where the server
   splits its queue, else `vllm:num_requests_waiting`.
4. Needed replicas = ceil(demand / (target % x capacity per replica)), and, when the plan's
   `max_num_seqs` is known, at least ceil((running + capacity-waiting) / (target % x max_num_seqs)),
   and, when the spec prices a token (`prefill_seconds_per_token`, `decode_seconds_per_token`,
   from the step-time model of `kvcap.capacity.latency`), at least the compute floor
   ceil((peak prompt tokens/s x prefill cost + peak generated tokens/s x decode cost)
   / COMPUTE_TARGET): KV use alone misses compute-bound load (5-15 % KV while the replicas are
   saturated). The rates are each pod's busiest scrape interval of the last 10 minutes
   (`max_over_time(irate(...)[10m:15s])`, summed over the pool's pods), not 2-minute means:
   bursts shorter than the rate window plus a replica's start-up are what the replicas already
   running must absorb, and a mean-rate floor sized the pool for the average between them.
5. Pressure while every replica is Ready adds at least one replica: preemptions, or queued tokens
   (capacity-waiting x tokens per waiting request) that do not fit the free KV of the Ready
   replicas, or whose prompts would take each Ready replica longer to prefill than both
   QUEUE_SECONDS_LIMIT and one mean request (one request per replica waiting for the next step
   is a fresh arrival, not a queue), or that wait on replicas whose peak token rates kept them at
   least SATURATED_SHARE busy. A few waiting requests that fit are not pressure: vLLM
   counts fresh arrivals as capacity-waiting too (PR #38435), and on prefill-heavy pools "any
   waiting request" added a replica every tick at 2 % KV use. Without token prices (no compute
   floor) any capacity-waiting request is pressure, as the only compute signal left. Replicas
   that exist but are not Ready are capacity that is coming: they count in the arithmetic and
   suppress that extra replica, so a long model load does not cascade.
6. Up: straight to the needed count. Down: only after `scale_down_delay_seconds` of continuously
   low demand, then halfway to the needed count (at least one replica; the window restarts after
   each step), so an excess of n replicas is gone after about log2(n) windows instead of n, while
   a burst after a quiet window still finds half the excess. Never below the needed count (which
   holds what the running requests use). Always within [min, max] and the GPU budget.
7. Missing, stale or NaN data for a Ready pod never scales down (the low-demand window restarts);
   a scale-up the known data alone justifies still happens (the missing pods count as empty, so
   demand is a lower bound). Prometheus down holds the replica count.
8. A scale-up stops at `inventory_replicas` (what the Ready nodes of the allowed GPU products can
   place) and at the current count while a pod of the pool is Unschedulable; such a pod is not
   capacity that is coming. Both cap growth only: running replicas are never removed for them.
9. `min_replicas` 0 lets an idle pool (demand exactly 0) step down to zero; at zero there is no
   server and so no signal: the pool holds until something else sets its replicas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from kvcap.api import constants as kc
from kvcap.capacity.latency import (  # re-exported: the operator and the simulator price tokens
    OUTPUT_SHARE,
    LengthModel,
    length_model_for,
    token_costs,
)

NAN = float("nan")
MAX_TREND_POINTS = 32  # demand points kept for the trend (the CRD allows 64)
MIN_TREND_SPAN_SECONDS = 30.0  # history the trend needs before it looks ahead
LOOKAHEAD_CAP = 0.5  # the look-ahead adds at most this share of current running demand
# Busy share of a replica's step time the compute floor sizes for, at the *peak* token rates
# (the busiest scrape interval of the last 10 minutes, rule 4). Tuned on seed 0 of
# benchmarks/autoscaling.py against 0.8 and 0.85 (docs/benchmarks.md): 0.8 buys Azure code a
# few points of SLO for 8 % more GPU-hours there and 8 % more on Azure conv.
COMPUTE_TARGET = 0.9
# With token prices, waiting requests are pressure (rule 5) when the queued prompt tokens would
# take a Ready replica longer than this to prefill (half the 1 s TTFT objective of the benchmark's
# short pools; tried 0.1, 0.25, 0.5 and 1 s in benchmarks/autoscaling.py: at 0.25 s a single
# queued Mooncake prompt of 8.9k tokens was pressure and ratcheted both pools up).
QUEUE_SECONDS_LIMIT = 0.5
# With token prices, capacity-waiting requests are pressure (rule 5) whatever their number when
# the peak token rates kept the Ready replicas at least this busy: the step-time model prices a
# token at full-chunk prefill speed, and mixed prefill/decode steps saturate a replica at 80-90 %
# of that (a saturated Azure-code pool read 0.82 per replica in kvcap.sim), so the floor's 90 %
# alone may never fire while a queue builds. Tuned on seed 0 of benchmarks/autoscaling.py
# (0.7, 0.75, 0.8, 0.85; docs/benchmarks.md).
SATURATED_SHARE = 0.8
DOWN_STEP_SHARE = 0.5  # share of the excess replicas one scale-down step removes (at least one)
X, TO, GE, LE = "\u00d7", "\u2192", "\u2265", "\u2264"  # x, ->, >=, <= in messages

Action = Literal["up", "down", "hold"]
VerdictStatus = Literal["True", "False", "Unknown"]

# MetricsVerdict and CapacityVerdict reasons: the condition reasons of kvcap.api.constants
# (MetricsAvailable, CapacityVerified), documented there.
METRICS_CURRENT = kc.METRICS_CURRENT
PROMETHEUS_UNAVAILABLE = kc.PROMETHEUS_UNAVAILABLE
METRICS_MISSING = kc.METRICS_MISSING
METRICS_STALE = kc.METRICS_STALE
NO_READY_REPLICAS = kc.NO_READY_REPLICAS
CAPACITY_MATCHES_PLAN = kc.CAPACITY_MATCHES_PLAN
PLAN_MISMATCH = kc.PLAN_MISMATCH
CAPACITY_NOT_REPORTED = kc.CAPACITY_NOT_REPORTED


@dataclass(frozen=True, kw_only=True)
class ScalingSpec:
    """What one pool may do. Integers where the API has integers; times in seconds."""

    pool: str = "default"  # only used in messages
    min_replicas: int = 1
    max_replicas: int = 8
    target_kv_utilization_percent: int = 80
    scale_down_delay_seconds: float = 300.0
    kv_tokens_per_replica: int  # the plan's figure; used until servers report their own
    gpus_per_replica: int = 1
    gpu_budget: int | None = None  # GPUs this pool may hold in total (None: no limit)
    # Replicas the Ready nodes of the allowed GPU products can hold for this pool (allocatable
    # GPUs, less what the object's other pools take; None: no node inventory). Caps scale-up only.
    inventory_replicas: int | None = None
    inventory_text: str = "the node inventory"  # what `inventory_replicas` counted, for messages
    startup_seconds: float = 600.0  # pod creation -> Ready, for the look-ahead
    length: LengthModel
    max_num_seqs: int | None = None  # the plan's `--max-num-seqs` per replica (None: not used)
    stale_after_seconds: float = 120.0  # samples older than this count as stale
    trend_window_seconds: float = 300.0  # demand history used for the trend
    capacity_tolerance_percent: float = 2.0  # reported vs planned KV capacity
    # Seconds of replica step time per prompt token and per generated token (see
    # `token_costs`); None: no compute floor (rule 4), and any capacity-waiting request is pressure.
    prefill_seconds_per_token: float | None = None
    decode_seconds_per_token: float | None = None

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ValueError(
                f"ScalingSpec: must have 0 <= min_replicas <= max_replicas and max_replicas >= 1, "
                f"got {self.min_replicas}..{self.max_replicas}"
            )
        if not 1 <= self.target_kv_utilization_percent <= 100:
            raise ValueError("ScalingSpec: target_kv_utilization_percent must be in 1..100")
        if self.kv_tokens_per_replica < 1 or self.gpus_per_replica < 1:
            raise ValueError("ScalingSpec: kv_tokens_per_replica and gpus_per_replica must be >= 1")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise ValueError("ScalingSpec: max_num_seqs must be >= 1 when set")
        for name in ("prefill_seconds_per_token", "decode_seconds_per_token"):
            cost = getattr(self, name)
            if cost is not None and not (math.isfinite(cost) and cost >= 0):
                raise ValueError(f"ScalingSpec: {name} must be finite and >= 0 when set")

    @property
    def prices_tokens(self) -> bool:
        """Whether the compute floor (rule 4) applies."""
        return (
            self.prefill_seconds_per_token is not None or self.decode_seconds_per_token is not None
        )

    @property
    def upper_bound(self) -> int:
        """Most replicas allowed: `max_replicas`, lowered by the GPU budget."""
        if self.gpu_budget is None:
            return self.max_replicas
        return max(0, min(self.max_replicas, self.gpu_budget // self.gpus_per_replica))


@dataclass(frozen=True, kw_only=True)
class PodSample:
    """One pod of the pool: readiness from the API server, the rest from Prometheus (NaN: none).

    Counts are summed over the pod's engines; rates are per second.
    """

    name: str
    ready: bool
    kv_usage: float = NAN  # vllm:kv_cache_usage_perc (or gpu_cache_usage_perc), 0..1
    kv_capacity_tokens: float = NAN  # from vllm:cache_config_info
    running: float = NAN  # vllm:num_requests_running
    waiting: float = NAN  # vllm:num_requests_waiting (every reason)
    waiting_capacity: float = NAN  # vllm:num_requests_waiting_by_reason{reason="capacity"}
    preemption_rate: float = NAN  # rate(vllm:num_preemptions_total)
    prefix_cache_hit_rate: float = NAN  # rate(hits) / rate(queries), 0..1
    # Highest per-scrape-interval rate of the last 10 minutes:
    # max_over_time(irate(vllm:prompt_tokens_total[2m])[10m:15s]) (kvcap.autoscale.promql)
    peak_prompt_token_rate: float = NAN
    peak_generation_token_rate: float = NAN  # the same of vllm:generation_tokens_total
    sample_time: float = NAN  # time of the newest KV-usage sample (the clock of `now`)
    # Pending with PodScheduled=False/Unschedulable: not capacity that is coming (no GPU is free
    # for it), and a sign that more replicas would not be placed either.
    unschedulable: bool = False


@dataclass(frozen=True, kw_only=True)
class PoolObservation:
    """What one tick saw of one pool."""

    now: float
    replicas: int  # replicas the workload asks for now (its spec.replicas)
    pods: tuple[PodSample, ...] = ()
    prometheus_error: str | None = None  # the queries failed: hold


@dataclass(frozen=True, kw_only=True)
class PoolState:
    """What the policy remembers between ticks. JSON-able through `to_dict`/`from_dict`."""

    low_since: float | None = None  # when demand first fitted fewer replicas (None: not low)
    last_scale_time: float | None = None
    trend: tuple[tuple[float, float], ...] = ()  # (time, running demand tokens), oldest first

    def to_dict(self) -> dict[str, Any]:
        return {
            "lowSince": self.low_since,
            "lastScaleTime": self.last_scale_time,
            "trend": [[t, d] for t, d in self.trend],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> PoolState:
        """Inverse of `to_dict`; tolerant: anything malformed starts from a fresh state."""
        if not data:
            return cls()
        try:
            low = data.get("lowSince")
            last = data.get("lastScaleTime")
            trend = tuple(
                (float(t), float(d))
                for t, d in (data.get("trend") or ())
                if math.isfinite(float(t)) and math.isfinite(float(d))
            )
            return cls(
                low_since=None if low is None else float(low),
                last_scale_time=None if last is None else float(last),
                trend=trend,
            )
        except (TypeError, ValueError, AttributeError):
            return cls()


@dataclass(frozen=True)
class MetricsVerdict:
    """Condition MetricsAvailable for this pool."""

    status: VerdictStatus
    reason: str
    message: str


@dataclass(frozen=True)
class CapacityVerdict:
    """Condition CapacityVerified for this pool: reported vs planned KV tokens per replica."""

    status: VerdictStatus
    reason: str
    message: str
    planned_tokens: int
    observed_tokens: int | None  # median over Ready servers that report it


@dataclass(frozen=True, kw_only=True)
class Figures:
    """The numbers behind a decision (the operator copies them into `status.pools[]`)."""

    replicas: int
    ready_replicas: int
    capacity_tokens_per_replica: float  # observed if reported, else planned
    kv_tokens_in_use: float
    demand_tokens: float  # including the queue, decode growth and the look-ahead
    running: float
    capacity_waiting: float
    preemption_rate: float
    prefix_cache_hit_rate: float  # NaN when not reported
    compute_replicas: int = 0  # the compute floor (rule 4; 0 without token prices)
    needed_replicas: int  # before bounds, delays and one-step scale-down


@dataclass(frozen=True, kw_only=True)
class Decision:
    desired_replicas: int
    action: Action
    message: str  # one line, with the arithmetic
    state: PoolState
    metrics: MetricsVerdict
    capacity: CapacityVerdict
    figures: Figures


# --- formatting ---


def format_tokens(tokens: float) -> str:
    """1_910_000 -> '1.91M', 850_000 -> '850k', 999 -> '999'."""
    if not math.isfinite(tokens):
        return "?"
    if abs(tokens) >= 1e6:
        return f"{tokens / 1e6:.2f}M"
    if abs(tokens) >= 1e4:
        return f"{tokens / 1e3:.0f}k"
    if abs(tokens) >= 1e3:
        return f"{tokens / 1e3:.1f}k"
    return f"{tokens:.0f}"


def _plural(n: int) -> str:
    return f"{n} replica" if n == 1 else f"{n} replicas"


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# --- the pieces, each pure and exported for tests and the simulator ---


def verify_capacity(spec: ScalingSpec, pods: Sequence[PodSample]) -> CapacityVerdict:
    """Compare the KV capacity Ready servers report with the plan's `kv_tokens_per_replica`."""
    planned = spec.kv_tokens_per_replica
    reported = [p.kv_capacity_tokens for p in pods if p.ready]
    reported = [v for v in _finite(reported) if v > 0]
    if not reported:
        return CapacityVerdict(
            "Unknown",
            CAPACITY_NOT_REPORTED,
            f"pool '{spec.pool}': no Ready server reports its KV capacity "
            f"(vllm:cache_config_info num_gpu_blocks/block_size); using the planned "
            f"{format_tokens(planned)} tokens per replica",
            planned,
            None,
        )
    observed = round(_median(reported))
    diff = (observed - planned) / planned * 100
    text = (
        f"pool '{spec.pool}': servers report {observed} KV tokens per replica, the plan has "
        f"{planned} ({diff:+.1f} %)"
    )
    if abs(diff) > spec.capacity_tolerance_percent:
        return CapacityVerdict(
            "False",
            PLAN_MISMATCH,
            f"{text}, more than {spec.capacity_tolerance_percent:g} % apart; "
            f"autoscaling uses the reported figure",
            planned,
            observed,
        )
    return CapacityVerdict("True", CAPACITY_MATCHES_PLAN, text, planned, observed)


def check_metrics(spec: ScalingSpec, obs: PoolObservation) -> MetricsVerdict:
    """Whether this tick's samples can drive a scale-down (see the module docstring, rule 7)."""
    if obs.prometheus_error is not None:
        return MetricsVerdict(
            "False", PROMETHEUS_UNAVAILABLE, f"could not query Prometheus: {obs.prometheus_error}"
        )
    ready = [p for p in obs.pods if p.ready]
    if not ready:
        return MetricsVerdict(
            "Unknown",
            NO_READY_REPLICAS,
            f"pool '{spec.pool}' has no Ready replica to measure yet",
        )
    for pod in ready:
        for label, value in (
            ("vllm:kv_cache_usage_perc", pod.kv_usage),
            ("vllm:num_requests_running", pod.running),
            ("vllm:num_requests_waiting", pod.waiting),
        ):
            if not math.isfinite(value):
                return MetricsVerdict(
                    "False",
                    METRICS_MISSING,
                    f"no sample of '{label}' for Ready pod '{pod.name}' of pool '{spec.pool}'",
                )
    for pod in ready:
        if not math.isfinite(pod.sample_time):
            continue  # no timestamp known: freshness cannot be judged, the sample is taken as is
        age = obs.now - pod.sample_time
        if age > spec.stale_after_seconds:
            # The sample's own time, not its growing age: the message stays the same from tick
            # to tick, so a stale pool does not rewrite the status every tick.
            taken = datetime.fromtimestamp(pod.sample_time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return MetricsVerdict(
                "False",
                METRICS_STALE,
                f"the newest sample of 'vllm:kv_cache_usage_perc' for pod '{pod.name}' was "
                f"taken at {taken}, more than {spec.stale_after_seconds:g}s ago",
            )
    return MetricsVerdict(
        "True",
        METRICS_CURRENT,
        f"{len(ready)} Ready pod(s) of pool '{spec.pool}' report current KV and queue metrics",
    )


def trend_slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope (tokens/s) of (time, demand) points; 0 with < 2 points or no spread."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_d = sum(d for _, d in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var <= 0:
        return 0.0
    return sum((t - mean_t) * (d - mean_d) for t, d in points) / var


def _clamp(n: int, lower: int, upper: int) -> int:
    return max(lower, min(n, upper)) if upper >= lower else upper


def _scale_up_limit(spec: ScalingSpec, current: int, unschedulable: int) -> tuple[int, str]:
    """Most replicas a scale-up may reach besides max/budget, and why (never below `current`:
    the inventory caps growth, it never removes running replicas)."""
    limit, why = spec.upper_bound, ""
    if spec.inventory_replicas is not None and spec.inventory_replicas < limit:
        limit = max(current, spec.inventory_replicas)
        why = f"{spec.inventory_text} holds {_plural(spec.inventory_replicas)}"
    if unschedulable and current <= limit:  # the more telling reason when both bind
        limit = current
        them = "it" if unschedulable == 1 else "them"
        why = (
            f"{_plural(unschedulable)} cannot be scheduled (no free GPU of the allowed "
            f"products): no more replicas until the scheduler places {them}"
        )
    return limit, why


def decide(spec: ScalingSpec, obs: PoolObservation, state: PoolState) -> Decision:
    """Desired replicas of one pool for this tick. Pure: same inputs, same decision."""
    now = obs.now
    current = max(0, obs.replicas)
    lower, upper = spec.min_replicas, spec.upper_bound
    target = spec.target_kv_utilization_percent / 100
    metrics = check_metrics(spec, obs)
    capacity = verify_capacity(spec, obs.pods)
    per_replica = float(capacity.observed_tokens or spec.kv_tokens_per_replica)

    ready = [p for p in obs.pods if p.ready]
    n_ready = len(ready)
    # Unschedulable replicas are not capacity that is coming: no GPU is free for them.
    n_unschedulable = sum(1 for p in obs.pods if p.unschedulable and not p.ready)
    starting = max(0, current - n_ready - n_unschedulable)
    up_limit, up_why = _scale_up_limit(spec, current, n_unschedulable)

    def bounded_hold(why: str, figures: Figures, new_state: PoolState) -> Decision:
        desired = _clamp(current, lower, upper)
        if desired != current:
            action: Action = "up" if desired > current else "down"
            bound = "minReplicas" if desired > current else "maxReplicas (or the GPU budget)"
            message = f"{why}; {bound} {TO} {_plural(desired)}"
            new_state = replace(new_state, last_scale_time=now, low_since=None)
        else:
            action = "hold"
            message = f"{why} {TO} hold {_plural(current)}"
        return Decision(
            desired_replicas=desired,
            action=action,
            message=message,
            state=new_state,
            metrics=metrics,
            capacity=capacity,
            figures=figures,
        )

    empty = Figures(
        replicas=current,
        ready_replicas=n_ready,
        capacity_tokens_per_replica=per_replica,
        kv_tokens_in_use=NAN,
        demand_tokens=NAN,
        running=NAN,
        capacity_waiting=NAN,
        preemption_rate=NAN,
        prefix_cache_hit_rate=NAN,
        needed_replicas=current,
    )
    if metrics.reason == PROMETHEUS_UNAVAILABLE:
        return bounded_hold("Prometheus unavailable", empty, replace(state, low_since=None))
    if metrics.reason == NO_READY_REPLICAS:
        if not current:
            why = (
                "no replica to measure: with no vLLM server there is no KV or queue signal "
                "(scale from zero by setting the workload's replicas, e.g. `kubectl scale`)"
            )
        elif n_unschedulable:
            why = f"{_plural(n_unschedulable)} unschedulable, none Ready yet"
        else:
            why = f"{_plural(starting)} starting, none Ready yet"
        return bounded_hold(why, empty, replace(state, low_since=None))

    # --- measure (missing values count as zero: a lower bound on demand) ---
    def z(v: float) -> float:
        return v if math.isfinite(v) else 0.0

    in_use = 0.0
    for pod in ready:
        pod_capacity = pod.kv_capacity_tokens
        cap = pod_capacity if math.isfinite(pod_capacity) and pod_capacity > 0 else per_replica
        in_use += min(1.0, max(0.0, z(pod.kv_usage))) * cap
    running = sum(z(p.running) for p in ready)
    waiting = sum(
        z(p.waiting_capacity) if math.isfinite(p.waiting_capacity) else z(p.waiting) for p in ready
    )
    preempt = sum(max(0.0, z(p.preemption_rate)) for p in ready)
    hits = _finite([p.prefix_cache_hit_rate for p in ready])
    hit_rate = min(1.0, max(0.0, sum(hits) / len(hits))) if hits else NAN

    ready_capacity = sum(
        p.kv_capacity_tokens
        if math.isfinite(p.kv_capacity_tokens) and p.kv_capacity_tokens > 0
        else per_replica
        for p in ready
    )
    free_tokens = max(0.0, ready_capacity - in_use)

    length = spec.length
    per_waiting = length.mean_prompt_tokens * (1 - z(hit_rate)) + length.mean_output_tokens
    queue_tokens = waiting * per_waiting
    growth_tokens = running * length.mean_output_tokens / 2
    running_demand = in_use + growth_tokens
    demand_now = running_demand + queue_tokens

    complete = metrics.status == "True"
    window = spec.trend_window_seconds
    trend = tuple((t, d) for t, d in state.trend if now - window <= t < now)
    if complete:
        trend = (*trend, (now, running_demand))[-MAX_TREND_POINTS:]
    # A trend needs some history: a step seen over two close ticks is the pressure rule's business
    # (rule 5), and extrapolating it over a long start-up would overshoot. It follows running
    # demand only: while a backlog drains into the servers the running demand rises, and
    # extrapolating demand that still counts the queue would count that backlog twice.
    span = trend[-1][0] - trend[0][0] if trend else 0.0
    slope = trend_slope(trend) if span >= MIN_TREND_SPAN_SECONDS else 0.0
    lookahead = min(max(0.0, slope * spec.startup_seconds), LOOKAHEAD_CAP * running_demand)
    demand = demand_now + lookahead

    # Compute floor (rule 4): step time the peak token rates need, at COMPUTE_TARGET busy.
    need_compute = 0
    busy = 0.0
    if spec.prices_tokens:
        prompt_rate = sum(max(0.0, z(p.peak_prompt_token_rate)) for p in ready)
        gen_rate = sum(max(0.0, z(p.peak_generation_token_rate)) for p in ready)
        busy = prompt_rate * (spec.prefill_seconds_per_token or 0.0) + gen_rate * (
            spec.decode_seconds_per_token or 0.0
        )
        need_compute = math.ceil(busy / COMPUTE_TARGET - 1e-9) if busy > 0 else 0

    per_target = target * per_replica
    need_tokens = math.ceil(demand / per_target - 1e-9) if demand > 0 else 0
    need_seqs = 0
    if spec.max_num_seqs is not None:
        need_seqs = math.ceil((running + waiting) / (target * spec.max_num_seqs) - 1e-9)
    need = max(need_tokens, need_seqs, need_compute)
    # Rule 5: with token prices, waiting requests are pressure only when their tokens do not fit
    # the free KV or their prefill would keep every Ready replica busy for longer than one mean
    # request's prefill and QUEUE_SECONDS_LIMIT (one request per replica waiting for the next
    # step is a fresh arrival, not a queue); without prices, any capacity-waiting request is
    # pressure (the only compute signal left). A queue on replicas whose peak busy share reached
    # SATURATED_SHARE is compute-bound whatever its length: vLLM admits requests while KV and
    # seats last, so a saturated replica's backlog sits mostly in `running`, not in the queue.
    queue_seconds = 0.0
    saturated = spec.prices_tokens and n_ready > 0 and busy >= SATURATED_SHARE * n_ready
    prefill_cost = spec.prefill_seconds_per_token or 0.0
    one_prefill = length.mean_prompt_tokens * (1 - z(hit_rate)) * prefill_cost
    queue_limit = max(QUEUE_SECONDS_LIMIT, one_prefill)
    if spec.prices_tokens and n_ready:
        queue_seconds = waiting * one_prefill / n_ready
    queue_pressure = (
        queue_tokens > free_tokens or queue_seconds > queue_limit or saturated
        if spec.prices_tokens
        else waiting > 0
    )
    pressure = (waiting > 0 and queue_pressure) or preempt > 0
    if pressure and starting == 0:
        need = max(need, current + 1)

    pct = spec.target_kv_utilization_percent
    ahead = f" (incl. {format_tokens(lookahead)} trend look-ahead)" if lookahead > 0 else ""
    demand_text = f"KV demand {format_tokens(demand)} tokens{ahead}"
    capacity_text = f"{pct} % of {current} {X} {format_tokens(per_replica)}"
    pressure_text = ""
    if pressure:
        pressure_text = f"{waiting:.0f} waiting for capacity, {preempt:.2g} preemptions/s"
        if spec.prices_tokens and queue_pressure and waiting > 0:
            if queue_tokens > free_tokens:
                pressure_text += (
                    f" ({format_tokens(queue_tokens)} queued tokens > "
                    f"{format_tokens(free_tokens)} free)"
                )
            elif queue_seconds > queue_limit:
                pressure_text += (
                    f" ({queue_seconds:.1f}s of queued prefill per Ready replica > "
                    f"{queue_limit:.2g}s)"
                )
            else:
                pressure_text += (
                    f" (peak token rates kept the Ready replicas {busy / n_ready:.0%} busy "
                    f"{GE} {SATURATED_SHARE:.0%})"
                )
        if starting:
            pressure_text += f" ({_plural(starting)} starting count as capacity)"

    figures = Figures(
        replicas=current,
        ready_replicas=n_ready,
        capacity_tokens_per_replica=per_replica,
        kv_tokens_in_use=in_use,
        demand_tokens=demand,
        running=running,
        capacity_waiting=waiting,
        preemption_rate=preempt,
        prefix_cache_hit_rate=hit_rate,
        compute_replicas=need_compute,
        needed_replicas=need,
    )
    new_state = replace(state, trend=trend)

    def decided(action: Action, desired: int, message: str, st: PoolState) -> Decision:
        return Decision(
            desired_replicas=desired,
            action=action,
            message=message,
            state=st,
            metrics=metrics,
            capacity=capacity,
            figures=figures,
        )

    if need > current:
        whys = []
        if need_tokens > current:
            whys.append(f"{demand_text} > {capacity_text}")
        if need_seqs > current:
            whys.append(
                f"{running + waiting:.0f} requests > {pct} % of {current} {X} "
                f"{spec.max_num_seqs} seqs"
            )
        if need_compute > current:
            whys.append(
                f"peak token rates need {busy:.2f} replica-seconds/s of steps > "
                f"{COMPUTE_TARGET:.0%} busy of {_plural(current)}"
            )
        if pressure and starting == 0:
            whys.append(pressure_text)
        why = "; ".join(whys)
        desired = _clamp(need, lower, min(upper, up_limit))
        if desired > current:
            capped = (
                f" (wanted {need}; {up_why or 'maxReplicas/GPU budget'})" if desired < need else ""
            )
            return decided(
                "up",
                desired,
                f"{why} {TO} {_plural(desired)}{capped}",
                replace(new_state, low_since=None, last_scale_time=now),
            )
        limit = f"the maxReplicas/GPU budget limit is {upper}"
        if up_limit < upper:
            limit = up_why
        return bounded_hold(
            f"{why}, wants {_plural(need)} but {limit}",
            figures,
            replace(new_state, low_since=None),
        )

    if need < current and current > lower:
        fits = f"{demand_text} fits {_plural(need)} at {pct} % of {format_tokens(per_replica)}"
        if need_compute and need_compute >= max(need_tokens, need_seqs):
            fits = (
                f"{demand_text}; peak token rates need {_plural(need_compute)} "
                f"at {COMPUTE_TARGET:.0%} busy"
            )
        if pressure:
            return bounded_hold(
                f"{fits}, but {pressure_text}", figures, replace(new_state, low_since=None)
            )
        if not complete:
            return bounded_hold(
                f"{fits}, but {metrics.reason}: no scale-down on incomplete data",
                figures,
                replace(new_state, low_since=None),
            )
        low_since = state.low_since if state.low_since is not None else now
        waited = now - low_since
        if waited >= spec.scale_down_delay_seconds:
            # Halfway to the need (at least one replica): log2(excess) windows, not one per replica.
            halfway = min(current - 1, current - math.floor((current - need) * DOWN_STEP_SHARE))
            desired = _clamp(max(halfway, need), lower, upper)
            if desired < current:
                return decided(
                    "down",
                    desired,
                    f"{fits} for {waited:.0f}s {GE} {spec.scale_down_delay_seconds:g}s {TO} "
                    f"{_plural(desired)} (halfway down from {current})",
                    replace(new_state, low_since=now, last_scale_time=now),
                )
        return bounded_hold(
            f"{fits}, low for {waited:.0f}s of {spec.scale_down_delay_seconds:g}s",
            figures,
            replace(new_state, low_since=low_since),
        )

    extra = f"; {pressure_text}" if pressure else ""
    return bounded_hold(
        f"{demand_text} {LE} {capacity_text} = {format_tokens(per_target * current)}{extra}",
        figures,
        replace(new_state, low_since=None),
    )


__all__ = [
    "CAPACITY_MATCHES_PLAN",
    "CAPACITY_NOT_REPORTED",
    "COMPUTE_TARGET",
    "LOOKAHEAD_CAP",
    "METRICS_CURRENT",
    "METRICS_MISSING",
    "METRICS_STALE",
    "MIN_TREND_SPAN_SECONDS",
    "NO_READY_REPLICAS",
    "OUTPUT_SHARE",
    "PLAN_MISMATCH",
    "PROMETHEUS_UNAVAILABLE",
    "QUEUE_SECONDS_LIMIT",
    "SATURATED_SHARE",
    "CapacityVerdict",
    "Decision",
    "Figures",
    "LengthModel",
    "MetricsVerdict",
    "PodSample",
    "PoolObservation",
    "PoolState",
    "ScalingSpec",
    "check_metrics",
    "decide",
    "format_tokens",
    "length_model_for",
    "token_costs",
    "trend_slope",
    "verify_capacity",
]
