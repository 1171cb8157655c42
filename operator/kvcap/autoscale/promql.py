"""The autoscaler's PromQL, built purely (no I/O): one query per signal, `... by (namespace, pod)`.

Used by the Prometheus shell (`kvcap.autoscale.prometheus`, which sends them once per tick) and by
`kvcap export keda` (`kvcap.autoscale.keda`, which encodes the same signals in a ScaledObject).
Every selector reads both naming generations of vLLM's metrics and both spellings of the prefix
(`vllm:` and the escaped `vllm_`, prometheus/client_python #1177); docs/autoscaling.md lists the
series and the vLLM PRs that named them.
"""

from __future__ import annotations

RATE_WINDOW = "2m"  # >= 4 scrape intervals of 15-30 s, so rate() always has two samples
# The token rates are peaks, not means: the highest per-scrape-interval rate (`irate`) of the
# last PEAK_RANGE, sampled every PEAK_STEP (a subquery). Chat and code traffic bursts within
# seconds, far shorter than a replica's start-up, so a floor on the mean rate under-provisions
# every burst (docs/benchmarks.md); the busiest scrape interval of the last 10 minutes is what
# the replicas running now must absorb again before new ones could be Ready.
PEAK_RANGE = "10m"
PEAK_STEP = "15s"  # a common scrape interval; with slower scrapes values repeat, no harm


def either(*names: str, selector: str = "") -> str:
    """`a{sel} or vllm_a{sel} or b{sel} or ...`: each vLLM name in both prefix spellings."""
    terms: list[str] = []
    for name in names:
        bare = name.removeprefix("vllm:")
        terms += [f"vllm:{bare}{selector}", f"vllm_{bare}{selector}"]
    return " or ".join(terms)


def either_rate(*names: str, window: str = RATE_WINDOW) -> str:
    terms: list[str] = []
    for name in names:
        bare = name.removeprefix("vllm:")
        terms += [f"rate(vllm:{bare}[{window}])", f"rate(vllm_{bare}[{window}])"]
    return " or ".join(terms)


_USAGE = either("kv_cache_usage_perc", "gpu_cache_usage_perc")
_CAPACITY_WAITING = either("num_requests_waiting_by_reason", selector='{reason="capacity"}')
CACHE_LABELS = ("engine", "num_gpu_blocks", "block_size", "kv_cache_size_tokens")


def either_peak_rate(
    *names: str, window: str = RATE_WINDOW, peak_range: str = PEAK_RANGE, step: str = PEAK_STEP
) -> str:
    """`max_over_time(irate(a[w])[range:step]) or ...`: each name's highest per-scrape-interval
    rate over the last `peak_range`, in both prefix spellings. `irate` takes the last two samples
    inside `window`, so `window` only has to hold two scrapes (RATE_WINDOW holds four)."""
    terms: list[str] = []
    for name in names:
        bare = name.removeprefix("vllm:")
        for prefix in ("vllm:", "vllm_"):
            terms.append(f"max_over_time(irate({prefix}{bare}[{window}])[{peak_range}:{step}])")
    return " or ".join(terms)


def build_queries(rate_window: str = RATE_WINDOW) -> dict[str, str]:
    """signal -> PromQL. One query each per tick, whatever the number of pods and objects."""
    hits = either_rate("prefix_cache_hits_total", "gpu_prefix_cache_hits_total", window=rate_window)
    queries = either_rate(
        "prefix_cache_queries_total", "gpu_prefix_cache_queries_total", window=rate_window
    )
    preemptions = either_rate("num_preemptions_total", window=rate_window)
    prompt = either_peak_rate("prompt_tokens_total", window=rate_window)
    generation = either_peak_rate("generation_tokens_total", window=rate_window)
    return {
        "kv_usage": f"avg by (namespace, pod) ({_USAGE})",
        "sample_time": f"max by (namespace, pod) (timestamp({_USAGE}))",
        "running": f"sum by (namespace, pod) ({either('num_requests_running')})",
        "waiting": f"sum by (namespace, pod) ({either('num_requests_waiting')})",
        "waiting_capacity": f"sum by (namespace, pod) ({_CAPACITY_WAITING})",
        "preemption_rate": f"sum by (namespace, pod) ({preemptions})",
        "prefix_cache_hit_rate": (
            f"sum by (namespace, pod) ({hits}) / sum by (namespace, pod) ({queries})"
        ),
        # Peak tokens per second a pod prefilled and generated (the compute floor, rule 4).
        "peak_prompt_token_rate": f"sum by (namespace, pod) ({prompt})",
        "peak_generation_token_rate": f"sum by (namespace, pod) ({generation})",
        "cache_config": (
            f"max by (namespace, pod, {', '.join(CACHE_LABELS)}) ({either('cache_config_info')})"
        ),
    }


__all__ = [
    "CACHE_LABELS",
    "PEAK_RANGE",
    "PEAK_STEP",
    "RATE_WINDOW",
    "build_queries",
    "either",
    "either_peak_rate",
    "either_rate",
]
