"""Golden tests of kvcap.controller.render: whole objects compared, table-driven (kubespawner style)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from operator_factories import ARGS, MODEL, OWNER, make_plan, make_pool, make_spec

from kvcap.api import constants as kc
from kvcap.capacity.plan_types import CapacityPlan
from kvcap.controller.render import (
    Features,
    RenderOptions,
    child_name,
    context_length_range,
    fit_name,
    nodes_per_replica,
    render_children,
    render_deployment,
    render_inference_pool,
    render_leader_worker_set,
    render_pdb,
    render_service,
    render_service_monitor,
    spec_hash,
)

OWNER_REF = {
    "apiVersion": "kvcap.io/v1alpha1", "kind": "ModelDeployment", "name": "llama", "uid": "uid-1",
    "controller": True, "blockOwnerDeletion": True,
}
POOL_LABELS = {
    "app.kubernetes.io/name": "vllm",
    "app.kubernetes.io/instance": "llama",
    "app.kubernetes.io/managed-by": "kvcap",
    "app.kubernetes.io/part-of": "llama",
    "app.kubernetes.io/component": "model-server",
    "kvcap.io/model-deployment": "llama",
    "kvcap.io/pool": "default",
}
SELECTOR = {"kvcap.io/model-deployment": "llama", "kvcap.io/pool": "default", "kvcap.io/role": "server"}


def probe(path: str, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http", "scheme": "HTTP"},
        "periodSeconds": 10, "timeoutSeconds": 5, "successThreshold": 1, "failureThreshold": failures,
    }


GOLDEN_DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {
        "name": "llama-default",
        "namespace": "team-a",
        "labels": POOL_LABELS,
        "ownerReferences": [OWNER_REF],
        "annotations": {"kvcap.io/spec-hash": "(stamped below)"},
    },
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": SELECTOR},
        # two replicas: one old pod may go first, so a full GPU pool still rolls over
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
        "revisionHistoryLimit": 3,
        "progressDeadlineSeconds": 2400,
        "template": {
            "metadata": {
                "labels": {
                    **POOL_LABELS,
                    "kvcap.io/role": "server",
                    "llm-d.ai/context-length-range": "0-8192",
                },
                "annotations": {"kvcap.io/spec-hash": "(stamped below)"},
            },
            "spec": {
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{
                        "key": "nvidia.com/gpu.product", "operator": "In",
                        "values": ["NVIDIA-H100-80GB-HBM3"],
                    }]}],
                }}},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "automountServiceAccountToken": False,
                # the runtime's default seccomp profile: `restricted` but for runAsNonRoot
                "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": 130,
                "containers": [{
                    "name": "vllm",
                    "image": "vllm/vllm-openai:v0.32.0",
                    "command": ["vllm", "serve"],
                    "args": list(ARGS),
                    "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"}],
                    "env": [{"name": "HF_HOME", "value": "/model-cache"}],
                    # weights unknown: 8Gi base + 16Gi /dev/shm + 16Gi assumed for staging weights
                    "resources": {
                        "requests": {"cpu": "4", "memory": "40Gi", "nvidia.com/gpu": "1",
                                     "ephemeral-storage": "20Gi"},
                        "limits": {"nvidia.com/gpu": "1"},
                    },
                    "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"},
                                     {"name": "model-cache", "mountPath": "/model-cache"}],
                    "startupProbe": probe("/v1/models", 180),
                    "readinessProbe": probe("/v1/models", 3),
                    "livenessProbe": probe("/health", 3),
                    "lifecycle": {"preStop": {"exec": {"command": ["sleep", "10"]}}},
                    "securityContext": {"allowPrivilegeEscalation": False, "privileged": False,
                                        "capabilities": {"drop": ["ALL"]}},
                }],
                "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
                            {"name": "model-cache", "emptyDir": {}}],
            },
        },
    },
}



def _stamp(obj: dict[str, Any]) -> None:
    """Put the hash of the pod template (without its annotations) where the renderer puts it."""
    template = copy.deepcopy(obj["spec"]["template"])
    template["metadata"].pop("annotations")
    digest = spec_hash(template)
    obj["metadata"]["annotations"][kc.ANNOTATION_SPEC_HASH] = digest
    obj["spec"]["template"]["metadata"]["annotations"][kc.ANNOTATION_SPEC_HASH] = digest


_stamp(GOLDEN_DEPLOYMENT)

GOLDEN_SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {
        "name": "llama-default", "namespace": "team-a", "labels": POOL_LABELS,
        "ownerReferences": [OWNER_REF],
    },
    "spec": {
        "type": "ClusterIP",
        "selector": SELECTOR,
        "ports": [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}],
    },
}

GOLDEN_PDB = {
    "apiVersion": "policy/v1",
    "kind": "PodDisruptionBudget",
    "metadata": {
        "name": "llama-default", "namespace": "team-a", "labels": POOL_LABELS,
        "ownerReferences": [OWNER_REF],
    },
    "spec": {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR}},
}

COMMON_LABELS = {k: v for k, v in POOL_LABELS.items() if k != "kvcap.io/pool"}

GOLDEN_SERVICE_MONITOR = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "ServiceMonitor",
    "metadata": {
        "name": "llama", "namespace": "team-a", "labels": COMMON_LABELS, "ownerReferences": [OWNER_REF],
    },
    "spec": {
        "selector": {"matchLabels": {"kvcap.io/model-deployment": "llama",
                                     "app.kubernetes.io/managed-by": "kvcap"}},
        "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
        "targetLabels": ["kvcap.io/model-deployment", "kvcap.io/pool"],
    },
}

GOLDEN_INFERENCE_POOL_V1 = {
    "apiVersion": "inference.networking.k8s.io/v1",
    "kind": "InferencePool",
    "metadata": {
        "name": "llama", "namespace": "team-a", "labels": COMMON_LABELS, "ownerReferences": [OWNER_REF],
    },
    "spec": {
        "selector": {"matchLabels": {"kvcap.io/model-deployment": "llama", "kvcap.io/role": "server"}},
        "targetPorts": [{"number": 8000}],
        "endpointPickerRef": {"name": "llama-epp", "port": {"number": 9002}},
    },
}

GOLDEN_INFERENCE_POOL_V1ALPHA2 = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
    "kind": "InferencePool",
    "metadata": {
        "name": "llama", "namespace": "team-a", "labels": COMMON_LABELS, "ownerReferences": [OWNER_REF],
    },
    "spec": {
        "selector": {"kvcap.io/model-deployment": "llama", "kvcap.io/role": "server"},
        "targetPortNumber": 8000,
        "extensionRef": {"name": "llama-epp", "portNumber": 9002},
    },
}


def test_deployment_golden() -> None:
    assert render_deployment(OWNER, make_spec(), make_pool(), RenderOptions()) == GOLDEN_DEPLOYMENT


def test_spec_hash_is_the_hash_of_the_template_without_it() -> None:
    obj = render_deployment(OWNER, make_spec(), make_pool(), RenderOptions())
    template = copy.deepcopy(obj["spec"]["template"])
    digest = template["metadata"].pop("annotations")[kc.ANNOTATION_SPEC_HASH]
    assert digest == spec_hash(template) == obj["metadata"]["annotations"][kc.ANNOTATION_SPEC_HASH]


def _edit(path: list[Any], value: Any) -> Any:
    def apply(obj: dict[str, Any]) -> None:
        target = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return apply


CONTAINER = ["spec", "template", "spec", "containers", 0]
POD = ["spec", "template", "spec"]

# (id, spec overrides, pool overrides, options, edits applied to a copy of GOLDEN_DEPLOYMENT)
DEPLOYMENT_CASES = [
    (
        "hf-token-and-env",
        {"model": {"name": MODEL, "hfTokenSecretRef": {"name": "hf", "key": "token"}},
         "vllm": {"env": [{"name": "A", "value": "1"}, {"name": "HF_TOKEN", "value": "literal"},
                          {"name": "A", "value": "2"}]}},
        {}, RenderOptions(),
        [_edit([*CONTAINER, "env"], [
            {"name": "A", "value": "2"},
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
            {"name": "HF_HOME", "value": "/model-cache"},
        ])],
    ),
    (
        # `restricted` Pod Security: a non-root UID, HOME on its own emptyDir, fsGroup for the cache
        "run-as-user",
        {"vllm": {"runAsUser": 1001}}, {}, RenderOptions(),
        [
            _edit([*POD, "securityContext"], {
                "seccompProfile": {"type": "RuntimeDefault"}, "runAsNonRoot": True,
                "runAsUser": 1001, "runAsGroup": 1001, "fsGroup": 1001}),
            _edit([*CONTAINER, "env"], [{"name": "HF_HOME", "value": "/model-cache"},
                                        {"name": "HOME", "value": "/home/kvcap"}]),
            _edit([*CONTAINER, "volumeMounts"], [
                {"name": "dshm", "mountPath": "/dev/shm"},
                {"name": "model-cache", "mountPath": "/model-cache"},
                {"name": "home", "mountPath": "/home/kvcap"}]),
            _edit([*POD, "volumes"], [
                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
                {"name": "model-cache", "emptyDir": {}},
                {"name": "home", "emptyDir": {}}]),
        ],
    ),
    (
        "extra-tolerations-deduplicated",
        {}, {},
        RenderOptions(extra_tolerations=(
            {"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "fake", "effect": "NoSchedule"},
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        )),
        [_edit([*POD, "tolerations"], [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "fake", "effect": "NoSchedule"},
        ])],
    ),
    (
        "tp4-amd-resource-shm-image-startup",
        {"gpu": {"resourceName": "amd.com/gpu"},
         "vllm": {"image": "vllm/vllm-openai:v0.12.0", "shmSize": "32Gi"}},
        {"tensor_parallel_size": 4, "gpus_per_replica": 4, "replicas": 1,
         "gpu_labels": ("A", "B")},
        RenderOptions(startup_timeout_seconds=600),
        [
            _edit(["spec", "replicas"], 1),
            # a single replica is never taken down for a rollout
            _edit(["spec", "strategy", "rollingUpdate", "maxUnavailable"], 0),
            _edit(["spec", "progressDeadlineSeconds"], 1200),
            _edit([*POD, "affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution",
                   "nodeSelectorTerms", 0, "matchExpressions", 0, "values"], ["A", "B"]),
            _edit([*POD, "tolerations"],
                  [{"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]),
            _edit([*CONTAINER, "image"], "vllm/vllm-openai:v0.12.0"),
            _edit([*CONTAINER, "resources"],
                  {"requests": {"cpu": "10", "memory": "56Gi", "amd.com/gpu": "4",
                                "ephemeral-storage": "20Gi"},
                   "limits": {"amd.com/gpu": "4"}}),
            _edit([*CONTAINER, "startupProbe"], probe("/v1/models", 60)),
            _edit([*POD, "volumes", 0, "emptyDir", "sizeLimit"], "32Gi"),
        ],
    ),
    (
        "long-pool-without-gpu-labels",
        {}, {"name": "long", "min_context_tokens": 8193, "max_model_len": 131072, "gpu_labels": ()},
        RenderOptions(),
        [
            _edit(["metadata", "name"], "llama-long"),
            _edit(["metadata", "labels", "kvcap.io/pool"], "long"),
            _edit(["spec", "selector", "matchLabels", "kvcap.io/pool"], "long"),
            _edit(["spec", "template", "metadata", "labels", "kvcap.io/pool"], "long"),
            _edit(["spec", "template", "metadata", "labels", "llm-d.ai/context-length-range"],
                  "8193-131072"),
            lambda obj: obj["spec"]["template"]["spec"].pop("affinity"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("spec_over", "pool_over", "options", "edits"),
    [c[1:] for c in DEPLOYMENT_CASES], ids=[c[0] for c in DEPLOYMENT_CASES],
)
def test_deployment_variants(spec_over: dict[str, Any], pool_over: dict[str, Any],
                             options: RenderOptions, edits: list[Any]) -> None:
    got = render_deployment(OWNER, make_spec(**spec_over), make_pool(**pool_over), options)
    expected = copy.deepcopy(GOLDEN_DEPLOYMENT)
    for edit in edits:
        edit(expected)
    _stamp(expected)
    assert got == expected


@pytest.mark.parametrize(("render", "golden"), [
    (lambda: render_service(OWNER, make_pool()), GOLDEN_SERVICE),
    (lambda: render_pdb(OWNER, make_pool()), GOLDEN_PDB),
    (lambda: render_service_monitor(OWNER), GOLDEN_SERVICE_MONITOR),
    (lambda: render_inference_pool(OWNER, RenderOptions(features=Features(
        inference_pool=("inference.networking.k8s.io", "v1")))), GOLDEN_INFERENCE_POOL_V1),
    (lambda: render_inference_pool(OWNER, RenderOptions(features=Features(
        inference_pool=("inference.networking.x-k8s.io", "v1alpha2")))),
     GOLDEN_INFERENCE_POOL_V1ALPHA2),
], ids=["service", "pdb", "service-monitor", "inference-pool-v1", "inference-pool-v1alpha2"])
def test_golden_objects(render: Any, golden: dict[str, Any]) -> None:
    assert render() == golden


def test_leader_worker_set_for_a_replica_spanning_nodes() -> None:
    pool = make_pool(tensor_parallel_size=8, pipeline_parallel_size=2, gpus_per_replica=16, replicas=1)
    lws = render_leader_worker_set(OWNER, make_spec(), pool, RenderOptions())
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    assert lws["kind"] == "LeaderWorkerSet"
    assert lws["metadata"]["name"] == "llama-default"
    assert lws["metadata"]["ownerReferences"] == [OWNER_REF]
    spec = lws["spec"]
    assert (spec["replicas"], spec["startupPolicy"]) == (1, "LeaderCreated")
    group = spec["leaderWorkerTemplate"]
    assert (group["size"], group["restartPolicy"]) == (2, "RecreateGroupOnPodRestart")
    leader, worker = group["leaderTemplate"], group["workerTemplate"]
    lc, wc = leader["spec"]["containers"][0], worker["spec"]["containers"][0]
    assert lc["resources"] == wc["resources"] == {
        "requests": {"cpu": "18", "memory": "40Gi", "nvidia.com/gpu": "8",
                     "ephemeral-storage": "20Gi"},
        "limits": {"nvidia.com/gpu": "8"},
    }
    for template in (leader, worker):  # the pod policy covers workers too
        assert template["spec"]["enableServiceLinks"] is False
        assert template["spec"]["automountServiceAccountToken"] is False
    assert lc["command"][:2] == ["/bin/bash", "-c"]
    assert "--distributed-executor-backend ray" in lc["command"][2]
    assert lc["args"] == list(ARGS)
    assert "LWS_LEADER_ADDRESS" in wc["command"][2] and wc["args"] == []
    assert leader["metadata"]["labels"]["kvcap.io/role"] == "server"
    assert worker["metadata"]["labels"]["kvcap.io/role"] == "worker"
    assert "ports" not in wc and "readinessProbe" not in wc
    assert lc["readinessProbe"] == probe("/v1/models", 3)


@pytest.mark.parametrize(("gpus", "per_node", "nodes"), [
    (1, 8, 1), (8, 8, 1), (16, 8, 2), (12, 8, 2), (24, 8, 3), (9, 8, 3), (7, 4, 7), (32, 8, 4),
])
def test_nodes_per_replica(gpus: int, per_node: int, nodes: int) -> None:
    assert nodes_per_replica(gpus, per_node) == nodes


def test_render_children_order_and_extras() -> None:
    plan = make_plan(make_pool(), make_pool(name="long", min_context_tokens=8193, max_model_len=131072,
                                            replicas=1))
    options = RenderOptions(features=Features(
        service_monitor=True, inference_pool=("inference.networking.k8s.io", "v1")))
    kinds = [(o["kind"], o["metadata"]["name"])
             for o in render_children(OWNER, make_spec(), plan, options)]
    assert kinds == [
        ("Deployment", "llama-default"), ("Deployment", "llama-long"),
        ("Service", "llama-default"), ("Service", "llama-long"),
        ("PodDisruptionBudget", "llama-default"), ("PodDisruptionBudget", "llama-long"),
        ("ServiceMonitor", "llama"), ("InferencePool", "llama"),
    ]


def test_render_children_uses_lws_only_for_multi_node_pools() -> None:
    plan = make_plan(make_pool(gpus_per_replica=16, tensor_parallel_size=16))
    objs = render_children(OWNER, make_spec(), plan, RenderOptions(features=Features(
        leader_worker_set=True)))
    assert [o["kind"] for o in objs] == ["LeaderWorkerSet", "Service", "PodDisruptionBudget"]


def test_infeasible_plan_renders_nothing() -> None:
    plan = CapacityPlan(feasible=False, reason="InsufficientGpuMemory", message="no", model=MODEL)
    assert render_children(OWNER, make_spec(), plan, RenderOptions()) == []


def test_names_fit_63_characters() -> None:
    long = "a" * 60
    name = child_name(long, "default")
    assert len(name) <= 63 and name.endswith("-default")
    assert child_name(long, "default") == name  # deterministic
    assert child_name(long, "long") != name
    assert fit_name("short") == "short"
    assert len(fit_name("b" * 80)) <= 63


def test_context_length_range_is_inclusive_min_max() -> None:
    assert context_length_range(make_pool(min_context_tokens=8193, max_model_len=131072)) == "8193-131072"
