"""The `ModelDeployment` API (kvcap.io/v1alpha1) as pydantic models.

snake_case in Python, camelCase on the wire. These models mirror
`crds/modeldeployments.kvcap.io.yaml`: `tests/unit/test_crd_matches_models.py` checks that the two
agree on every field's type, required-ness, enum, bounds, length, pattern, default and description,
and the CRD's CEL rules repeat the cross-field checks below with the same "must ..." messages.
Integers, not floats, in spec (Kubernetes API conventions); enums are CamelCase strings. Integers
and booleans are strict (no "8" -> 8 coercion) because the apiserver rejects strings there too.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kvcap import GROUP, KIND, VERSION

API_VERSION = f"{GROUP}/{VERSION}"

# Longest ModelDeployment name. Children are named `<name>-<pool>`, the longest being
# `<name>-default`; a multi-node pool is a LeaderWorkerSet whose worker StatefulSets are
# `<lws>-<group index>` (index below 10000, the bound of `autoscaling.maxReplicas`), and a
# StatefulSet stamps `controller-revision-hash: <sts>-<hash of up to 10 characters>` on its pods, a
# label value of at most 63 characters:
#   39 (name) + 8 ('-default') + 5 ('-9999') + 11 ('-' + hash) = 63.
MAX_NAME_LENGTH = 39
# Services need RFC 1035 labels (first character a letter), and children reuse the name.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

# Kubernetes resource.Quantity, the subset kvcap accepts for memory ("20Gi", "512Mi", "1e9", "1G").
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(e[0-9]+|[KMGTPE]i?|k)?$"
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
_QUANTITY_FACTORS = {
    "": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
# DNS-1123 subdomain (ConfigMap and Secret names), ConfigMap/Secret keys, qualified names
# (extended resources such as 'nvidia.com/gpu'), vLLM versions.
_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_CONFIG_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
_RESOURCE_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
_VERSION_PATTERN = r"^[0-9]+\.[0-9]+(\.[0-9]+)?$"
_URL_PATTERN = r"^https?://[^\s]+$"

MAX_TOKENS = 16_777_216  # 16Mi tokens: above any context window in sight


def parse_quantity(value: str | int) -> int:
    """Parse a Kubernetes memory quantity ('80Gi', '16G', '1e9', 1024) into bytes."""
    if isinstance(value, int):
        return value
    text = value.strip()
    if not _QUANTITY_RE.match(text):
        raise ValueError(
            f"'{value}' is not a memory quantity; must look like '20Gi', '512Mi' or '1e9'"
        )
    if "e" in text:
        mantissa, exponent = text.split("e")
        return int(float(mantissa) * 10 ** int(exponent))
    number = re.match(r"^[0-9.]+", text)
    assert number is not None
    suffix = text[number.end():]
    return int(float(number.group()) * _QUANTITY_FACTORS[suffix])


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


Quantization = Literal["None", "FP8", "AWQ", "GPTQ", "MXFP4", "NVFP4", "BitsAndBytes"]
KvCacheDtype = Literal["Auto", "FP8", "FP8E4M3", "FP8E5M2"]
KvMemoryPolicy = Literal["Utilization", "Bytes"]
LongContextPolicy = Literal["Auto", "Disabled", "Required"]
AutoscalingPolicy = Literal["Disabled", "KVHeadroom", "External"]

# CamelCase API enums -> the strings `vllm serve` takes.
QUANTIZATION_FLAG: dict[str, str | None] = {
    "None": None, "FP8": "fp8", "AWQ": "awq", "GPTQ": "gptq", "MXFP4": "mxfp4",
    "NVFP4": "modelopt_fp4", "BitsAndBytes": "bitsandbytes",
}
KV_CACHE_DTYPE_FLAG: dict[str, str] = {
    "Auto": "auto", "FP8": "fp8", "FP8E4M3": "fp8_e4m3", "FP8E5M2": "fp8_e5m2",
}


class LocalObjectKeyRef(ApiModel):
    """A key in a ConfigMap or Secret in the ModelDeployment's namespace."""

    name: Annotated[str, Field(
        min_length=1, max_length=253, pattern=_SUBDOMAIN_PATTERN, description="Name of the object.",
    )]
    key: Annotated[str, Field(
        min_length=1, max_length=253, pattern=_CONFIG_KEY_PATTERN,
        description="Key inside the object.",
    )]


class ModelSpec(ApiModel):
    """Which model to serve and where its `config.json` comes from."""

    name: Annotated[str, Field(
        min_length=1, max_length=256,
        description="Hugging Face model id (e.g. 'meta-llama/Llama-3.1-8B-Instruct') or a kvcap "
        "catalog alias. vLLM loads the weights by this name. May be changed: kvcap re-plans and "
        "rolls the pools over to the new model.",
    )]

    @field_validator("name", "revision")
    @classmethod
    def _no_dot_dot(cls, value: str | None) -> str | None:
        # `..` would walk out of the Hub URL (`{repo}/resolve/{revision}`) or of a local model
        # directory; no Hub repo id or revision has such a segment.
        if value is not None and ".." in value.split("/"):
            raise ValueError("must not contain '..' path segments")
        return value
    revision: Annotated[str | None, Field(
        default=None, max_length=128, description="Hugging Face revision (branch, tag or commit).",
    )] = None
    served_model_name: Annotated[str | None, Field(
        default=None, max_length=256,
        description="Name clients use in the OpenAI API (`--served-model-name`); defaults to "
        "`name`.",
    )] = None
    config_map_ref: Annotated[LocalObjectKeyRef | None, Field(
        default=None,
        description="ConfigMap key holding the model's Hugging Face `config.json`. Takes "
        "precedence over the built-in catalog and the Hub.",
    )] = None
    hf_token_secret_ref: Annotated[LocalObjectKeyRef | None, Field(
        default=None,
        description="Secret key holding a Hugging Face token, for gated models: used to fetch "
        "`config.json` and passed to vLLM as HF_TOKEN.",
    )] = None
    quantization: Annotated[Quantization | None, Field(
        default=None,
        description="Weight quantization (`--quantization`). Unset: as the checkpoint's "
        "`quantization_config` says; 'None': unquantized.",
    )] = None


class ContextPercentiles(ApiModel):
    """Percentiles of prompt+output tokens per request (e.g. from `vllm:request_prompt_tokens`).

    Must satisfy p50 <= p90 <= p99.
    """

    p50: Annotated[int, Field(
        strict=True, ge=1, le=MAX_TOKENS, description="Median tokens per request.",
    )]
    p90: Annotated[int, Field(
        strict=True, ge=1, le=MAX_TOKENS, description="90th percentile tokens per request.",
    )]
    p99: Annotated[int, Field(
        strict=True, ge=1, le=MAX_TOKENS, description="99th percentile tokens per request.",
    )]

    @model_validator(mode="after")
    def _ordered(self) -> ContextPercentiles:
        if not self.p50 <= self.p90 <= self.p99:
            raise ValueError("contextPercentiles must satisfy p50 <= p90 <= p99")
        return self


class LatencyObjectives(ApiModel):
    """Latency each pool is sized for, besides its KV budget (same step-time model as
    `kvcap simulate`). Must set `ttftMilliseconds` or `tpotMilliseconds`.
    """

    ttft_milliseconds: Annotated[int | None, Field(
        strict=True, default=None, ge=1, le=3_600_000,
        description="Time to first token, in milliseconds, for a request of the pool's "
        "`percentile` length arriving while the replica is at its planned concurrency.",
    )] = None
    tpot_milliseconds: Annotated[int | None, Field(
        strict=True, default=None, ge=1, le=60_000,
        description="Time per output token, in milliseconds, of a replica decoding its planned "
        "concurrency of requests of the pool's `percentile` length.",
    )] = None
    percentile: Annotated[int, Field(
        strict=True, default=99, ge=50, le=99,
        description="Request-length percentile the objectives hold for (from "
        "`contextPercentiles`; without them every request is `maxContextTokens` long).",
    )] = 99

    @model_validator(mode="after")
    def _something_set(self) -> LatencyObjectives:
        if self.ttft_milliseconds is None and self.tpot_milliseconds is None:
            raise ValueError("latencyObjectives must set ttftMilliseconds or tpotMilliseconds")
        return self


class WorkloadSpec(ApiModel):
    """The traffic the deployment must carry."""

    max_context_tokens: Annotated[int, Field(
        strict=True, ge=1, le=MAX_TOKENS,
        description="Longest request (prompt + output tokens) that must be served; becomes "
        "`--max-model-len` of the pool that serves the longest requests.",
    )]
    target_concurrency: Annotated[int, Field(
        strict=True, ge=1, le=1_000_000,
        description="Requests that must run at once, across all replicas, without queueing for "
        "KV cache.",
    )]
    context_percentiles: Annotated[ContextPercentiles | None, Field(
        default=None,
        description="Request-length distribution. When set, KV is sized for the distribution "
        "instead of every request at `maxContextTokens`, and a long tail may get its own pool. "
        "`p99` must be <= `maxContextTokens`.",
    )] = None
    long_context_threshold_tokens: Annotated[int | None, Field(
        strict=True, default=None, ge=1, le=MAX_TOKENS,
        description="Requests longer than this go to a separate long-context pool; must be < "
        "`maxContextTokens`. Default: decided by the planner from `contextPercentiles` (split "
        "when `maxContextTokens` > 4 x p99).",
    )] = None
    long_context_policy: Annotated[LongContextPolicy, Field(
        default="Auto",
        description="'Auto' splits off a long-context pool when the tail is long or a split is "
        "cheaper; 'Disabled' always plans one pool; 'Required' always splits (and needs "
        "`longContextThresholdTokens` or `contextPercentiles`).",
    )] = "Auto"
    kv_headroom_percent: Annotated[int, Field(
        strict=True, default=10, ge=0, le=90,
        description="Share of each replica's KV cache kept free at target concurrency.",
    )] = 10
    latency_objectives: Annotated[LatencyObjectives | None, Field(
        default=None,
        description="Optional TTFT/TPOT targets: each pool gets as many replicas as both the KV "
        "budget and these need; the plan says which constraint binds and the predicted latency.",
    )] = None

    @model_validator(mode="after")
    def _consistent(self) -> WorkloadSpec:
        p = self.context_percentiles
        if p is not None and p.p99 > self.max_context_tokens:
            raise ValueError("contextPercentiles.p99 must be <= maxContextTokens")
        t = self.long_context_threshold_tokens
        if t is not None and t >= self.max_context_tokens:
            raise ValueError("longContextThresholdTokens must be < maxContextTokens")
        if self.long_context_policy == "Required" and t is None and p is None:
            raise ValueError(
                "longContextPolicy 'Required' must come with longContextThresholdTokens or "
                "contextPercentiles"
            )
        return self


class GpuSpec(ApiModel):
    """Which GPUs the planner may use."""

    products: Annotated[list[Annotated[str, Field(
        min_length=1, max_length=128, description="A GPU product name.",
    )]], Field(
        default_factory=list, max_length=32,
        description="Allowed GPU products: kvcap catalog names ('H100-80GB', 'L40S') or "
        "`nvidia.com/gpu.product` label values ('NVIDIA-H100-80GB-HBM3'). Empty: every product "
        "in the catalog (offline) or on the cluster's nodes (operator).",
    )]
    per_node: Annotated[int, Field(
        strict=True, default=8, ge=1, le=64,
        description="GPUs per node; a replica with more GPUs than this spans nodes "
        "(LeaderWorkerSet).",
    )] = 8
    max_total: Annotated[int | None, Field(
        strict=True, default=None, ge=1, le=100_000,
        description="Upper bound on GPUs across all pools.",
    )] = None
    memory: Annotated[str | None, Field(
        default=None, max_length=32, pattern=QUANTITY_PATTERN,
        description="Memory of one GPU as the CUDA runtime reports it ('80Gi'), for a product the "
        "catalog lacks.",
    )] = None
    resource_name: Annotated[str, Field(
        default="nvidia.com/gpu", min_length=1, max_length=253, pattern=_RESOURCE_NAME_PATTERN,
        description="Extended resource requested per GPU ('nvidia.com/gpu', 'amd.com/gpu').",
    )] = "nvidia.com/gpu"


class EnvVar(ApiModel):
    """An environment variable for the vLLM container (a literal value; secrets go elsewhere)."""

    name: Annotated[str, Field(
        min_length=1, max_length=256, pattern=_ENV_NAME_PATTERN, description="Variable name.",
    )]
    value: Annotated[str, Field(
        default="", max_length=32_768, description="Variable value.",
    )] = ""


class ModelCacheSpec(ApiModel):
    """Where vLLM keeps the downloaded weights (`HF_HOME`)."""

    claim_name: Annotated[str, Field(
        min_length=1, max_length=253, pattern=_SUBDOMAIN_PATTERN,
        description="PersistentVolumeClaim in the ModelDeployment's namespace mounted as the "
        "Hugging Face cache, so new pods reuse downloaded weights. Every replica mounts it: it "
        "must be ReadWriteMany (or ReadOnlyMany, pre-filled).",
    )]


class VllmSpec(ApiModel):
    """How vLLM runs."""

    image: Annotated[str, Field(
        default="vllm/vllm-openai:v0.32.0", min_length=1, max_length=512,
        description="vLLM OpenAI server image.",
    )] = "vllm/vllm-openai:v0.32.0"
    version: Annotated[str | None, Field(
        default=None, max_length=32, pattern=_VERSION_PATTERN,
        description="vLLM version the image runs (memory accounting differs by version). "
        "Default: parsed from the image tag.",
    )] = None
    kv_cache_dtype: Annotated[KvCacheDtype, Field(
        default="Auto",
        description="KV cache dtype (`--kv-cache-dtype`); 'FP8' about doubles KV tokens.",
    )] = "Auto"
    kv_memory_policy: Annotated[KvMemoryPolicy, Field(
        default="Utilization",
        description="'Utilization' passes `--gpu-memory-utilization`; 'Bytes' passes the planned "
        "`--kv-cache-memory-bytes`, a deterministic KV budget that skips vLLM's profiling.",
    )] = "Utilization"
    gpu_memory_utilization_percent: Annotated[int | None, Field(
        strict=True, default=None, ge=1, le=100,
        description="`--gpu-memory-utilization` x 100. Default: vLLM's default for `version`.",
    )] = None
    kv_cache_memory: Annotated[str | None, Field(
        default=None, max_length=32, pattern=QUANTITY_PATTERN,
        description="Fixed KV cache size per GPU (`--kv-cache-memory-bytes`), e.g. '40Gi'.",
    )] = None
    block_size: Annotated[int | None, Field(
        strict=True, default=None, ge=1, le=4096,
        description="`--block-size` (tokens per KV block). Default 16.",
    )] = None
    max_num_batched_tokens: Annotated[int | None, Field(
        strict=True, default=None, ge=1, le=MAX_TOKENS,
        description="`--max-num-batched-tokens`.",
    )] = None
    max_num_seqs: Annotated[int | None, Field(
        strict=True, default=None, ge=1, le=65_536,
        description="Cap on `--max-num-seqs`. Default: planned from the KV budget.",
    )] = None
    extra_args: Annotated[list[Annotated[str, Field(
        max_length=2048, description="One argument ('--enable-chunked-prefill', '--seed=0').",
    )]], Field(
        default_factory=list, max_length=128,
        description="Extra `vllm serve` arguments, appended verbatim. Flags kvcap plans "
        "(`--tensor-parallel-size`, `--max-model-len`, ...) must not appear: use the matching "
        "spec field.",
    )]
    env: Annotated[list[EnvVar], Field(
        default_factory=list, max_length=128, description="Extra environment variables.",
    )]
    shm_size: Annotated[str, Field(
        default="16Gi", max_length=32, pattern=QUANTITY_PATTERN,
        description="Size of the /dev/shm memory volume (NCCL needs it with tensor parallelism).",
    )] = "16Gi"
    model_cache: Annotated[ModelCacheSpec | None, Field(
        default=None,
        description="A volume for downloaded weights that outlives pods. Unset: an emptyDir sized "
        "from the weights (kept across container restarts, not across pods).",
    )] = None
    run_as_user: Annotated[int | None, Field(
        strict=True, default=None, ge=1, le=2147483647,
        description="Run vLLM as this non-root UID (and GID, and fsGroup for the model cache): the "
        "pods then meet the `restricted` Pod Security level, with HOME on a writable emptyDir "
        "for vLLM's compile caches. Unset: the image's user (root in vllm/vllm-openai), which "
        "`baseline` admits and `restricted` rejects.",
    )] = None

    @field_validator("extra_args")
    @classmethod
    def _no_planned_flags(cls, args: list[str]) -> list[str]:
        for arg in args:
            flag = planned_flag_of(arg)
            if flag is not None:
                raise ValueError(
                    f"extraArgs must not set '{flag}': kvcap plans it; use the matching spec field"
                )
            full = abbreviated_planned_flag(arg)
            if full is not None:
                raise ValueError(
                    f"extraArgs must not abbreviate planned flags: vLLM's argument parser reads "
                    f"'{arg.split('=', 1)[0]}' as '{full}', which kvcap plans; use the matching "
                    f"spec field"
                )
        return args

    def resolved_version(self) -> str | None:
        """The vLLM version: `version`, else the image tag when it looks like one ('v0.11.0')."""
        if self.version:
            return self.version
        tag = self.image.rsplit(":", 1)[-1] if ":" in self.image.rsplit("/", 1)[-1] else ""
        match = re.match(r"^v?([0-9]+\.[0-9]+(\.[0-9]+)?)", tag)
        return match.group(1) if match else None


# Flags kvcap computes, or that would silently break the plan (data parallelism multiplies the
# GPUs of a replica, a block-count override replaces the KV budget, `--model` replaces the model);
# users may not pass them through extraArgs. The CRD repeats this list in a CEL rule on
# `spec.vllm.extraArgs[*]` (tests/unit/test_crd_matches_models.py keeps the two equal).
PLANNED_FLAGS = frozenset({
    "--tensor-parallel-size", "-tp", "--pipeline-parallel-size", "-pp", "--max-model-len",
    "--max-num-seqs", "--gpu-memory-utilization", "--kv-cache-memory-bytes", "--kv-cache-dtype",
    "--served-model-name", "--port", "--block-size", "--quantization", "--max-num-batched-tokens",
    "--data-parallel-size", "-dp", "--num-gpu-blocks-override", "--model",
})


def planned_flag_of(arg: str) -> str | None:
    """The planned flag that `arg` sets ('--max-model-len=4096' -> '--max-model-len'), else None.

    vLLM's parser reads `--max_model_len` as `--max-model-len`, so underscores count as dashes.
    """
    flag = arg.split("=", 1)[0].replace("_", "-")
    return flag if flag in PLANNED_FLAGS else None


def abbreviated_planned_flag(arg: str) -> str | None:
    """The planned flag that `arg` abbreviates ('--gpu-memory-util=0.99' ->
    '--gpu-memory-utilization'), else None.

    argparse accepts any unambiguous prefix of a long option (`allow_abbrev`, on by default:
    https://docs.python.org/3/library/argparse.html#allow-abbrev), and vLLM's parser is an argparse
    subclass, so a prefix of a planned flag would override the plan (or fail as ambiguous). Prefixes
    shorter than three characters after `--` are not counted (they are ambiguous in vLLM anyway).
    """
    flag = arg.split("=", 1)[0].replace("_", "-")
    if not flag.startswith("--") or len(flag) < 5 or flag in PLANNED_FLAGS:
        return None
    for planned in sorted(PLANNED_FLAGS):
        if planned.startswith("--") and planned.startswith(flag):
            return planned
    return None


class AutoscalingSpec(ApiModel):
    """Per-pool replica scaling on KV-cache headroom read from Prometheus."""

    policy: Annotated[AutoscalingPolicy, Field(
        default="Disabled",
        description="'Disabled' keeps the planned replicas; 'KVHeadroom' lets kvcap scale each "
        "pool on KV headroom (tokens, queue, preemptions) read from Prometheus; 'External' leaves "
        "`replicas` out of what kvcap applies, so an HPA, KEDA or `kubectl scale` owns it.",
    )] = "Disabled"
    min_replicas: Annotated[int, Field(
        strict=True, default=1, ge=0, le=10_000,
        description="Fewest replicas per pool; must be <= `maxReplicas`.",
    )] = 1
    max_replicas: Annotated[int, Field(
        strict=True, default=8, ge=1, le=10_000, description="Most replicas per pool.",
    )] = 8
    target_kv_utilization_percent: Annotated[int, Field(
        strict=True, default=80, ge=1, le=100,
        description="KV demand (tokens in use, queued and still to be generated) each pool is "
        "scaled to hold, in percent of its KV capacity.",
    )] = 80
    scale_down_delay_seconds: Annotated[int, Field(
        strict=True, default=300, ge=0, le=86_400,
        description="How long demand must stay low before a scale-down (one replica at a time).",
    )] = 300
    prometheus_url: Annotated[str | None, Field(
        default=None, max_length=2048, pattern=_URL_PATTERN,
        description="Prometheus base URL ('http://prometheus-operated.monitoring.svc:9090'); "
        "default from the operator's settings, which also limit the URLs allowed here "
        "(cluster-local Services and loopback unless configured otherwise).",
    )] = None

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must be <= autoscaling.maxReplicas")
        return self


class ModelDeploymentSpec(ApiModel):
    """Desired state of a ModelDeployment."""

    model: Annotated[ModelSpec, Field(description="The model to serve.")]
    workload: Annotated[WorkloadSpec, Field(description="The traffic to size for.")]
    gpu: Annotated[GpuSpec, Field(default_factory=GpuSpec, description="GPU choices.")]
    vllm: Annotated[VllmSpec, Field(default_factory=VllmSpec, description="vLLM settings.")]
    autoscaling: Annotated[AutoscalingSpec, Field(
        default_factory=AutoscalingSpec, description="Replica autoscaling.",
    )]
    paused: Annotated[bool, Field(
        strict=True, default=False,
        description="Stop reconciling children (status is still reported).",
    )] = False


class ObjectMeta(BaseModel):
    """The parts of `metadata` kvcap checks (the CRD checks `name` with the same CEL rules)."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)
    namespace: str | None = None


class ModelDeployment(BaseModel):
    """A whole manifest, as `kvcap plan -f` reads it."""

    model_config = ConfigDict(extra="allow")
    api_version: Literal["kvcap.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ModelDeployment"]
    metadata: ObjectMeta
    spec: ModelDeploymentSpec


def parse_manifest(doc: dict[str, Any]) -> ModelDeployment:
    """Validate a ModelDeployment manifest dict (raises pydantic.ValidationError)."""
    return ModelDeployment.model_validate(doc)


__all__ = [
    "API_VERSION", "KIND", "KV_CACHE_DTYPE_FLAG", "MAX_NAME_LENGTH", "NAME_PATTERN",
    "PLANNED_FLAGS", "QUANTITY_PATTERN", "QUANTIZATION_FLAG", "AutoscalingSpec",
    "ContextPercentiles", "EnvVar", "GpuSpec", "LatencyObjectives", "LocalObjectKeyRef", "ModelDeployment",
    "ModelDeploymentSpec", "ModelSpec", "VllmSpec", "WorkloadSpec", "parse_manifest",
    "parse_quantity", "planned_flag_of",
]
