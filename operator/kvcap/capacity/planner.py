"""The capacity planner: ModelDeployment spec -> pools of vLLM replicas (pure; no I/O).

For every allowed GPU product and tensor-parallel size the planner asks `memory.estimate` what one
replica holds, sizes replicas for the workload's KV demand, and keeps the cheapest plan. A workload
whose longest requests are far longer than its typical ones gets a separate long-context pool, so that
long prefills and their KV cannot preempt or stall the short requests.

KV demand: with request lengths known only by percentiles, the planner fits a log-normal (p50 sets the
median; the larger of the p90- and p99-implied sigmas sets the spread, so the tail is never
under-estimated), and sizes for N concurrent requests at the 95th percentile of their summed length
(CLT: N·mean + 1.645·sqrt(N)·sd). Without percentiles every request is assumed to be max length.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from kvcap.api.errors import InvalidArgument, KvcapError, UnknownGpu
from kvcap.api.models import (
    KV_CACHE_DTYPE_FLAG,
    QUANTIZATION_FLAG,
    ModelDeploymentSpec,
    parse_quantity,
)
from kvcap.capacity import catalog
from kvcap.capacity.arch import ModelArch
from kvcap.capacity.catalog import GIB, Gpu
from kvcap.capacity.configs import load_model
from kvcap.capacity.hints import Fit, cheapest_per_kind, spec_change, what_would_fit
from kvcap.capacity.latency import StepModel, length_model_for, step_model, token_costs
from kvcap.capacity.memory import Calibration, Estimate, ServeArgs, estimate
from kvcap.capacity.plan_types import Alternative, CapacityPlan, PoolPlan
from kvcap.capacity.vllm_version import profile, unserved_reason

LONG_TAIL_RATIO = 4  # split when maxContextTokens > 4 x p99
Z95 = 1.6449
TP_CHOICES = (1, 2, 4, 8, 16, 32, 64)
PP_CHOICES = (1, 2, 3, 4, 6, 8)


# ---------------------------------------------------------------------------------------------
# Request-length distribution
# ---------------------------------------------------------------------------------------------

def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@dataclass(frozen=True, slots=True)
class LengthModel:
    """Request length (prompt + output tokens), log-normal, capped at `cap`."""

    mu: float
    sigma: float
    cap: int

    @classmethod
    def from_percentiles(cls, p50: int, p90: int, p99: int, cap: int) -> LengthModel:
        mu = math.log(p50)
        sigma = max((math.log(p90) - mu) / 1.2816, (math.log(p99) - mu) / 2.3263, 1e-3)
        return cls(mu, sigma, cap)

    def partial_mean(self, limit: float) -> float:
        """E[min(X, limit)]."""
        if limit <= 0:
            return 0.0
        m, s = self.mu, self.sigma
        z = (math.log(limit) - m - s * s) / s
        below = math.exp(m + s * s / 2) * _phi(z)
        return below + limit * self.tail(limit)

    def tail(self, threshold: float) -> float:
        """P(X > threshold)."""
        return 1.0 - _phi((math.log(max(threshold, 1e-9)) - self.mu) / self.sigma)

    def mean(self, lo: float = 0.0, hi: float | None = None) -> float:
        """E[min(X, hi) | X > lo]."""
        hi = float(self.cap if hi is None else hi)
        if lo <= 0:
            return self.partial_mean(hi)
        p = self.tail(lo)
        if p <= 1e-12:
            return hi
        return lo + (self.partial_mean(hi) - self.partial_mean(lo)) / p

    def second_moment(self, hi: float) -> float:
        """E[min(X, hi)^2] (for the spread of summed lengths)."""
        m, s = self.mu, self.sigma
        z = (math.log(hi) - m - 2 * s * s) / s
        return math.exp(2 * m + 2 * s * s) * _phi(z) + hi * hi * self.tail(hi)

    def quantile(self, q: float, lo: float = 0.0, hi: float | None = None) -> float:
        """The q-quantile (0 < q < 1) of X given X > lo, capped at hi."""
        hi = float(self.cap if hi is None else hi)
        below_lo = 1.0 - self.tail(lo) if lo > 0 else 0.0
        target = below_lo + q * (1.0 - below_lo)
        a, b = -10.0, 10.0  # invert the normal CDF by bisection (no scipy in the core)
        for _ in range(80):
            mid = (a + b) / 2
            if _phi(mid) < target:
                a = mid
            else:
                b = mid
        return min(hi, max(lo, math.exp(self.mu + self.sigma * (a + b) / 2)))


@dataclass(frozen=True, slots=True)
class PoolDemand:
    name: str
    min_context: int  # requests longer than this come here (0 = from the shortest)
    max_model_len: int
    concurrency: int  # requests at once
    mean_tokens: float  # mean request length in this pool
    demand_tokens: float  # KV tokens to hold at the 95th percentile of the summed length
    pct_tokens: float = 0.0  # request length at the latency objectives' percentile (0: not set)

    @property
    def effective_requests(self) -> float:
        """Demand in units of mean-length requests."""
        return self.demand_tokens / max(self.mean_tokens, 1.0)


def _demand(name: str, lo: int, hi: int, n: int, lengths: LengthModel | None,
            percentile: int | None = None) -> PoolDemand:
    if lengths is None:
        return PoolDemand(name, lo, hi, n, float(hi), float(n * hi),
                          float(hi) if percentile else 0.0)
    mean = max(1.0, lengths.mean(lo, hi))
    if lo > 0:
        var = (hi - lo) ** 2 / 12  # a thin tail: treat lengths as uniform over (lo, hi]
    else:
        var = max(0.0, lengths.second_moment(hi) - mean * mean)
    demand = n * mean + Z95 * math.sqrt(n * var)
    pct = lengths.quantile(percentile / 100, lo, hi) if percentile else 0.0
    return PoolDemand(name, lo, hi, n, mean, min(demand, float(n * hi)), pct)


# ---------------------------------------------------------------------------------------------
# Candidates
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Candidate:
    gpu: Gpu
    tp: int
    pp: int
    replicas: int
    est: Estimate  # at the pool's max_model_len
    requests_per_replica: float  # mean-length requests one replica holds (KV headroom applied)
    max_num_seqs: int
    cost: float
    binding: str | None = None  # with latency objectives: "kv", "max_num_seqs", "ttft" or "tpot"
    ttft_ms: float | None = None  # predicted at the planned concurrency
    tpot_ms: float | None = None

    @property
    def gpus_per_replica(self) -> int:
        return self.tp * self.pp

    @property
    def total_gpus(self) -> int:
        return self.replicas * self.tp * self.pp

    def summary(self) -> str:
        pp = f" x PP {self.pp}" if self.pp > 1 else ""
        return (f"{self.replicas} x {self.gpu.name} TP {self.tp}{pp} "
                f"({self.total_gpus} GPUs, {self.est.kv_tokens:,} KV tokens/replica)")


def gpu_cost(gpu: Gpu) -> float:
    """Relative cost of one GPU. Without prices the planner uses memory as the proxy: GPUs are priced
    roughly by their HBM, and memory is what KV-bound serving buys."""
    return gpu.memory_bytes / GIB


def valid_tp_sizes(arch: ModelArch, per_node: int) -> list[int]:
    return [t for t in TP_CHOICES if t <= per_node and arch.num_attention_heads % t == 0]


def _serve_args(spec: ModelDeploymentSpec, tp: int, pp: int, max_model_len: int,
                max_num_seqs: int | None = None) -> ServeArgs:
    v = spec.vllm
    quant = QUANTIZATION_FLAG.get(spec.model.quantization or "None")
    return ServeArgs(
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        gpu_memory_utilization=(v.gpu_memory_utilization_percent / 100
                                if v.gpu_memory_utilization_percent else None),
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs or v.max_num_seqs,
        max_num_batched_tokens=v.max_num_batched_tokens,
        kv_cache_dtype=KV_CACHE_DTYPE_FLAG[v.kv_cache_dtype],
        block_size=v.block_size,
        quantization=quant,
        kv_cache_memory_bytes=parse_quantity(v.kv_cache_memory) if v.kv_cache_memory else None,
        vllm_version=v.resolved_version(),
        calibrations=_CALIBRATIONS.get(),
    )


def step_model_for(arch: ModelArch, gpu: Gpu, spec: ModelDeploymentSpec, tp: int, pp: int,
                   max_model_len: int) -> tuple[StepModel, Estimate]:
    """The step-time model of one replica of this shape (kvcap.capacity.latency), with the memory
    estimate it was built from."""
    est = estimate(arch, gpu, _serve_args(spec, tp, pp, max_model_len))
    model = step_model(arch, gpu, tp=tp, pp=pp, weight_bytes_per_gpu=est.weights_bytes,
                       kv_bytes_per_token=est.kv_bytes_per_token)
    return model, est


def _evaluate(arch: ModelArch, gpu: Gpu, spec: ModelDeploymentSpec, demand: PoolDemand, tp: int,
              pp: int) -> Candidate | str:
    """One replica shape for one pool: a Candidate, or why it cannot work."""
    args = _serve_args(spec, tp, pp, demand.max_model_len)
    try:
        est = estimate(arch, gpu, args)
    except InvalidArgument as err:
        return err.message
    if not est.fits:
        return f"{gpu.name} TP {tp}" + (f" PP {pp}" if pp > 1 else "") + f": {est.reason}"
    headroom = spec.workload.kv_headroom_percent / 100
    # Requests of the pool's mean length that fit, from the same block arithmetic vLLM uses.
    mean_len = max(1, min(int(math.ceil(demand.mean_tokens)), demand.max_model_len))
    at_mean = est if mean_len == demand.max_model_len else estimate(
        arch, gpu, replace(args, max_model_len=mean_len, kv_cache_memory_bytes=est.available_kv_bytes))
    capacity = at_mean.max_concurrency * (1 - headroom)
    seqs_cap = est.max_num_seqs  # the spec's cap, else vLLM's default for this GPU and version
    per_replica = min(capacity, float(seqs_cap))
    if per_replica < 1:
        return (f"{gpu.name} TP {tp}: one replica holds only {capacity:.2f} requests of "
                f"{mean_len} tokens after {spec.workload.kv_headroom_percent}% headroom")
    replicas = max(1, math.ceil(demand.effective_requests / per_replica - 1e-9))
    # max_num_seqs: what the KV cache holds at the mean length, so vLLM does not admit more than it
    # can keep without preempting; never above the cap.
    max_num_seqs = max(1, min(seqs_cap, int(at_mean.max_concurrency)))
    objectives = spec.workload.latency_objectives
    if objectives is None:
        cost = replicas * tp * pp * gpu_cost(gpu)
        return Candidate(gpu, tp, pp, replicas, est, per_replica, max_num_seqs, cost)
    fit = _latency_fit(arch, gpu, spec, demand, est, tp, pp, per_replica)
    if isinstance(fit, str):
        return fit
    concurrency, binding, ttft_ms, tpot_ms = fit
    if binding == "kv" and capacity > seqs_cap:
        binding = "max_num_seqs"
    if binding in ("ttft", "tpot"):
        per_replica = concurrency
        replicas = max(1, math.ceil(demand.effective_requests / per_replica - 1e-9))
        max_num_seqs = max(1, min(max_num_seqs, int(concurrency)))
    cost = replicas * tp * pp * gpu_cost(gpu)
    return Candidate(gpu, tp, pp, replicas, est, per_replica, max_num_seqs, cost, binding,
                     ttft_ms, tpot_ms)


def _latency_fit(arch: ModelArch, gpu: Gpu, spec: ModelDeploymentSpec, demand: PoolDemand,
                 est: Estimate, tp: int, pp: int,
                 kv_concurrency: float) -> tuple[float, str, float, float] | str:
    """The most mean-length requests per replica (<= the KV bound) that meet the latency
    objectives, which constraint binds, and the predicted TTFT/TPOT (ms) there; or why even one
    request misses them.

    TPOT: one decode step of `c` requests holding `c` x the pool's mean length of KV. TTFT: the
    prompt of the objectives' percentile length, prefilled in `max_num_batched_tokens` chunks next
    to `c - 1` decoding requests, plus the API-server overhead (kvcap.capacity.latency).
    """
    obj = spec.workload.latency_objectives
    assert obj is not None
    model = step_model(arch, gpu, tp=tp, pp=pp, weight_bytes_per_gpu=est.weights_bytes,
                       kv_bytes_per_token=est.kv_bytes_per_token)
    length = int(min(demand.max_model_len, max(1.0, demand.pct_tokens or demand.max_model_len)))
    mean = int(max(1.0, demand.mean_tokens))
    chunk = est.max_num_batched_tokens

    def ttft(c: int) -> float:
        return model.ttft(length, chunk, c - 1, (c - 1) * mean) * 1e3

    def tpot(c: int) -> float:
        return model.decode_step(c, c * mean) * 1e3

    def misses(c: int) -> str | None:
        if obj.tpot_milliseconds is not None and tpot(c) > obj.tpot_milliseconds:
            return "tpot"
        if obj.ttft_milliseconds is not None and ttft(c) > obj.ttft_milliseconds:
            return "ttft"
        return None

    shape = f"{gpu.name} TP {tp}" + (f" PP {pp}" if pp > 1 else "")
    first = misses(1)
    if first is not None:
        what = (f"TPOT {tpot(1):.1f} ms > tpotMilliseconds {obj.tpot_milliseconds}"
                if first == "tpot" else
                f"TTFT {ttft(1):.0f} ms for a {length}-token prompt > ttftMilliseconds "
                f"{obj.ttft_milliseconds}")
        return f"{shape}: even one request alone misses the latency objectives ({what})"
    top = max(1, int(kv_concurrency))
    if misses(top) is None:
        return kv_concurrency, "kv", ttft(top), tpot(top)
    lo, hi = 1, top  # misses(lo) is None, misses(hi) is not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if misses(mid) is None:
            lo = mid
        else:
            hi = mid
    binding = misses(hi) or "tpot"
    return float(lo), binding, ttft(lo), tpot(lo)


def _search(arch: ModelArch, gpus: Sequence[Gpu], spec: ModelDeploymentSpec,
            demand: PoolDemand) -> tuple[list[Candidate], list[str]]:
    per_node = spec.gpu.per_node
    found: list[Candidate] = []
    why: list[str] = []
    for gpu in gpus:
        fitted_single_node = False
        for tp in valid_tp_sizes(arch, per_node):
            got = _evaluate(arch, gpu, spec, demand, tp, 1)
            if isinstance(got, Candidate):
                found.append(got)
                fitted_single_node = True
                # Larger TP only buys KV per GPU through fewer weight copies; keep searching, the
                # cost comparison decides.
            else:
                why.append(got)
        if not fitted_single_node:
            # Multi-node: a full node of TP, pipeline-parallel across nodes (LeaderWorkerSet).
            tp = max(valid_tp_sizes(arch, per_node) or [1])
            for pp in PP_CHOICES[1:]:
                got = _evaluate(arch, gpu, spec, demand, tp, pp)
                if isinstance(got, Candidate):
                    found.append(got)
                    break
                why.append(got)
    found.sort(key=lambda c: (c.cost, c.total_gpus, c.gpus_per_replica, -c.requests_per_replica))
    return found, why


# ---------------------------------------------------------------------------------------------
# GPUs
# ---------------------------------------------------------------------------------------------

def resolve_gpus(spec: ModelDeploymentSpec, cluster_gpus: Mapping[str, int] | None) -> list[Gpu]:
    """Catalog GPUs the spec allows (and, in a cluster, that exist on some node)."""
    memory_gib = parse_quantity(spec.gpu.memory) / GIB if spec.gpu.memory else None
    names = list(spec.gpu.products)
    if not names and cluster_gpus:
        names = list(cluster_gpus)
    if not names:
        return [g for g in catalog.all_gpus() if g.vendor in ("nvidia", "amd")]
    out: dict[str, Gpu] = {}
    for name in names:
        try:
            gpu = catalog.get_gpu(name, memory_gib)
        except UnknownGpu:
            if cluster_gpus is not None and not spec.gpu.products:
                continue  # an unknown product on some node: not a candidate
            raise
        out.setdefault(gpu.name, gpu)
    return list(out.values())


def gpu_labels(gpu: Gpu, spec: ModelDeploymentSpec) -> tuple[str, ...]:
    """`nvidia.com/gpu.product` values for node affinity: the spec's own spellings that name this GPU,
    plus the catalog's product labels."""
    labels = []
    for p in spec.gpu.products:
        found = catalog.find_gpu(p)
        if found is gpu or (found is None and p == gpu.name):
            labels.append(p)
    for label in gpu.product_labels:
        if label not in labels:
            labels.append(label)
    return tuple(dict.fromkeys(labels))


def available_of(gpu: Gpu, cluster_gpus: Mapping[str, int] | None) -> int | None:
    if cluster_gpus is None:
        return None
    total = 0
    for label, count in cluster_gpus.items():
        if catalog.find_gpu(label) is gpu or label == gpu.name:
            total += count
    return total


# ---------------------------------------------------------------------------------------------
# vLLM arguments
# ---------------------------------------------------------------------------------------------

def vllm_args(spec: ModelDeploymentSpec, cand: Candidate, max_model_len: int) -> tuple[str, ...]:
    v = spec.vllm
    args = [
        # positional: `vllm serve` deprecated --model (https://docs.vllm.ai/en/latest/cli/serve.html)
        spec.model.name,
        "--served-model-name", spec.model.served_model_name or spec.model.name,
        "--port", "8000",
        "--tensor-parallel-size", str(cand.tp),
    ]
    if cand.pp > 1:
        args += ["--pipeline-parallel-size", str(cand.pp)]
    args += ["--max-model-len", str(max_model_len), "--max-num-seqs", str(cand.max_num_seqs)]
    if v.kv_cache_memory or v.kv_memory_policy == "Bytes":
        args += ["--kv-cache-memory-bytes", str(cand.est.available_kv_bytes)]
    else:
        args += ["--gpu-memory-utilization", f"{cand.est.gpu_memory_utilization:.2f}"]
    if v.kv_cache_dtype != "Auto":
        args += ["--kv-cache-dtype", KV_CACHE_DTYPE_FLAG[v.kv_cache_dtype]]
    if v.block_size:
        args += ["--block-size", str(v.block_size)]
    if v.max_num_batched_tokens:
        args += ["--max-num-batched-tokens", str(v.max_num_batched_tokens)]
    quant = QUANTIZATION_FLAG.get(spec.model.quantization or "None")
    if quant:
        args += ["--quantization", quant]
    if spec.model.revision:
        args += ["--revision", spec.model.revision]
    return (*args, *v.extra_args)


def _pool(spec: ModelDeploymentSpec, demand: PoolDemand, cand: Candidate) -> PoolPlan:
    used = demand.effective_requests / cand.replicas
    capacity = cand.requests_per_replica / (1 - spec.workload.kv_headroom_percent / 100)
    headroom = 100.0 * (1 - used / capacity) if capacity else 0.0
    notes = []
    if cand.pp > 1 or cand.gpus_per_replica > spec.gpu.per_node:
        notes.append(f"one replica spans {cand.pp} nodes ({cand.gpus_per_replica} GPUs, "
                     f"{spec.gpu.per_node} per node): needs a LeaderWorkerSet")
    return PoolPlan(
        name=demand.name,
        gpu_product=cand.gpu.name,
        gpu_labels=gpu_labels(cand.gpu, spec),
        tensor_parallel_size=cand.tp,
        pipeline_parallel_size=cand.pp,
        replicas=cand.replicas,
        gpus_per_replica=cand.gpus_per_replica,
        max_model_len=demand.max_model_len,
        min_context_tokens=demand.min_context,
        max_num_seqs=cand.max_num_seqs,
        kv_tokens_per_replica=cand.est.kv_tokens,
        kv_bytes_per_gpu=cand.est.available_kv_bytes,
        gpu_memory_utilization=cand.est.gpu_memory_utilization,
        concurrency_per_replica=cand.requests_per_replica,
        target_concurrency=demand.concurrency,
        headroom_percent=headroom,
        vllm_args=vllm_args(spec, cand, demand.max_model_len),
        notes=tuple(notes),
        binding_constraint=cand.binding,
        predicted_ttft_ms=cand.ttft_ms,
        predicted_tpot_ms=cand.tpot_ms,
    )


def arg_int(args: Sequence[str], name: str) -> int | None:
    """`--name N` or `--name=N` in vLLM args, as an int (None: absent or not a number)."""
    for i, arg in enumerate(args):
        text = arg.split("=", 1)[1] if arg.startswith(name + "=") else None
        if arg == name and i + 1 < len(args):
            text = args[i + 1]
        if text is not None:
            try:
                return int(text)
            except ValueError:
                return None
    return None


def price_pool(arch: ModelArch, spec: ModelDeploymentSpec, pool: PoolPlan, gpu: Gpu) -> PoolPlan:
    """The pool with its token prices (`latency.token_costs`), from the same step-time model the
    latency objectives and the simulator use: the chunk vLLM prefills per step, the planned
    `--max-num-seqs` and KV per replica, the pool's length model, the autoscaling KV target."""
    try:
        step, est = step_model_for(arch, gpu, spec, pool.tensor_parallel_size,
                                   pool.pipeline_parallel_size, pool.max_model_len)
    except KvcapError:
        return pool
    prefill, decode = token_costs(
        step,
        chunk_tokens=arg_int(pool.vllm_args, "--max-num-batched-tokens")
        or est.max_num_batched_tokens,
        max_num_seqs=pool.max_num_seqs or est.max_num_seqs,
        kv_tokens_per_replica=max(1, pool.kv_tokens_per_replica),
        length=length_model_for(pool),
        target_kv_utilization_percent=spec.autoscaling.target_kv_utilization_percent,
    )
    return replace(pool, prefill_seconds_per_token=prefill, decode_seconds_per_token=decode)


# ---------------------------------------------------------------------------------------------
# Lower bound and the whole plan
# ---------------------------------------------------------------------------------------------

def lower_bound_gpus(arch: ModelArch, gpu: Gpu, spec: ModelDeploymentSpec,
                     demands: Sequence[PoolDemand]) -> int:
    """GPUs of this product no plan can beat: (all demanded KV + one copy of the weights) over usable
    memory per GPU. KV per token is the model's total (TP 1), so MLA's per-rank replication is not
    counted. 0 when the estimate itself is impossible."""
    args = _serve_args(spec, 1, 1, max(d.max_model_len for d in demands))
    try:
        est = estimate(arch, gpu, replace(args, kv_cache_memory_bytes=None))
    except KvcapError:
        return 0
    usable = est.gpu_total_bytes * est.gpu_memory_utilization - est.activation_bytes \
        - est.non_torch_bytes - est.cudagraph_bytes
    need = est.weights_bytes + sum(d.demand_tokens for d in demands) * est.kv_bytes_per_token
    return max(1, math.ceil(need / usable)) if usable > 0 else 0


def _split_threshold(spec: ModelDeploymentSpec) -> tuple[int | None, str]:
    w = spec.workload
    p = w.context_percentiles
    if w.long_context_policy == "Disabled":
        return None, "long-context pool disabled by `longContextPolicy: Disabled`"
    if w.long_context_threshold_tokens:
        return w.long_context_threshold_tokens, (
            f"requests above `longContextThresholdTokens` ({w.long_context_threshold_tokens}) get "
            f"their own pool")
    if p is not None and (w.max_context_tokens > LONG_TAIL_RATIO * p.p99
                          or w.long_context_policy == "Required"):
        return p.p99, (f"maxContextTokens ({w.max_context_tokens}) is "
                       f"{w.max_context_tokens / p.p99:.1f} x p99 ({p.p99}): requests above p99 go "
                       f"to a long-context pool so their prefills and KV cannot preempt or stall the "
                       f"short ones")
    if w.long_context_policy == "Required":
        raise InvalidArgument("`longContextPolicy: Required` needs `longContextThresholdTokens` or "
                              "`contextPercentiles`")
    if p is not None and p.p99 < w.max_context_tokens:
        return p.p99, ""  # candidate split, taken only if cheaper
    return None, ("one pool: no `contextPercentiles` to tell short requests from long ones"
                  if p is None else "one pool: p99 equals maxContextTokens, there is no long tail")


# Calibrations (`kvcap calibrate`) in force while `plan_deployment` runs; every ServeArgs the planner
# builds carries them and `memory.estimate` applies the one matching model, GPU and version.
_CALIBRATIONS: ContextVar[tuple[Calibration, ...]] = ContextVar("kvcap_calibrations", default=())


def plan_deployment(spec: ModelDeploymentSpec, *, config: dict[str, Any] | None = None,
                    cluster_gpus: Mapping[str, int] | None = None, arch: ModelArch | None = None,
                    calibrations: Sequence[Calibration] = ()) -> CapacityPlan:
    """Plan pools for a ModelDeployment. Raises KvcapError for bad input; returns an infeasible
    CapacityPlan (with the nearest fix) when no plan exists."""
    token = _CALIBRATIONS.set(tuple(calibrations))
    try:
        return _plan_deployment(spec, config=config, cluster_gpus=cluster_gpus, arch=arch)
    finally:
        _CALIBRATIONS.reset(token)


def _plan_deployment(spec: ModelDeploymentSpec, *, config: dict[str, Any] | None,
                     cluster_gpus: Mapping[str, int] | None,
                     arch: ModelArch | None) -> CapacityPlan:
    arch = arch or load_model(spec.model.name, config=config)
    w = spec.workload
    gpus = resolve_gpus(spec, cluster_gpus)
    if not gpus:
        return CapacityPlan(False, "NoGpus", "no allowed GPU product exists on any node; must list "
                            "products in `spec.gpu.products` that the cluster has", arch.name)
    p = w.context_percentiles
    lengths = LengthModel.from_percentiles(p.p50, p.p90, p.p99, w.max_context_tokens) if p else None
    n = w.target_concurrency
    threshold, split_why = _split_threshold(spec)
    prof = profile(spec.vllm.resolved_version())
    version = prof.label
    unserved = unserved_reason(arch.architectures, prof.version)
    if unserved:  # one clear message, not one per GPU and shape
        raise InvalidArgument(f"{arch.name}: {unserved[0]} (`spec.vllm.image: "
                              f"vllm/vllm-openai:v{unserved[1]}`)")

    pct = w.latency_objectives.percentile if w.latency_objectives else None
    single = _demand("default", 0, w.max_context_tokens, n, lengths, pct)
    single_cands, single_why = _search(arch, gpus, spec, single)
    single_cands = _budget(single_cands, spec, cluster_gpus)

    split: tuple[PoolDemand, PoolDemand] | None = None
    split_cands: tuple[list[Candidate], list[Candidate]] | None = None
    split_why_not = ""
    if threshold is not None and threshold < w.max_context_tokens:
        frac = lengths.tail(threshold) if lengths else 0.01
        n_long = max(1, math.ceil(n * frac))
        n_short = max(1, n - n_long) if n > 1 else 1
        short = _demand("default", 0, threshold, n_short, lengths, pct)
        long = _demand("long", threshold, w.max_context_tokens, n_long, lengths, pct)
        sc, _ = _search(arch, gpus, spec, short)
        lc, _ = _search(arch, gpus, spec, long)
        sc, lc = _budget(sc, spec, cluster_gpus), _budget(lc, spec, cluster_gpus)
        if sc and lc:
            split, split_cands = (short, long), (sc, lc)
        else:
            split_why_not = "no GPU holds one long request" if not lc else "no plan for short pool"

    use_split = False
    if split_cands is not None and split is not None:
        split_cost = split_cands[0][0].cost + split_cands[1][0].cost
        single_cost = single_cands[0].cost if single_cands else math.inf
        if split_why:  # a long tail (or a user threshold): split unless impossible
            use_split = True
            decision = split_why + (f"; split costs {_gpus_of(split_cands)} GPUs vs "
                                    f"{single_cands[0].total_gpus} for one pool"
                                    if single_cands else "")
        elif split_cost < single_cost:
            use_split = True
            decision = (f"split at p99 ({threshold} tokens) because it is cheaper: "
                        f"{_gpus_of(split_cands)} GPUs vs {single_cands[0].total_gpus} for one pool")
        else:
            decision = (f"one pool: splitting at p99 ({threshold} tokens) would not be cheaper "
                        f"({_gpus_of(split_cands)} GPUs vs {single_cands[0].total_gpus})")
    else:
        decision = split_why or "one pool"
        if split_why_not and threshold is not None:
            decision = f"one pool: a split at {threshold} tokens is not possible ({split_why_not})"

    if use_split and split is not None and split_cands is not None:
        demands = list(split)
        chosen = [split_cands[0][0], split_cands[1][0]]
        runners = [c for c in split_cands[0][1:4]]
    elif single_cands:
        demands, chosen, runners = [single], [single_cands[0]], single_cands[1:4]
    else:
        return _infeasible(arch, gpus, spec, single, single_why, version)

    pools = tuple(price_pool(arch, spec, _pool(spec, d, c), c.gpu)
                  for d, c in zip(demands, chosen, strict=True))
    total = sum(pl.total_gpus for pl in pools)
    bound = lower_bound_gpus(arch, chosen[0].gpu, spec, demands)
    alts = tuple(Alternative(c.summary(), c.total_gpus, _why_lost(c, chosen[0])) for c in runners)
    if spec.gpu.max_total and total > spec.gpu.max_total:
        return CapacityPlan(
            False, "ExceedsGpuBudget",
            f"the cheapest plan needs {total} GPUs ({msg_of(pools)}), above `gpu.maxTotal` "
            f"{spec.gpu.max_total}; must raise `gpu.maxTotal` to at least {total}, or lower "
            f"`workload.targetConcurrency` or `workload.maxContextTokens`, or allow larger GPUs",
            arch.name, total_gpus=total, lower_bound_gpus=bound, pools=pools, split_decision=decision,
            extra={"vllm_version": version})
    warnings = []
    for pool in pools:
        have = available_of(catalog.find_gpu(pool.gpu_product) or chosen[0].gpu, cluster_gpus)
        if have is not None and have < pool.total_gpus:
            warnings.append(f"pool '{pool.name}' needs {pool.total_gpus} x {pool.gpu_product}, "
                            f"{have} allocatable")
    msg = msg_of(pools)
    return CapacityPlan(
        feasible=True, reason="PlanFits", message=f"{total} GPUs ({msg})", model=arch.name,
        total_gpus=total, lower_bound_gpus=bound, pools=pools, split_decision=decision,
        alternatives=alts, warnings=tuple(warnings),
        extra={"vllm_version": version, "target_concurrency": n,
               "mean_request_tokens": round(single.mean_tokens, 1)},
    )


def msg_of(pools: Sequence[PoolPlan]) -> str:
    return "; ".join(f"{pl.name}: {pl.replicas} x {pl.gpu_product} TP {pl.tensor_parallel_size}"
                     + (f" PP {pl.pipeline_parallel_size}" if pl.pipeline_parallel_size > 1 else "")
                     for pl in pools)


def _gpus_of(cands: tuple[list[Candidate], list[Candidate]]) -> int:
    return cands[0][0].total_gpus + cands[1][0].total_gpus


def _budget(cands: list[Candidate], spec: ModelDeploymentSpec,
            cluster_gpus: Mapping[str, int] | None) -> list[Candidate]:
    """Prefer candidates within `gpu.maxTotal` and the cluster's allocatable GPUs; keep the rest
    (sorted after) so an over-budget plan is still reported with a warning."""
    def ok(c: Candidate) -> bool:
        if spec.gpu.max_total and c.total_gpus > spec.gpu.max_total:
            return False
        have = available_of(c.gpu, cluster_gpus)
        return have is None or have >= c.total_gpus
    return [c for c in cands if ok(c)] + [c for c in cands if not ok(c)]


def _why_lost(c: Candidate, best: Candidate) -> str:
    if c.gpu is best.gpu and c.tp > best.tp:
        return (f"TP {c.tp} needs {c.total_gpus} GPUs vs {best.total_gpus}: the larger TP frees weight "
                f"memory but not enough to need fewer GPUs")
    if c.total_gpus > best.total_gpus:
        return f"needs {c.total_gpus} GPUs vs {best.total_gpus}"
    return f"costs more ({c.cost:.0f} vs {best.cost:.0f} GiB of GPU memory provisioned)"


def _infeasible(arch: ModelArch, gpus: Sequence[Gpu], spec: ModelDeploymentSpec, demand: PoolDemand,
                why: list[str], version: str) -> CapacityPlan:
    """No GPU/TP/PP holds one max-length request: name what would, as `kvcap estimate` does
    (`hints.what_would_fit`: each configuration re-estimated, the cheapest of each kind, cheapest
    first), within the node size, in ModelDeployment terms."""
    per_node = spec.gpu.per_node
    base = _serve_args(spec, 1, 1, demand.max_model_len)
    tps = [t for t in TP_CHOICES if t <= per_node]
    need = 1 / max(1e-6, 1 - spec.workload.kv_headroom_percent / 100)  # as `_evaluate` requires
    fits: list[Fit] = []
    for gpu in gpus:
        fits += what_would_fit(arch, gpu, base, catalog.all_gpus(), limit=6, tp_sizes=tps,
                               pp_sizes=PP_CHOICES, min_concurrency=need)
    hints = [spec_change(f, base) for f in cheapest_per_kind(fits)[:4]]
    detail = why[-1] if why else "no GPU product allowed"
    message = (f"no allowed GPU holds one {demand.max_model_len}-token request of {arch.name} with up "
               f"to {per_node} GPUs per node ({detail})")
    if hints:
        message += "; would fit (re-estimated, cheapest first): " + "; or ".join(hints)
    return CapacityPlan(False, "InsufficientGpuMemory", message, arch.name,
                        extra={"vllm_version": version, "considered": why[:12]})
