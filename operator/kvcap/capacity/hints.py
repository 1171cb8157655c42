"""What would fit: concrete `vllm serve` configurations that do fit, found by re-estimating each one
(pure; no I/O).

When a launch does not fit, kvcap tries, on the same memory model: larger tensor parallelism,
pipeline parallelism, a lower `--max-num-seqs` (the profile run's sampler batch), an fp8 KV cache, a
shorter `--max-model-len`, and larger GPU products of the same vendor -- each alone and the useful
combinations -- and names the cheapest of each kind, cheapest first. Cost is the planner's proxy:
GPU memory provisioned (GPUs x GiB per GPU); at equal cost, an option that keeps the requested
context and KV precision comes first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from kvcap.api.errors import KvcapError
from kvcap.capacity.arch import ModelArch
from kvcap.capacity.catalog import GIB, Gpu
from kvcap.capacity.memory import Estimate, ServeArgs, estimate

TP_SIZES = (1, 2, 4, 8)  # one node
PP_SIZES = (1, 2, 3, 4)
# at equal cost, prefer what changes the least for the user
_PREFERENCE = {"tensor-parallel": 0, "pipeline-parallel": 1, "fewer-seqs": 2, "fp8-kv": 3,
               "another-gpu": 4, "shorter-context": 5}


@dataclass(frozen=True, slots=True)
class Fit:
    kind: str  # tensor-parallel | pipeline-parallel | fewer-seqs | fp8-kv | shorter-context |
    #            another-gpu
    gpu: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    kv_cache_dtype: str
    max_model_len: int
    gpus: int
    cost_gib: float  # GPU memory provisioned
    max_concurrency: float  # requests of max_model_len one replica holds
    max_num_seqs: int | None = None  # set when the hint lowers --max-num-seqs

    def flags(self, base: ServeArgs) -> str:
        parts = [f"--gpu {self.gpu}"]
        if self.tensor_parallel_size != 1:
            parts.append(f"--tensor-parallel-size {self.tensor_parallel_size}")
        if self.pipeline_parallel_size != 1:
            parts.append(f"--pipeline-parallel-size {self.pipeline_parallel_size}")
        if self.kv_cache_dtype != base.kv_cache_dtype:
            parts.append(f"--kv-cache-dtype {self.kv_cache_dtype}")
        if self.max_model_len != base.max_model_len:
            parts.append(f"--max-model-len {self.max_model_len}")
        if self.max_num_seqs is not None:
            parts.append(f"--max-num-seqs {self.max_num_seqs}")
        return " ".join(parts)

    def describe(self, base: ServeArgs) -> str:
        """One line: the flags that change from `base` (whose max_model_len is resolved), what it
        costs and what one replica then holds."""
        return (f"{self.flags(base)} ({self.gpus} x {self.gpu}, {self.cost_gib:.0f} GiB "
                f"provisioned, {self.max_concurrency:.2f}x concurrency at "
                f"{self.max_model_len:,} tokens)")


def _try(arch: ModelArch, gpu: Gpu, args: ServeArgs,
         min_concurrency: float = 1.0) -> Estimate | None:
    try:
        est = estimate(arch, gpu, args)
    except KvcapError:
        return None
    return est if est.fits and est.max_concurrency >= min_concurrency else None


def _longest_len(arch: ModelArch, gpu: Gpu, est: Estimate, args: ServeArgs,
                 min_concurrency: float) -> int:
    """The longest --max-model-len at which the same KV memory holds `min_concurrency` requests
    (vLLM's own estimate when that is 1)."""
    if min_concurrency <= 1.0:
        return est.estimated_max_model_len
    if est.estimated_max_model_len <= 0:
        return 0
    given = replace(args, kv_cache_memory_bytes=max(0, est.available_kv_bytes))
    # holding `min_concurrency` requests never allows more than holding one
    lo, hi, best = 1, min(args.max_model_len or arch.max_position_embeddings,
                          est.estimated_max_model_len), 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if estimate(arch, gpu, replace(given, max_model_len=mid)).max_concurrency \
                >= min_concurrency:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def _fit(kind: str, gpu: Gpu, args: ServeArgs, est: Estimate) -> Fit:
    n = args.tensor_parallel_size * args.pipeline_parallel_size
    return Fit(kind, gpu.name, args.tensor_parallel_size, args.pipeline_parallel_size,
               args.kv_cache_dtype, est.max_model_len, n, n * gpu.memory_bytes / GIB,
               est.max_concurrency, args.max_num_seqs if kind == "fewer-seqs" else None)


def _fewer_seqs(arch: ModelArch, gpu: Gpu, args: ServeArgs,
                min_concurrency: float = 1.0) -> tuple[ServeArgs, Estimate] | None:
    """The largest --max-num-seqs below the current one that fits: V1's profile run samples that
    many dummy requests over the whole vocabulary (see vllm_version, "sampler"), so fewer sequences
    free KV memory without more GPUs. None when even one sequence does not fit."""
    try:
        est = estimate(arch, gpu, args)
    except KvcapError:
        return None
    if est.engine != "V1" or est.max_num_seqs <= 1:
        return None
    lo, hi, best = 1, est.max_num_seqs - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        trial = replace(args, max_num_seqs=mid)
        got = _try(arch, gpu, trial, min_concurrency)
        if got is not None:
            best, lo = (trial, got), mid + 1
        else:
            hi = mid - 1
    return best


def what_would_fit(arch: ModelArch, gpu: Gpu, args: ServeArgs, gpus: Sequence[Gpu] = (),
                   limit: int = 4, tp_sizes: Sequence[int] = TP_SIZES,
                   pp_sizes: Sequence[int] = PP_SIZES, min_concurrency: float = 1.0) -> list[Fit]:
    """Configurations that fit, cheapest first, at most one per kind (the cheapest of its kind).
    `tp_sizes`/`pp_sizes` bound the shapes tried and `min_concurrency` is how many max-length
    requests a replica must hold (the planner passes its node size and KV headroom)."""
    base_len = args.max_model_len or arch.max_position_embeddings
    args = replace(args, max_model_len=base_len)
    tps = [t for t in tp_sizes if arch.num_attention_heads % t == 0]
    fp8 = args.kv_cache_dtype == "auto" and arch.mamba is None
    best: dict[str, Fit] = {}

    def offer(fit: Fit) -> None:
        cur = best.get(fit.kind)
        key = (fit.cost_gib, -fit.max_concurrency)
        if cur is None or key < (cur.cost_gib, -cur.max_concurrency):
            best[fit.kind] = fit

    shape_list = sorted(((t, p) for p in pp_sizes for t in tps), key=lambda s: (s[0] * s[1], s[1]))

    # Same GPU: more GPUs per replica (TP first, then PP), then fp8 KV, then a shorter context.
    for tp, pp in shape_list:
        if (tp, pp) == (args.tensor_parallel_size, args.pipeline_parallel_size):
            continue
        if tp * pp <= args.tensor_parallel_size * args.pipeline_parallel_size:
            continue
        a = replace(args, tensor_parallel_size=tp, pipeline_parallel_size=pp)
        est = _try(arch, gpu, a, min_concurrency)
        if est is not None:
            offer(_fit("pipeline-parallel" if pp > 1 else "tensor-parallel", gpu, a, est))
    if fp8:
        for tp, pp in shape_list:
            if tp * pp < args.tensor_parallel_size * args.pipeline_parallel_size:
                continue
            a = replace(args, tensor_parallel_size=tp, pipeline_parallel_size=pp,
                        kv_cache_dtype="fp8")
            est = _try(arch, gpu, a, min_concurrency)
            if est is not None:
                offer(_fit("fp8-kv", gpu, a, est))
                break
    fewer = _fewer_seqs(arch, gpu, args, min_concurrency)
    if fewer is not None:
        offer(_fit("fewer-seqs", gpu, *fewer))
    for tp, pp in shape_list:
        if tp * pp < args.tensor_parallel_size * args.pipeline_parallel_size:
            continue
        a = replace(args, tensor_parallel_size=tp, pipeline_parallel_size=pp)
        try:
            est = estimate(arch, gpu, a)
        except KvcapError:
            continue
        if est.available_kv_bytes <= 0 or est.num_blocks <= 0:
            continue  # the weights and overheads alone do not fit: no context length helps
        longest = _longest_len(arch, gpu, est, a, min_concurrency)
        if 0 < longest < base_len:
            shorter = replace(a, max_model_len=longest)
            est2 = _try(arch, gpu, shorter, min_concurrency)
            if est2 is not None:
                offer(_fit("shorter-context", gpu, shorter, est2))
                break
    # Another GPU product, same context and KV precision: its cheapest shape.
    for other in gpus:
        if other.name == gpu.name or other.vendor != gpu.vendor \
                or other.memory_bytes <= gpu.memory_bytes:
            continue  # a larger GPU of the same vendor
        for tp, pp in shape_list:
            a = replace(args, tensor_parallel_size=tp, pipeline_parallel_size=pp)
            est = _try(arch, other, a, min_concurrency)
            if est is not None:
                offer(_fit("another-gpu", other, a, est))
                break
    full = [f for f in best.values() if f.kind in ("tensor-parallel", "pipeline-parallel")]
    if "fp8-kv" in best and any(f.cost_gib <= best["fp8-kv"].cost_gib for f in full):
        del best["fp8-kv"]  # fp8 KV only helps when it needs fewer GPUs than full precision
    return cheapest_per_kind(list(best.values()))[:limit]


def cheapest_per_kind(fits: Sequence[Fit]) -> list[Fit]:
    """The cheapest fit of each kind, cheapest first (at equal cost, the smaller change first)."""
    out: dict[str, Fit] = {}
    for fit in sorted(fits, key=_rank):
        out.setdefault(fit.kind, fit)
    return sorted(out.values(), key=_rank)


def _rank(fit: Fit) -> tuple[float, int, float]:
    return fit.cost_gib, _PREFERENCE[fit.kind], -fit.max_concurrency


def spec_change(fit: Fit, base: ServeArgs) -> str:
    """The fit in ModelDeployment terms, for the planner's infeasible message (`kvcap plan`, the
    operator's status): the spec fields to change and the replica shape it then plans."""
    changes = []
    if fit.kind == "another-gpu":
        changes.append(f"`gpu.products: [{fit.gpu}]`")
    if fit.kv_cache_dtype != base.kv_cache_dtype:
        changes.append("`vllm.kvCacheDtype: FP8`")
    if base.max_model_len and fit.max_model_len < base.max_model_len:
        changes.append(f"`workload.maxContextTokens: {fit.max_model_len}`")
    if fit.max_num_seqs is not None:
        changes.append(f"`vllm.maxNumSeqs: {fit.max_num_seqs}`")
    shape = f"TP {fit.tensor_parallel_size}" + (
        f" PP {fit.pipeline_parallel_size}" if fit.pipeline_parallel_size > 1 else "")
    if not changes:  # a shape the planner's own search does not try (it pipelines full-node TP)
        changes.append(f"TP {fit.tensor_parallel_size} x PP {fit.pipeline_parallel_size}")
    return (f"{' + '.join(changes)} -> {fit.gpus} x {fit.gpu} per replica "
            f"({shape}, {fit.cost_gib:.0f} GiB provisioned, {fit.max_concurrency:.2f}x concurrency "
            f"at {fit.max_model_len:,} tokens)")
