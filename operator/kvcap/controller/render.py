"""Render the children of a ModelDeployment as plain dicts (pure: no kopf, no Kubernetes client).

Per pool (`default`, and `long` when the plan splits):
  * Deployment `<name>-<pool>` running `vllm serve <PoolPlan.vllm_args>` — or, when one replica
    needs more GPUs than a node has (TP x PP > `spec.gpu.perNode`), a LeaderWorkerSet of that name
    whose leader runs the Ray head plus `vllm serve` and whose workers join the Ray cluster;
  * Service `<name>-<pool>` (ClusterIP, port 8000 'http') selecting the pool's serving pods;
  * PodDisruptionBudget `<name>-<pool>` (maxUnavailable 1 pod: over the serving pods of a
    Deployment, over every pod, leaders and workers, of a LeaderWorkerSet pool).
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
the rendered template, also copied to the workload's own annotations. How the pods themselves run
(service links, requests, model cache, probes, securityContext, grace) is the pod policy in
`kvcap.controller.podspec`.
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
from kvcap.controller import podspec

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
    startup_timeout_seconds: int = 1800  # the floor; larger models get more (podspec)
    epp_service_suffix: str = "-epp"
    epp_port: int = 9002
    drain_seconds: int = 120  # SIGTERM -> SIGKILL, for in-flight responses
    prestop_seconds: int = 10  # keep serving while the endpoint is withdrawn

    def pod_policy(self) -> podspec.PodPolicy:
        return podspec.PodPolicy(
            startup_timeout_seconds=self.startup_timeout_seconds,
            drain_seconds=self.drain_seconds,
            prestop_seconds=self.prestop_seconds,
        )


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
    model_bytes: int | None = None,
) -> dict[str, Any]:
    """A pool's pod template (podspec owns the policy) with the kvcap labels and spec hash."""
    labels = {
        **pool_labels(owner.name, pool.name),
        kc.LABEL_ROLE: role,
        kc.LABEL_CONTEXT_LENGTH_RANGE: context_length_range(pool),
    }
    template = podspec.render_pod_template(
        labels=labels,
        spec=spec,
        pool=pool,
        policy=options.pod_policy(),
        extra_tolerations=options.extra_tolerations,
        model_bytes=model_bytes,
        role=role,
        gpus=gpus,
        command=command,
        args=args,
    )
    template["metadata"]["annotations"] = {kc.ANNOTATION_SPEC_HASH: spec_hash(template)}
    return template


# --- workloads ---


def rollout_strategy(replicas: int) -> dict[str, Any]:
    """RollingUpdate that progresses on a fully used GPU pool.

    `maxSurge: 1, maxUnavailable: 0` waits forever for a spare GPU when the pool's nodes are full.
    With two or more replicas one old pod may go first (`maxUnavailable: 1`), so the rollout always
    progresses, losing at most one replica of capacity; a surge pod still starts at once where a
    GPU is free. A single replica is never taken down for a rollout (that would be an outage):
    it surges, and Schedulable says so when no GPU is free.
    (Deployment strategy: https://kubernetes.io/docs/concepts/workloads/controllers/deployment/#rolling-update-deployment)
    """
    unavailable = 1 if replicas >= 2 else 0
    return {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": unavailable},
    }


def render_deployment(
    owner: Owner,
    spec: ModelDeploymentSpec,
    pool: PoolPlan,
    options: RenderOptions,
    model_bytes: int | None = None,
) -> dict[str, Any]:
    template = render_pod_template(owner, spec, pool, options, model_bytes=model_bytes)
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
            "strategy": rollout_strategy(pool.replicas),
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": podspec.startup_seconds(options.pod_policy(), model_bytes)
            + 600,
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
    owner: Owner,
    spec: ModelDeploymentSpec,
    pool: PoolPlan,
    options: RenderOptions,
    model_bytes: int | None = None,
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
        model_bytes=model_bytes,
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
        model_bytes=model_bytes,
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


def pool_pod_selector(owner_name: str, pool: str) -> dict[str, str]:
    """Every pod of a pool, whatever its role (LeaderWorkerSet leaders and workers)."""
    return {kc.LABEL_MODEL_DEPLOYMENT: fit_name(owner_name), kc.LABEL_POOL: pool}


def render_pdb(owner: Owner, pool: PoolPlan, multi_node: bool = False) -> dict[str, Any]:
    """At most one pod of the pool voluntarily disrupted at a time.

    A multi-node replica is a group of pods that restarts as a whole when any one of them goes
    (`RecreateGroupOnPodRestart`), so the budget covers the workers as well as the leaders: with
    `maxUnavailable: 1` over all of them, a drain breaks at most one replica at a time and waits
    until that group is back before taking the next pod (PDBs count pods, not groups:
    https://kubernetes.io/docs/tasks/run-application/configure-pdb/ ; LWS restart policy:
    https://lws.sigs.k8s.io/docs/concepts/).
    """
    name = child_name(owner.name, pool.name)
    selector = (
        pool_pod_selector(owner.name, pool.name)
        if multi_node
        else serving_selector(owner.name, pool.name)
    )
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, name, pool_labels(owner.name, pool.name)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
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
    owner: Owner,
    spec: ModelDeploymentSpec,
    plan: CapacityPlan,
    options: RenderOptions,
    model_bytes: int | None = None,
) -> list[dict[str, Any]]:
    """Every child of a feasible plan in a fixed order: workloads, Services, PDBs, extras.

    `model_bytes`: the checkpoint's weight bytes, which size the startup budget, host memory and
    disk; decide passes the figure pinned with the plan (`status.plan.modelBytes`, so the pods do
    not change when a pinned reconcile reads no config.json). None: the built-in catalog's
    figure for `spec.model.name` (podspec.model_weight_bytes), else fixed defaults."""
    if not plan.feasible:
        return []
    if model_bytes is None:
        model_bytes = podspec.model_weight_bytes(spec, None)
    workloads, services, pdbs = [], [], []
    for pool in plan.pools:
        multi = is_multi_node(pool, spec.gpu.per_node)
        if multi:
            workloads.append(render_leader_worker_set(owner, spec, pool, options, model_bytes))
        else:
            workloads.append(render_deployment(owner, spec, pool, options, model_bytes))
        services.append(render_service(owner, pool))
        pdbs.append(render_pdb(owner, pool, multi))
    extras = []
    if options.features.service_monitor:
        extras.append(render_service_monitor(owner))
    if options.features.inference_pool is not None:
        extras.append(render_inference_pool(owner, options))
    return [*workloads, *services, *pdbs, *extras]


def child_key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    """(apiVersion, kind, name): identity of a child within its namespace."""
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])
