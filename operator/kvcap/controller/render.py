"""Render the children of a ModelDeployment as plain dicts (pure: no kopf, no Kubernetes client).

Per pool (`default`, and `long` when the plan splits):
  * Deployment `<name>-<pool>` running `vllm serve <PoolPlan.vllm_args>` — or, when one replica
    needs more GPUs than a node has (TP x PP > `spec.gpu.perNode`), a LeaderWorkerSet of that name
    whose leader runs the Ray head plus `vllm serve` and whose workers join the Ray cluster;
  * Service `<name>-<pool>` (ClusterIP, port 8000 'http') selecting the pool's serving pods;
  * PodDisruptionBudget `<name>-<pool>` (maxUnavailable 1).
Per ModelDeployment, when the API exists:
  * ServiceMonitor `<name>` (monitoring.coreos.com/v1) scraping `/metrics` of every pool Service;
  * InferencePool `<name>` (inference.networking.k8s.io/v1, else x-k8s.io/v1alpha2) over the
    serving pods of ALL pools. One InferencePool, not one per kvcap pool: the llm-d router's
    `context-length-aware` scorer picks among the endpoints of one InferencePool by their
    `llm-d.ai/context-length-range` label, which is what routes long prompts to the `long` pool.
There is deliberately no aggregate `<name>` Service: a ClusterIP Service balances round-robin and
would send long prompts to the `default` pool, whose `--max-model-len` rejects them. Clients that
are not behind an inference gateway use `<name>-default` (and `<name>-long` for long prompts).

Every child carries the kvcap labels and a controller ownerReference to the ModelDeployment, so
garbage collection deletes them with it. The pod template carries `kvcap.io/spec-hash`, a hash of
the rendered template, also copied to the workload's own annotations.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvcap import GROUP, KIND, VERSION
from kvcap.api import constants as kc
from kvcap.api.models import ModelDeploymentSpec
from kvcap.capacity.plan_types import CapacityPlan, PoolPlan

MAX_NAME = 63  # DNS-1035 label: Service names; also the limit of a label value.


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment the children belong to."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class Features:
    """Optional APIs found on the cluster (discovery)."""

    service_monitor: bool = False
    leader_worker_set: bool = False
    inference_pool: tuple[str, str] | None = (
        None  # (group, version) of the InferencePool API to use
    )


@dataclass(frozen=True)
class RenderOptions:
    """Operator-level knobs (from settings) that shape the children."""

    features: Features = field(default_factory=Features)
    extra_tolerations: tuple[Mapping[str, Any], ...] = ()
    startup_timeout_seconds: int = 1800
    epp_service_suffix: str = "-epp"
    epp_port: int = 9002


# --- names and labels ---


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def fit_name(name: str, limit: int = MAX_NAME) -> str:
    """`name`, or a deterministic shortening `<prefix>-<hash8>` when it exceeds `limit`."""
    if len(name) <= limit:
        return name
    prefix = name[: limit - 9].rstrip("-.")
    return f"{prefix}-{_short_hash(name)}"


def child_name(owner_name: str, pool: str) -> str:
    """Name of a pool's Deployment/LeaderWorkerSet, Service and PodDisruptionBudget."""
    full = f"{owner_name}-{pool}"
    if len(full) <= MAX_NAME:
        return full
    keep = MAX_NAME - len(pool) - 10
    return f"{owner_name[:keep].rstrip('-.')}-{_short_hash(owner_name)}-{pool}"


def common_labels(owner_name: str) -> dict[str, str]:
    value = fit_name(owner_name)
    return {
        kc.LABEL_NAME: kc.APP_NAME,
        kc.LABEL_INSTANCE: value,
        kc.LABEL_MANAGED_BY: kc.MANAGED_BY,
        kc.LABEL_PART_OF: value,
        kc.LABEL_COMPONENT: kc.COMPONENT,
        kc.LABEL_MODEL_DEPLOYMENT: value,
    }


def owner_selector(owner_name: str) -> dict[str, str]:
    """Label selector of every child of a ModelDeployment (used to list them)."""
    return {kc.LABEL_MODEL_DEPLOYMENT: fit_name(owner_name), kc.LABEL_MANAGED_BY: kc.MANAGED_BY}


def pool_labels(owner_name: str, pool: str) -> dict[str, str]:
    return {**common_labels(owner_name), kc.LABEL_POOL: pool}


def serving_selector(owner_name: str, pool: str) -> dict[str, str]:
    """Selector of a pool's pods that serve HTTP (immutable in a Deployment: keep it minimal)."""
    return {
        kc.LABEL_MODEL_DEPLOYMENT: fit_name(owner_name),
        kc.LABEL_POOL: pool,
        kc.LABEL_ROLE: kc.ROLE_SERVER,
    }


def context_length_range(pool: PoolPlan) -> str:
    """`llm-d.ai/context-length-range` value: inclusive 'min-max' tokens the pool is sized for."""
    return f"{pool.min_context_tokens}-{pool.max_model_len}"


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(
    owner: Owner, name: str, labels: Mapping[str, str], annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": dict(labels),
        "ownerReferences": [owner_reference(owner)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def spec_hash(obj: Any) -> str:
    """16 hex digits of sha256 over canonical JSON (sorted keys)."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# --- multi-node layout ---


def nodes_per_replica(gpus_per_replica: int, per_node: int) -> int | None:
    """Fewest nodes that split `gpus_per_replica` evenly with at most `per_node` GPUs each.

    1 when the replica fits one node; None when no even split exists (e.g. 9 GPUs on 8-GPU nodes).
    """
    if gpus_per_replica <= per_node:
        return 1
    for nodes in range(math.ceil(gpus_per_replica / per_node), gpus_per_replica + 1):
        if gpus_per_replica % nodes == 0 and gpus_per_replica // nodes <= per_node:
            return nodes
    return None  # pragma: no cover - nodes == gpus_per_replica always divides


def is_multi_node(pool: PoolPlan, per_node: int) -> bool:
    return pool.gpus_per_replica > per_node


# --- pod template ---


def _probe(path: str, *, failure_threshold: int, period: int = 10) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": kc.PORT_NAME, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "successThreshold": 1,
        "failureThreshold": failure_threshold,
    }


def _env(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """spec.vllm.env (the last value of a name wins) plus HF_TOKEN from the Secret (wins too)."""
    by_name: dict[str, dict[str, Any]] = {}
    for var in spec.vllm.env:
        by_name[var.name] = {"name": var.name, "value": var.value}
    ref = spec.model.hf_token_secret_ref
    if ref is not None:
        by_name[kc.HF_TOKEN_ENV] = {
            "name": kc.HF_TOKEN_ENV,
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
        }
    return list(by_name.values())


def _tolerations(spec: ModelDeploymentSpec, options: RenderOptions) -> list[dict[str, Any]]:
    tolerations: list[dict[str, Any]] = [
        {"key": spec.gpu.resource_name, "operator": "Exists", "effect": "NoSchedule"},
    ]
    for tol in options.extra_tolerations:
        if dict(tol) not in tolerations:
            tolerations.append(dict(tol))
    return tolerations


def _affinity(pool: PoolPlan) -> dict[str, Any] | None:
    if not pool.gpu_labels:
        return None
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {
                                "key": kc.GPU_PRODUCT_LABEL,
                                "operator": "In",
                                "values": list(pool.gpu_labels),
                            }
                        ]
                    }
                ]
            }
        }
    }


def render_pod_template(
    owner: Owner,
    spec: ModelDeploymentSpec,
    pool: PoolPlan,
    options: RenderOptions,
    *,
    role: str = kc.ROLE_SERVER,
    gpus: int | None = None,
    command: Sequence[str] = ("vllm", "serve"),
    args: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A pool's pod template; role worker has no HTTP port or probes (a Ray worker serves none)."""
    gpus = pool.gpus_per_replica if gpus is None else gpus
    resources = {spec.gpu.resource_name: str(gpus)}
    container: dict[str, Any] = {
        "name": kc.VLLM_CONTAINER,
        "image": spec.vllm.image,
        "command": list(command),
        "args": list(pool.vllm_args if args is None else args),
    }
    if role == kc.ROLE_SERVER:
        container["ports"] = [
            {"name": kc.PORT_NAME, "containerPort": kc.VLLM_PORT, "protocol": "TCP"}
        ]
    env = _env(spec)
    if env:
        container["env"] = env
    container["resources"] = {"requests": dict(resources), "limits": dict(resources)}
    container["volumeMounts"] = [{"name": kc.SHM_VOLUME, "mountPath": "/dev/shm"}]
    if role == kc.ROLE_SERVER:
        container["startupProbe"] = _probe(
            kc.READINESS_PATH,
            failure_threshold=max(1, math.ceil(options.startup_timeout_seconds / 10)),
        )
        container["readinessProbe"] = _probe(kc.READINESS_PATH, failure_threshold=3)
        container["livenessProbe"] = _probe(kc.LIVENESS_PATH, failure_threshold=3)

    labels = {
        **pool_labels(owner.name, pool.name),
        kc.LABEL_ROLE: role,
        kc.LABEL_CONTEXT_LENGTH_RANGE: context_length_range(pool),
    }
    pod_spec: dict[str, Any] = {}
    affinity = _affinity(pool)
    if affinity is not None:
        pod_spec["affinity"] = affinity
    pod_spec["tolerations"] = _tolerations(spec, options)
    pod_spec["containers"] = [container]
    pod_spec["volumes"] = [
        {"name": kc.SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": spec.vllm.shm_size}},
    ]
    template: dict[str, Any] = {"metadata": {"labels": labels}, "spec": pod_spec}
    template["metadata"]["annotations"] = {kc.ANNOTATION_SPEC_HASH: spec_hash(template)}
    return template


# --- workloads ---


def render_deployment(
    owner: Owner, spec: ModelDeploymentSpec, pool: PoolPlan, options: RenderOptions
) -> dict[str, Any]:
    template = render_pod_template(owner, spec, pool, options)
    digest = template["metadata"]["annotations"][kc.ANNOTATION_SPEC_HASH]
    name = child_name(owner.name, pool.name)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(
            owner, name, pool_labels(owner.name, pool.name), {kc.ANNOTATION_SPEC_HASH: digest}
        ),
        "spec": {
            "replicas": pool.replicas,
            "selector": {"matchLabels": serving_selector(owner.name, pool.name)},
            # A surge pod needs spare GPUs; without them the rollout waits (old pods keep serving)
            # and Schedulable reports the unschedulable pod, rather than dropping serving capacity.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": options.startup_timeout_seconds + 600,
            "template": template,
        },
    }


_LEADER_SCRIPT = (
    "set -e\n"
    f"ray start --head --port={kc.RAY_PORT} --disable-usage-stats\n"
    "until python3 -c \"import os, sys, ray; ray.init(address='auto', logging_level='ERROR'); "
    "alive = sum(n['Alive'] for n in ray.nodes()); "
    "sys.exit(0 if alive >= int(os.environ['LWS_GROUP_SIZE']) else 1)\"; "
    "do sleep 5; done\n"
    'exec vllm serve "$@" --distributed-executor-backend ray\n'
)
_WORKER_SCRIPT = (
    f'until ray start --address="$LWS_LEADER_ADDRESS:{kc.RAY_PORT}" --block --disable-usage-stats; '
    "do sleep 5; done\n"
)


def render_leader_worker_set(
    owner: Owner, spec: ModelDeploymentSpec, pool: PoolPlan, options: RenderOptions
) -> dict[str, Any]:
    """LeaderWorkerSet for a replica spanning `size` nodes (vLLM over Ray, as vLLM's LWS guide)."""
    size = nodes_per_replica(pool.gpus_per_replica, spec.gpu.per_node)
    if size is None:  # assess() rejects these plans before rendering
        raise ValueError(f"{pool.gpus_per_replica} GPUs cannot be split evenly over nodes")
    per_pod = pool.gpus_per_replica // size
    leader = render_pod_template(
        owner,
        spec,
        pool,
        options,
        role=kc.ROLE_SERVER,
        gpus=per_pod,
        command=("/bin/bash", "-c", _LEADER_SCRIPT, "kvcap-leader"),
        args=pool.vllm_args,
    )
    worker = render_pod_template(
        owner,
        spec,
        pool,
        options,
        role=kc.ROLE_WORKER,
        gpus=per_pod,
        command=("/bin/bash", "-c", _WORKER_SCRIPT),
        args=(),
    )
    digest = spec_hash({"leader": leader, "worker": worker})
    name = child_name(owner.name, pool.name)
    return {
        "apiVersion": "/".join(kc.LEADER_WORKER_SET_API[:2]),
        "kind": kc.LEADER_WORKER_SET_API[3],
        "metadata": _metadata(
            owner, name, pool_labels(owner.name, pool.name), {kc.ANNOTATION_SPEC_HASH: digest}
        ),
        "spec": {
            "replicas": pool.replicas,
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": size,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader,
                "workerTemplate": worker,
            },
        },
    }


def render_service(owner: Owner, pool: PoolPlan) -> dict[str, Any]:
    name = child_name(owner.name, pool.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, name, pool_labels(owner.name, pool.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": serving_selector(owner.name, pool.name),
            "ports": [
                {
                    "name": kc.PORT_NAME,
                    "port": kc.VLLM_PORT,
                    "targetPort": kc.PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def render_pdb(owner: Owner, pool: PoolPlan) -> dict[str, Any]:
    name = child_name(owner.name, pool.name)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, name, pool_labels(owner.name, pool.name)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": serving_selector(owner.name, pool.name)},
        },
    }


def render_service_monitor(owner: Owner) -> dict[str, Any]:
    group, version, _, kind = kc.SERVICE_MONITOR_API
    return {
        "apiVersion": f"{group}/{version}",
        "kind": kind,
        "metadata": _metadata(owner, fit_name(owner.name), common_labels(owner.name)),
        "spec": {
            "selector": {"matchLabels": owner_selector(owner.name)},
            "endpoints": [{"port": kc.PORT_NAME, "path": kc.METRICS_PATH, "interval": "15s"}],
            "targetLabels": [kc.LABEL_MODEL_DEPLOYMENT, kc.LABEL_POOL],
        },
    }


def render_inference_pool(owner: Owner, options: RenderOptions) -> dict[str, Any]:
    api = options.features.inference_pool
    if api is None:
        raise ValueError("the InferencePool API is not available")
    group, version = api
    selector = {kc.LABEL_MODEL_DEPLOYMENT: fit_name(owner.name), kc.LABEL_ROLE: kc.ROLE_SERVER}
    epp = fit_name(f"{owner.name}{options.epp_service_suffix}")
    if (group, version) == kc.INFERENCE_POOL_API_V1[:2]:
        spec: dict[str, Any] = {
            "selector": {"matchLabels": selector},
            "targetPorts": [{"number": kc.VLLM_PORT}],
            "endpointPickerRef": {"name": epp, "port": {"number": options.epp_port}},
        }
    else:  # inference.networking.x-k8s.io/v1alpha2
        spec = {
            "selector": selector,
            "targetPortNumber": kc.VLLM_PORT,
            "extensionRef": {"name": epp, "portNumber": options.epp_port},
        }
    return {
        "apiVersion": f"{group}/{version}",
        "kind": "InferencePool",
        "metadata": _metadata(owner, fit_name(owner.name), common_labels(owner.name)),
        "spec": spec,
    }


def render_children(
    owner: Owner, spec: ModelDeploymentSpec, plan: CapacityPlan, options: RenderOptions
) -> list[dict[str, Any]]:
    """Every child of a feasible plan in a fixed order: workloads, Services, PDBs, extras."""
    if not plan.feasible:
        return []
    workloads, services, pdbs = [], [], []
    for pool in plan.pools:
        if is_multi_node(pool, spec.gpu.per_node):
            workloads.append(render_leader_worker_set(owner, spec, pool, options))
        else:
            workloads.append(render_deployment(owner, spec, pool, options))
        services.append(render_service(owner, pool))
        pdbs.append(render_pdb(owner, pool))
    extras = []
    if options.features.service_monitor:
        extras.append(render_service_monitor(owner))
    if options.features.inference_pool is not None:
        extras.append(render_inference_pool(owner, options))
    return [*workloads, *services, *pdbs, *extras]


def child_key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    """(apiVersion, kind, name): identity of a child within its namespace."""
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])
