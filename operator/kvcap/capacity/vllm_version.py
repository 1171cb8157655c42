"""What changes in vLLM's memory accounting from version to version.

Every rule is keyed on the first release that shipped it and cites the PR that introduced it
(`../shared/notes/vllm-facts.md` has the long form; `docs/capacity-model.md` the table). Where
the release is inferred from the PR's merge date rather than read from release notes, the comment
says so.
The newest version kvcap has rules for is `NEWEST_VERSION`; later versions are accepted and follow
the newest rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from kvcap.api.errors import InvalidArgument

# vLLM's docs list v0.32.0 by late 2026 (shared/notes/vllm-facts.md, "Releases"); the last
# accounting changes kvcap knows of are the CUDA-graph estimate (PR #30515 / #38284; subtracted
# in the v0.20 logs of the validation set) and v0.21.0's default utilization.
NEWEST_VERSION = "0.32.0"
DEFAULT_VERSION = NEWEST_VERSION


@dataclass(frozen=True, slots=True)
class VllmProfile:
    version: tuple[int, int, int]
    engine: str  # "V0" | "V1"
    default_gpu_memory_utilization: float
    hybrid_allocator: bool  # sliding-window / Mamba layers get their own KV groups
    subtracts_cudagraph_memory: bool
    batch_defaults: str  # which `get_batch_defaults` rule applies (see `default_batch_limits`)
    sampler: str  # "none" | "sort" | "triton": what the profile run's dummy sampler batch costs
    profiler_era: str  # key into data/overheads.yaml
    # dummy sampler batch = min(max_num_seqs, max_num_batched_tokens) requests
    sampler_requests_capped_by_tokens: bool
    # hybrid models' "GPU KV cache size" line = int(concurrency x max_model_len)
    hybrid_token_line_from_concurrency: bool = False
    # fp8/NVFP4 MoE on Blackwell (SM100) runs FlashInfer's fused TRT-LLM kernel by default, not the
    # Triton experts whose workspace `memory.fused_moe_workspace_bytes` charges
    blackwell_quantized_moe_flashinfer: bool = False

    @property
    def label(self) -> str:
        return ".".join(str(p) for p in self.version)


def parse_version(text: str | None) -> tuple[int, int, int]:
    raw = (text or DEFAULT_VERSION).strip().lstrip("v")
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", raw)
    if not match:
        raise InvalidArgument(f"--vllm-version '{text}' must look like '0.11.0'")
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


# Each rule: (first version, value). The comment is the citation.
_RULES: dict[str, list[tuple[tuple[int, int, int], object]]] = {
    # V1 became the default engine in v0.8.0 (VLLM_USE_V1=1 by default; V1 user guide, v0.8.x docs);
    # V0 was removed in v0.11.0.
    "engine": [((0, 0, 0), "V0"), ((0, 8, 0), "V1")],
    # PR #38284 (v0.21.0) turned the CUDA-graph memory estimate on by default and raised the
    # default utilization 0.9 -> 0.92 (the log prints the equivalent old value).
    "default_util": [((0, 0, 0), 0.9), ((0, 21, 0), 0.92)],
    # Hybrid KV cache manager (PR #17996): sliding-window and Mamba layers in their own groups.
    # Shipped in v0.9.2 behind a flag, on by default from v0.10.0.
    "hybrid_allocator": [((0, 0, 0), False), ((0, 10, 0), True)],
    # `profile_cudagraph_memory` (PR #30515, opt-in via VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS),
    # default on since PR #38284. vLLM's later log line says "default since v0.21.0", but the
    # v0.20.0 and v0.20.2 launches of the validation set (openshift-psap, H200, upstream and Red Hat
    # builds) already subtract it: 0.92 x total - logged weights - logged KV memory equals the same
    # model's v0.18/0.19 overhead plus the logged CUDA-graph memory (Llama-3.3-70B TP 4: 4.14 +
    # 0.90/0.94 GiB). So the rule starts at 0.20.0; if a 0.20 build without it is found, the
    # estimate is ~1 GiB pessimistic there (the safe side).
    "cudagraph": [((0, 0, 0), False), ((0, 20, 0), True)],
    # engine/arg_utils.py server defaults (OPENAI_API_SERVER usage context):
    #   "v0"       no chunked prefill: max_num_batched_tokens = max(max_model_len, 2048), 256 seqs
    #   "h100"     PR #12369 (merged 2025-01-24, v0.7.1): H100/H200 get 8192 tokens, others 2048;
    #              max_num_seqs 256 everywhere
    #   "mem70"    PR #17073 (merged 2025-04-23, v0.8.5): any GPU with >= 70 GiB gets 1024 seqs /
    #              8192 tokens
    #   "mem70-no-a100"  PR #17885 (merged 2025-05-09, v0.9.0): ... except A100 (256 / 2048)
    "batch_defaults": [((0, 0, 0), "v0"), ((0, 7, 1), "h100"), ((0, 8, 5), "mem70"),
                       ((0, 9, 0), "mem70-no-a100")],
    # The profile run's dummy sampler batch:
    #   V0 sampled in its profile run too, but its logits are small next to the prefill activations
    #   the V0 coefficients already carry ("none": no separate term).
    #   "sort"   PR #13594 (merged 2025-02-22, v0.8.0) put the sampler into V1's profile run with
    #            top-p and top-k set, which takes vLLM's PyTorch sort path (topk_topp_sampler.py):
    #            a full-vocab sort per request (float32 values, int64 indices, softmax, cumsum),
    #            ~37 bytes per (request x vocab) -- PR #32558 measures 1.25 GB for 256 x 131072.
    #            This is why gpt-oss-120b (vocab 201,088) at 1,024 dummy requests loses ~7 GiB
    #            to the profile run (vllm #27508).
    #   "triton" PR #33538 (merged 2026-02-02) replaced the sort with Triton top-k/top-p kernels
    #            that keep a bounded buffer (384 MB for the same 256 x 131072 in PR #32558's table):
    #            ~14 bytes per (request x vocab) with the float32 logits and probabilities. First
    #            release that profiles this way: v0.17.0, read from logs -- llm-d-planner PR #205's
    #            version sweep shows Qwen3-14B's profile peak at 5.64 GiB on v0.15.0 and v0.16.0 and
    #            2.23 GiB on v0.17.0 (benchmarks/data/vllm_launches.yaml).
    "sampler": [((0, 0, 0), "none"), ((0, 8, 0), "sort"), ((0, 17, 0), "triton")],
    # V1 `_dummy_run` builds min(num_tokens, max_num_seqs) dummy requests, so the sampler batch is
    # capped by max_num_batched_tokens (gpu_model_runner.py `_dummy_run`: num_reqs = min(...)).
    "sampler_capped": [((0, 0, 0), False), ((0, 8, 0), True)],
    # Hybrid models' token line: blocks // groups x min block size until vllm #40691 ("The KV cache
    # size log is wrong for Qwen3.5", v0.19) was fixed by deriving it from the concurrency line,
    # int(max_concurrency x max_model_len) (proposed in PRs #38364 / #40694; the code quoted in
    # vllm #51041). The merged release is not pinned down here: 0.24.0 is the first version whose
    # logs in the validation set show it (club-3090 Qwen3.6 entries), so the rule starts there.
    "hybrid_token_line": [((0, 0, 0), False), ((0, 24, 0), True)],
    # fp8 and NVFP4 MoE kernels picked by priority (PR #32414 "[MoE Refactor] Oracle Select
    # FP8+NVFP4 Kernels In Priority", merged 2026-01-20; oracle/fp8.py `_get_priority_backends`):
    # FLASHINFER_TRTLLM comes first and supports block-fp8 / NVFP4 experts on SM100, so Blackwell
    # runs FlashInfer's fused MoE, whose buffers are not the Triton experts' workspace; Hopper keeps
    # Triton/DeepGEMM (PR #34260 made the order architecture-aware; PR #37056, which would have
    # dropped FlashInfer on Blackwell, was closed unmerged). Release inferred from the merge date:
    # #33538, merged 2026-02-02, first shipped in 0.17.0, so 0.16.0. The validation set's B200
    # launches (0.18) agree: DeepSeek-R1/V3.2 fp8/NVFP4 at TP 8 log ~1.4 GiB less overhead than the
    # same models on H200, where the 1.86 GiB Triton workspace is matched.
    "blackwell_quantized_moe_flashinfer": [((0, 0, 0), False), ((0, 16, 0), True)],
    # Which coefficient set of data/overheads.yaml applies.
    "profiler_era": [((0, 0, 0), "v0"), ((0, 8, 0), "v1-sort"), ((0, 17, 0), "v1")],
}


# Architectures vLLM stopped serving: (first release without it, last release with it, why). vLLM
# keeps the same list for its own error message (`_PREVIOUSLY_SUPPORTED_MODELS` in
# vllm/model_executor/models/registry.py).
REMOVED_ARCHITECTURES: dict[str, tuple[tuple[int, int, int], str, str]] = {
    # Llama 3.2 Vision never ran on the V1 engine ("MllamaForConditionalGeneration is not supported
    # by the V1 Engine. Falling back to V0"); PR #24907 "Remove V0 Encoder-Decoder Support" (merged
    # 2025-09-15, first shipped in v0.11.0): "After this PR, Whisper will be the only
    # encoder-decoder model that are supported by vLLM".
    "MllamaForConditionalGeneration": (
        (0, 11, 0), "0.10.2",
        "vllm-project/vllm#24907 removed the V0 encoder-decoder runner it needs"),
}


def unserved_reason(architectures: tuple[str, ...], version: tuple[int, int, int]
                    ) -> tuple[str, str] | None:
    """(why, last release that serves it) when vLLM `version` cannot serve a checkpoint of these
    architectures, else None."""
    for name in architectures:
        removed = REMOVED_ARCHITECTURES.get(name)
        if removed and version >= removed[0]:
            since, last, why = removed
            return (f"vLLM {'.'.join(map(str, version))} cannot serve {name}: {why} "
                    f"(v{'.'.join(map(str, since))}); the last release that serves it is {last}",
                    last)
    return None


def _rule(name: str, v: tuple[int, int, int]) -> object:
    value: object = None
    for since, val in _RULES[name]:
        if v >= since:
            value = val
    return value


def rule_table() -> list[tuple[str, str, str]]:
    """(rule, first version, value) rows, for docs and `kvcap` output."""
    return [(name, ".".join(map(str, since)), str(val))
            for name, rows in _RULES.items() for since, val in rows]


@cache
def profile(text: str | None = None) -> VllmProfile:
    v = parse_version(text)
    return VllmProfile(
        version=v,
        engine=str(_rule("engine", v)),
        default_gpu_memory_utilization=float(_rule("default_util", v)),  # type: ignore[arg-type]
        hybrid_allocator=bool(_rule("hybrid_allocator", v)),
        subtracts_cudagraph_memory=bool(_rule("cudagraph", v)),
        batch_defaults=str(_rule("batch_defaults", v)),
        sampler=str(_rule("sampler", v)),
        profiler_era=str(_rule("profiler_era", v)),
        sampler_requests_capped_by_tokens=bool(_rule("sampler_capped", v)),
        hybrid_token_line_from_concurrency=bool(_rule("hybrid_token_line", v)),
        blackwell_quantized_moe_flashinfer=bool(_rule("blackwell_quantized_moe_flashinfer", v)),
    )
