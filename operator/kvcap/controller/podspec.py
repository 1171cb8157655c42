"""How a vLLM pod runs: the one place that owns the pod policy (pure: no kopf, no client).

Every pod kvcap renders (a Deployment's, a LeaderWorkerSet's leader and workers) comes from
`render_pod_template`, so each rule below is written and tested once (tests/unit/test_podspec.py):

* `enableServiceLinks: false`. Kubernetes injects `<SERVICE>_PORT=tcp://…` for every Service of the
  namespace; a Service named `vllm` yields `VLLM_PORT=tcp://10.x.y.z:8000`, which vLLM reads as its
  own internal port setting and refuses to start. (Service env vars:
  https://kubernetes.io/docs/concepts/services-networking/service/#environment-variables ;
  vLLM `envs.py` `VLLM_PORT`, which raises on a URI.)
* `automountServiceAccountToken: false`: vLLM never calls the Kubernetes API.
* Requests for CPU, memory and ephemeral storage, so pods are not BestEffort (the first evicted):
  safetensors are staged through host RAM and `/dev/shm` is a memory-backed emptyDir that counts
  against the pod's memory. No CPU or memory limits: throttling a tokenizer costs latency, and an
  OOM kill while loading weights restarts the whole download.
* A model cache: `HF_HOME` on a volume, so a container restart does not download the weights again
  (an emptyDir sized from the weights; or `spec.vllm.modelCache.claimName`, a PersistentVolumeClaim
  that outlives the pod). A node path (hostPath) is deliberately not offered: the `baseline` Pod
  Security level forbids hostPath volumes.
* A startup budget that grows with the weight bytes: a fixed 30 min probe kills a DeepSeek-V3-sized
  (~690 GB) download half way, and it restarts forever.
* A securityContext that the `baseline` Pod Security level admits and that meets `restricted`
  but for `runAsNonRoot`: no privilege escalation, every capability dropped, the runtime's default
  seccomp profile. The upstream `vllm/vllm-openai` image runs as root; `spec.vllm.runAsUser` runs
  it as a non-root UID instead (HOME on a writable emptyDir, fsGroup for the model cache), which
  `restricted` admits. (Pod Security Standards:
  https://kubernetes.io/docs/concepts/security/pod-security-standards/)
* A preStop pause and a termination grace period that let in-flight (streaming) responses finish:
  the endpoint is withdrawn first, then vLLM gets SIGTERM and `drain_seconds` to finish.
* The model as vLLM's positional argument (`vllm serve MODEL`): `--model` is deprecated there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kvcap.api import constants as kc
from kvcap.api.errors import KvcapError
from kvcap.api.models import QUANTIZATION_FLAG, ModelDeploymentSpec, parse_quantity
from kvcap.capacity import catalog
from kvcap.capacity.configs import load_model
from kvcap.capacity.memory import weight_bytes_per_gpu
from kvcap.capacity.plan_types import CapacityPlan, PoolPlan
from kvcap.controller.conditions import Check

GIB = 2**30
MODEL_CACHE_VOLUME = "model-cache"
MODEL_CACHE_PATH = "/model-cache"  # HF_HOME: the Hub cache (`hub/`) lives below it
HOME_VOLUME = "home"  # with spec.vllm.runAsUser: a writable HOME for vLLM's caches
HOME_PATH = "/home/kvcap"
HF_HOME_ENV = "HF_HOME"
#: CPU for the API server, tokenizer and engine core, plus per GPU (one worker process each).
CPU_BASE = 2
CPU_PER_GPU = 2
#: Host memory beyond the weights and /dev/shm: Python, CUDA context, tokenizer, buffers.
MEMORY_BASE = 8 * GIB
#: Scratch disk beyond the model: logs, torch.compile / Triton / FlashInfer caches.
EPHEMERAL_BASE = 20 * GIB
#: Without the weight bytes, this much host memory is assumed for staging them.
MEMORY_UNKNOWN_WEIGHTS = 16 * GIB


@dataclass(frozen=True)
class PodPolicy:
    """Operator-level knobs of the pod policy (from settings)."""

    startup_timeout_seconds: int = 1800  # the floor of the startup budget
    #: Slowest sustained download the startup budget allows for (bytes/s): 100 MiB/s.
    download_bytes_per_second: int = 100 * 2**20
    #: Seconds between SIGTERM and SIGKILL for in-flight requests to finish.
    drain_seconds: int = 120
    #: Seconds the container keeps serving after deletion, while endpoints are withdrawn.
    prestop_seconds: int = 10


# --- sizes ---


def with_model_bytes(
    plan: CapacityPlan, spec: ModelDeploymentSpec, config: Mapping[str, Any] | None
) -> CapacityPlan:
    """`plan` carrying the checkpoint's weight bytes in `extra["model_bytes"]` (when known), so that
    they are pinned with it: later reconciles of a pinned plan read no config.json."""
    model_bytes = model_weight_bytes(spec, config)
    if not model_bytes:
        return plan
    return replace(plan, extra={**plan.extra, "model_bytes": model_bytes})


def model_weight_bytes(spec: ModelDeploymentSpec, config: Mapping[str, Any] | None) -> int | None:
    """The checkpoint's weight bytes (what every pod downloads), from `config` (a ConfigMap's or the
    Hub's config.json) or the built-in catalog; None when neither knows the model. Never reads a
    local path named in the spec."""
    if config is None and catalog.find_model(spec.model.name) is None:
        return None
    try:
        arch = load_model(spec.model.name, config=dict(config) if config is not None else None)
        quant = QUANTIZATION_FLAG.get(spec.model.quantization or "None")
        return weight_bytes_per_gpu(arch, 1, 1, quant)
    except (KvcapError, ValueError, KeyError, TypeError):
        return None


def startup_seconds(policy: PodPolicy, model_bytes: int | None) -> int:
    """How long a pod may take to download and load the weights before it is restarted."""
    if not model_bytes:
        return policy.startup_timeout_seconds
    download = math.ceil(model_bytes / max(1, policy.download_bytes_per_second))
    return max(policy.startup_timeout_seconds, 600 + download)


def _gib(n: int) -> str:
    return f"{max(1, math.ceil(n / GIB))}Gi"


def pod_share(model_bytes: int | None, gpus: int, pool: PoolPlan) -> int | None:
    """The weight bytes one pod of the pool loads (its GPUs' share of the replica)."""
    if not model_bytes:
        return None
    return math.ceil(model_bytes * gpus / max(1, pool.gpus_per_replica))


def resources(
    spec: ModelDeploymentSpec, pool: PoolPlan, gpus: int, model_bytes: int | None
) -> dict[str, Any]:
    """Requests (and the GPU limit): never BestEffort, no CPU/memory limit."""
    gpu = {spec.gpu.resource_name: str(gpus)}
    share = pod_share(model_bytes, gpus, pool)
    memory = MEMORY_BASE + parse_quantity(spec.vllm.shm_size) + (share or MEMORY_UNKNOWN_WEIGHTS)
    requests = {
        "cpu": str(CPU_BASE + CPU_PER_GPU * gpus),
        "memory": _gib(memory),
        **gpu,
    }
    if spec.vllm.model_cache is None:  # the weights land on the node's disk (an emptyDir)
        requests["ephemeral-storage"] = _gib(EPHEMERAL_BASE + (model_bytes or 0))
    return {"requests": requests, "limits": dict(gpu)}


# --- arguments ---


def serve_args(args: Sequence[str]) -> list[str]:
    """vLLM arguments with the model positional: `--model M a b` -> `M a b` (vLLM deprecated
    `--model` for `vllm serve`, https://docs.vllm.ai/en/latest/cli/serve.html)."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--model" and i + 1 < len(out):
            model = out[i + 1]
            del out[i : i + 2]
            return [model, *out]
        if arg.startswith("--model="):
            del out[i]
            return [arg.split("=", 1)[1], *out]
    return out


#: `vllm serve` flags that change GPU memory in ways the KV plan does not model; passed through
#: extraArgs they are reported in CapacityPlanned rather than silently invalidating the plan.
#: Source: vLLM engine arguments, https://docs.vllm.ai/en/latest/configuration/engine_args.html
UNMODELLED_FLAGS: dict[str, str] = {
    "--cpu-offload-gb": "moves weights to host memory, leaving more KV cache than planned",
    "--speculative-config": "adds a draft model's weights and KV cache",
    "--kv-offloading-size": "adds a CPU tier to the KV cache",
    "--kv-offloading-backend": "adds a CPU tier to the KV cache",
    "--enable-lora": "reserves GPU memory for LoRA adapters",
    "--max-loras": "reserves GPU memory for LoRA adapters",
    "--max-lora-rank": "reserves GPU memory for LoRA adapters",
    "--enforce-eager": "skips CUDA graphs, freeing the memory the plan reserved for them",
    "--compilation-config": "changes the CUDA graphs captured and their memory",
    "--cudagraph-capture-sizes": "changes the CUDA graphs captured and their memory",
    "--limit-mm-per-prompt": "sizes the multimodal encoder cache",
}


def unmodelled_flags(args: Sequence[str]) -> list[str]:
    """The flags of `args` in UNMODELLED_FLAGS ('--max_loras=4' counts as '--max-loras')."""
    found = []
    for arg in args:
        flag = arg.split("=", 1)[0].replace("_", "-")
        if flag in UNMODELLED_FLAGS and flag not in found:
            found.append(flag)
    return found


def note_unmodelled_flags(planned: Check, spec: ModelDeploymentSpec) -> Check:
    """CapacityPlanned with a note naming the extraArgs whose memory the plan does not model."""
    flags = unmodelled_flags(spec.vllm.extra_args)
    if not planned.ok or not flags:
        return planned
    notes = "; ".join(f"'{f}' {UNMODELLED_FLAGS[f]}" for f in flags)
    return Check(
        planned.status,
        planned.reason,
        f"{planned.message}. Not modelled by the plan: {notes}; the KV budget may differ",
    )


# --- pieces of the pod ---


def _probe(path: str, *, failure_threshold: int, period: int = 10) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": kc.PORT_NAME, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "successThreshold": 1,
        "failureThreshold": failure_threshold,
    }


def env(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """spec.vllm.env (the last value of a name wins), HF_HOME on the model cache, and HF_TOKEN from
    the Secret (these two win)."""
    by_name: dict[str, dict[str, Any]] = {}
    for var in spec.vllm.env:
        by_name[var.name] = {"name": var.name, "value": var.value}
    by_name[HF_HOME_ENV] = {"name": HF_HOME_ENV, "value": MODEL_CACHE_PATH}
    if spec.vllm.run_as_user is not None and "HOME" not in by_name:
        # a non-root UID has no writable home in the image: torch.compile, Triton and FlashInfer
        # write their caches below ~/.cache
        by_name["HOME"] = {"name": "HOME", "value": HOME_PATH}
    ref = spec.model.hf_token_secret_ref
    if ref is not None:
        by_name[kc.HF_TOKEN_ENV] = {
            "name": kc.HF_TOKEN_ENV,
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
        }
    return list(by_name.values())


def tolerations(
    spec: ModelDeploymentSpec, extra: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"key": spec.gpu.resource_name, "operator": "Exists", "effect": "NoSchedule"},
    ]
    for tol in extra:
        if dict(tol) not in out:
            out.append(dict(tol))
    return out


def affinity(pool: PoolPlan) -> dict[str, Any] | None:
    if not pool.gpu_labels:
        return None
    term = {
        "matchExpressions": [
            {"key": kc.GPU_PRODUCT_LABEL, "operator": "In", "values": list(pool.gpu_labels)}
        ]
    }
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    }


def container_security_context() -> dict[str, Any]:
    """`baseline`-compatible; `restricted` but for runAsNonRoot (see module doc)."""
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_security_context(spec: ModelDeploymentSpec) -> dict[str, Any]:
    """The runtime's default seccomp profile always; with `spec.vllm.runAsUser`, a non-root UID,
    GID and fsGroup (so an emptyDir or PVC model cache is writable), which completes `restricted`."""
    ctx: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    uid = spec.vllm.run_as_user
    if uid is not None:
        ctx.update(runAsNonRoot=True, runAsUser=uid, runAsGroup=uid, fsGroup=uid)
    return ctx


def volumes(spec: ModelDeploymentSpec, model_bytes: int | None) -> list[dict[str, Any]]:
    cache = spec.vllm.model_cache
    if cache is not None:
        cache_volume: dict[str, Any] = {
            "name": MODEL_CACHE_VOLUME,
            "persistentVolumeClaim": {"claimName": cache.claim_name},
        }
    else:
        empty: dict[str, Any] = {}
        if model_bytes:
            empty["sizeLimit"] = _gib(EPHEMERAL_BASE + model_bytes)
        cache_volume = {"name": MODEL_CACHE_VOLUME, "emptyDir": empty}
    out = [
        {"name": kc.SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": spec.vllm.shm_size}},
        cache_volume,
    ]
    if spec.vllm.run_as_user is not None:
        out.append({"name": HOME_VOLUME, "emptyDir": {}})
    return out


# --- the pod template ---


def render_pod_template(
    *,
    labels: Mapping[str, str],
    spec: ModelDeploymentSpec,
    pool: PoolPlan,
    policy: PodPolicy,
    extra_tolerations: Sequence[Mapping[str, Any]] = (),
    model_bytes: int | None = None,
    role: str = kc.ROLE_SERVER,
    gpus: int | None = None,
    command: Sequence[str] = ("vllm", "serve"),
    args: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A pool's pod template (without the spec-hash annotation, which the caller stamps).

    Role worker has no HTTP port, probes or preStop pause (a Ray worker serves nothing).
    """
    gpus = pool.gpus_per_replica if gpus is None else gpus
    container: dict[str, Any] = {
        "name": kc.VLLM_CONTAINER,
        "image": spec.vllm.image,
        "command": list(command),
        "args": serve_args(pool.vllm_args if args is None else args),
    }
    if role == kc.ROLE_SERVER:
        container["ports"] = [
            {"name": kc.PORT_NAME, "containerPort": kc.VLLM_PORT, "protocol": "TCP"}
        ]
    container["env"] = env(spec)
    container["resources"] = resources(spec, pool, gpus, model_bytes)
    container["volumeMounts"] = [
        {"name": kc.SHM_VOLUME, "mountPath": "/dev/shm"},
        {"name": MODEL_CACHE_VOLUME, "mountPath": MODEL_CACHE_PATH},
    ]
    if spec.vllm.run_as_user is not None:
        container["volumeMounts"].append({"name": HOME_VOLUME, "mountPath": HOME_PATH})
    if role == kc.ROLE_SERVER:
        budget = startup_seconds(policy, model_bytes)
        container["startupProbe"] = _probe(
            kc.READINESS_PATH, failure_threshold=max(1, math.ceil(budget / 10))
        )
        container["readinessProbe"] = _probe(kc.READINESS_PATH, failure_threshold=3)
        container["livenessProbe"] = _probe(kc.LIVENESS_PATH, failure_threshold=3)
        if policy.prestop_seconds > 0:
            # exec, not the `sleep` lifecycle action, so clusters before 1.30 accept it too.
            container["lifecycle"] = {
                "preStop": {"exec": {"command": ["sleep", str(policy.prestop_seconds)]}}
            }
    container["securityContext"] = container_security_context()

    pod_spec: dict[str, Any] = {}
    aff = affinity(pool)
    if aff is not None:
        pod_spec["affinity"] = aff
    pod_spec["tolerations"] = tolerations(spec, extra_tolerations)
    pod_spec["automountServiceAccountToken"] = False
    pod_spec["securityContext"] = pod_security_context(spec)
    pod_spec["enableServiceLinks"] = False
    pod_spec["terminationGracePeriodSeconds"] = policy.prestop_seconds + policy.drain_seconds
    pod_spec["containers"] = [container]
    pod_spec["volumes"] = volumes(spec, model_bytes)
    return {"metadata": {"labels": dict(labels)}, "spec": pod_spec}
