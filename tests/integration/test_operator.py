"""The operator against a real control plane: kube-apiserver + etcd + scheduler + controller-manager,
kwok fake GPU nodes (2 x 8 NVIDIA-H100-80GB-HBM3, 1 x 4 NVIDIA-L4). The operator runs in-process under
kopf.testing.KopfRunner and watches only 'kvop-*' namespaces; every test gets its own namespace."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
from operator_helpers import (
    H100,
    L4,
    MD_PATH,
    Api,
    condition,
    is_current,
    report,
    small_spec,
    wait_for,
)

from kvcap.api.models import ModelDeploymentSpec
from kvcap.capacity import catalog
from kvcap.capacity.planner import plan_deployment
from kvcap.controller.podspec import serve_args
from kvcap.controller.reconcile import cluster_gpus, gpu_inventory

pytest_plugins = ["operator_fixtures"]
pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SELECTOR = "kvcap.io/model-deployment={name}"


# Generous: on k8s 1.36 the ReplicaSet controller's stale-cache guard (KEP-5647) sometimes requeues
# a ReplicaSet for ~60 s on the test control plane, delaying Deployment readiness that long.
READY_TIMEOUT = 150.0


def md_when(api: Api, ns: str, name: str, type_: str, status: str, reason: str | None = None,
            timeout: float = READY_TIMEOUT) -> dict[str, Any]:
    seen: list[Any] = []

    def check() -> dict[str, Any] | None:
        md = api.md(ns, name)
        seen[:] = [(md or {}).get("status", {}).get("conditions")]
        return md if is_current(md, type_, status, reason) else None

    try:
        return wait_for(f"{name}: {type_}={status} ({reason or 'any reason'})", check, timeout)  # type: ignore[no-any-return]
    except pytest.fail.Exception:
        pytest.fail(f"{name}: {type_}={status} ({reason}) not reached in {timeout}s; "
                    f"conditions: {seen[0]}", pytrace=False)


def expected_plan(api: Api, spec: dict[str, Any]) -> Any:
    nodes = api.items("/api/v1/nodes")
    model = ModelDeploymentSpec.model_validate(spec)
    return plan_deployment(model, cluster_gpus=cluster_gpus(gpu_inventory(nodes, "nvidia.com/gpu")))


def container(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def pods_ready(api: Api, ns: str, name: str, count: int) -> list[dict[str, Any]] | None:
    pods = [
        p
        for p in api.pods(ns, SELECTOR.format(name=name))
        if not p["metadata"].get("deletionTimestamp")
    ]
    ready = [
        p
        for p in pods
        if p.get("status", {}).get("phase") == "Running"
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions", [])
        )
    ]
    return ready if len(ready) == count == len(pods) else None


@pytest.mark.timeout(300)
def test_create_runs_the_planned_pools_on_fake_gpu_nodes(kvcap_api: Api, op_namespace: str) -> None:
    api, ns = kvcap_api, op_namespace
    spec = small_spec()
    t0 = time.monotonic()
    created = api.create_md(ns, "llama", spec)
    md = md_when(api, ns, "llama", "CapacityPlanned", "True", "PlanFits")
    report("create -> CapacityPlanned=True", time.monotonic() - t0)
    md = md_when(api, ns, "llama", "Ready", "True", "ReplicasReady")
    report("create -> Ready=True (pods scheduled and Ready on kwok nodes)", time.monotonic() - t0)

    plan = expected_plan(api, md["spec"])
    pool = plan.pools[0]
    assert [p.name for p in plan.pools] == ["default"]
    dep = api.deployment(ns, "llama-default")
    assert dep is not None
    c = container(dep)
    assert c["command"] == ["vllm", "serve"]
    assert c["args"] == serve_args(pool.vllm_args)  # the planned flags, the model positional
    assert c["args"][0] == spec["model"]["name"] and "--model" not in c["args"]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": str(pool.gpus_per_replica)}
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v1/models"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert dep["spec"]["replicas"] == pool.replicas
    refs = dep["metadata"]["ownerReferences"]
    assert refs == [
        {
            "apiVersion": "kvcap.io/v1alpha1",
            "kind": "ModelDeployment",
            "name": "llama",
            "uid": created["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["llm-d.ai/context-length-range"] == f"0-{pool.max_model_len}"
    assert (
        dep["metadata"]["annotations"]["kvcap.io/spec-hash"]
        == dep["spec"]["template"]["metadata"]["annotations"]["kvcap.io/spec-hash"]
    )
    managers = {m["manager"] for m in dep["metadata"]["managedFields"]}
    assert "kvcap" in managers

    pods = wait_for("pods Ready", lambda: pods_ready(api, ns, "llama", pool.replicas), READY_TIMEOUT)
    assert all(p["spec"]["nodeName"].startswith("gpu-h100-") for p in pods)

    svc = api.get(f"/api/v1/namespaces/{ns}/services/llama-default")
    assert svc is not None and svc["spec"]["type"] == "ClusterIP"
    assert (
        svc["spec"]["ports"][0]["port"] == 8000 and svc["spec"]["ports"][0]["targetPort"] == "http"
    )
    pdb = api.get(f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/llama-default")
    assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1

    status = md["status"]
    assert status["replicas"] == status["readyReplicas"] == pool.replicas
    assert status["totalGpus"] == plan.total_gpus
    assert status["plan"]["pools"][0]["deploymentName"] == "llama-default"
    assert status["plan"]["pools"][0]["kvCacheBytesPerGpu"] == pool.kv_bytes_per_gpu
    assert is_current(md, "Schedulable", "True", "GpusAvailable")
    assert H100 in condition(md, "Schedulable")["message"]
    assert "finalizers" not in md["metadata"]  # deletion is plain garbage collection

    events = api.items(f"/api/v1/namespaces/{ns}/events")
    reasons = [
        e["reason"]
        for e in events
        if e["involvedObject"]["name"] == "llama"
        and e["involvedObject"]["kind"] == "ModelDeployment"
    ]
    assert "PlanChanged" in reasons and "Ready" in reasons
    # resyncs are quiet: no status write while nothing changes
    version = api.md(ns, "llama")["metadata"]["resourceVersion"]  # type: ignore[index]
    time.sleep(5)  # > 2 resync periods
    assert api.md(ns, "llama")["metadata"]["resourceVersion"] == version  # type: ignore[index]


@pytest.mark.timeout(300)
def test_spec_edit_rolls_out_new_args(kvcap_api: Api, op_namespace: str) -> None:
    api, ns = kvcap_api, op_namespace
    api.create_md(ns, "edit", small_spec())
    md_when(api, ns, "edit", "Ready", "True")
    before = api.deployment(ns, "edit-default")
    assert before is not None
    t0 = time.monotonic()
    api.patch_md(ns, "edit", {"spec": {"workload": {"maxContextTokens": 16384}}})

    def rolled() -> dict[str, Any] | None:
        dep = api.deployment(ns, "edit-default")
        if dep is None or "16384" not in container(dep)["args"]:
            return None
        st = dep.get("status", {})
        done = (
            st.get("observedGeneration", 0) >= dep["metadata"]["generation"]
            and st.get("updatedReplicas")
            == st.get("replicas")
            == st.get("readyReplicas")
            == dep["spec"]["replicas"]
        )
        return dep if done else None

    after = wait_for("the Deployment to roll out --max-model-len 16384", rolled, READY_TIMEOUT)
    report("spec edit -> rollout complete", time.monotonic() - t0)
    plan = expected_plan(api, api.md(ns, "edit")["spec"])  # type: ignore[index]
    assert container(after)["args"] == serve_args(plan.pools[0].vllm_args)
    assert (
        after["metadata"]["annotations"]["kvcap.io/spec-hash"]
        != before["metadata"]["annotations"]["kvcap.io/spec-hash"]
    )
    md = md_when(api, ns, "edit", "Ready", "True")
    assert md["status"]["observedGeneration"] == 2
    assert md["status"]["plan"]["pools"][0]["maxModelLen"] == 16384
    pods = wait_for("only new pods", lambda: pods_ready(api, ns, "edit", plan.pools[0].replicas),
                    READY_TIMEOUT)
    template_hash = after["spec"]["template"]["metadata"]["annotations"]["kvcap.io/spec-hash"]
    assert {p["metadata"]["annotations"]["kvcap.io/spec-hash"] for p in pods} == {template_hash}


@pytest.mark.timeout(300)
def test_deleted_or_hand_edited_children_are_restored(kvcap_api: Api, op_namespace: str) -> None:
    api, ns = kvcap_api, op_namespace
    api.create_md(ns, "heal", small_spec())
    md_when(api, ns, "heal", "Ready", "True")
    svc_path = f"/api/v1/namespaces/{ns}/services/heal-default"
    old_uid = api.get(svc_path)["metadata"]["uid"]  # type: ignore[index]
    t0 = time.monotonic()
    api.delete(svc_path)
    wait_for(
        "the Service to be re-created",
        lambda: (s := api.get(svc_path)) is not None and s["metadata"]["uid"] != old_uid,
    )
    report("deleted Service -> re-created", time.monotonic() - t0)

    dep_path = f"/apis/apps/v1/namespaces/{ns}/deployments/heal-default"
    good = api.get(dep_path)
    assert good is not None
    tampered = copy.deepcopy(container(good))
    tampered["args"] = ["--model", "evil/model"]
    t0 = time.monotonic()
    api.call(
        "PATCH",
        dep_path,
        {
            "spec": {"replicas": 7, "template": {"spec": {"containers": [tampered]}}},
            "metadata": {"labels": {"kvcap.io/pool": "tampered"}},
        },
        content_type="application/strategic-merge-patch+json",
    )

    def restored() -> bool:
        dep = api.get(dep_path)
        return bool(
            dep
            and dep["spec"]["replicas"] == good["spec"]["replicas"]
            and container(dep)["args"] == container(good)["args"]
            and dep["metadata"]["labels"]["kvcap.io/pool"] == "default"
        )

    wait_for("the hand-edited Deployment to be restored", restored, 30)
    report("hand-edited Deployment -> restored", time.monotonic() - t0)


@pytest.mark.timeout(300)
def test_deleting_the_model_deployment_garbage_collects_children(
    kvcap_api: Api, op_namespace: str
) -> None:
    api, ns = kvcap_api, op_namespace
    api.create_md(ns, "gone", small_spec())
    md_when(api, ns, "gone", "Ready", "True")
    t0 = time.monotonic()
    api.delete(f"{MD_PATH.format(ns=ns)}/gone")
    wait_for("the ModelDeployment to go", lambda: api.md(ns, "gone") is None, 10)
    for path in (
        f"/apis/apps/v1/namespaces/{ns}/deployments/gone-default",
        f"/api/v1/namespaces/{ns}/services/gone-default",
        f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/gone-default",
    ):
        wait_for(f"{path} garbage-collected", lambda p=path: api.get(p) is None, 60)
    wait_for("pods gone", lambda: not api.pods(ns, SELECTOR.format(name="gone")), 60)
    report("delete -> children garbage-collected", time.monotonic() - t0)


@pytest.mark.timeout(300)
def test_long_pool_is_deleted_when_the_plan_stops_splitting(
    kvcap_api: Api, op_namespace: str
) -> None:
    api, ns = kvcap_api, op_namespace
    # A decoy with our labels but no ownerReference, named like nothing we render: must survive.
    decoy = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "split-decoy",
            "labels": {
                "kvcap.io/model-deployment": "split",
                "app.kubernetes.io/managed-by": "kvcap",
                "kvcap.io/pool": "long",
            },
        },
        "spec": {"ports": [{"port": 80}]},
    }
    api.create(f"/api/v1/namespaces/{ns}/services", decoy)
    spec = small_spec(
        maxContextTokens=32768, longContextPolicy="Required", longContextThresholdTokens=4096
    )
    api.create_md(ns, "split", spec)
    md = md_when(api, ns, "split", "Ready", "True")
    assert [p["name"] for p in md["status"]["plan"]["pools"]] == ["default", "long"]
    long_dep = api.deployment(ns, "split-long")
    assert long_dep is not None
    long_pool = md["status"]["plan"]["pools"][1]
    assert (
        long_dep["spec"]["template"]["metadata"]["labels"]["llm-d.ai/context-length-range"]
        == f"{long_pool['minContextTokens']}-{long_pool['maxModelLen']}"
    )

    t0 = time.monotonic()
    api.patch_md(
        ns,
        "split",
        {
            "spec": {
                "workload": {"longContextPolicy": "Disabled", "longContextThresholdTokens": None}
            }
        },
    )
    for path in (
        f"/apis/apps/v1/namespaces/{ns}/deployments/split-long",
        f"/api/v1/namespaces/{ns}/services/split-long",
        f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/split-long",
    ):
        wait_for(f"{path} deleted", lambda p=path: api.get(p) is None, 60)
    report("plan stops splitting -> long pool deleted", time.monotonic() - t0)
    md = md_when(api, ns, "split", "Ready", "True")
    assert [p["name"] for p in md["status"]["plan"]["pools"]] == ["default"]
    assert api.deployment(ns, "split-default") is not None
    assert api.get(f"/api/v1/namespaces/{ns}/services/split-decoy") is not None
    wait_for("the PoolDeleted event", lambda: any(
        e["reason"] == "PoolDeleted" for e in api.items(f"/api/v1/namespaces/{ns}/events")), 10)


@pytest.mark.timeout(300)
def test_same_named_objects_we_do_not_own_are_a_conflict(kvcap_api: Api, op_namespace: str) -> None:
    api, ns = kvcap_api, op_namespace
    theirs = api.create(
        f"/api/v1/namespaces/{ns}/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "clash-default", "labels": {"team": "theirs"}},
            "spec": {"ports": [{"port": 9999}]},
        },
    )
    api.create_md(ns, "clash", small_spec())
    md = md_when(api, ns, "clash", "ChildrenSynced", "False", "Conflict")
    assert "Service 'clash-default'" in condition(md, "ChildrenSynced")["message"]
    assert is_current(md, "Ready", "False", "Conflict")
    assert api.deployment(ns, "clash-default") is not None  # the rest is applied
    time.sleep(3)
    still = api.get(f"/api/v1/namespaces/{ns}/services/clash-default")
    assert still is not None
    assert still["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"]
    assert "ownerReferences" not in still["metadata"]
    api.delete(f"/api/v1/namespaces/{ns}/services/clash-default")
    md_when(api, ns, "clash", "ChildrenSynced", "True", "Applied")
    ours = api.get(f"/api/v1/namespaces/{ns}/services/clash-default")
    assert ours is not None and ours["spec"]["ports"][0]["port"] == 8000


@pytest.mark.timeout(300)
def test_paused_leaves_children_alone_but_reports(kvcap_api: Api, op_namespace: str) -> None:
    api, ns = kvcap_api, op_namespace
    api.create_md(ns, "hold", small_spec())
    md_when(api, ns, "hold", "Ready", "True")
    before = api.deployment(ns, "hold-default")
    api.patch_md(ns, "hold", {"spec": {"paused": True, "workload": {"maxContextTokens": 16384}}})
    md = md_when(api, ns, "hold", "ChildrenSynced", "Unknown", "Paused")
    assert is_current(md, "Progressing", "False", "Paused")
    assert md["status"]["plan"]["pools"][0]["maxModelLen"] == 16384  # the plan is still reported
    api.delete(f"/api/v1/namespaces/{ns}/services/hold-default")
    time.sleep(5)
    assert (
        api.deployment(ns, "hold-default")["metadata"]["generation"]
        == before["metadata"]["generation"]
    )  # type: ignore[index]
    assert api.get(f"/api/v1/namespaces/{ns}/services/hold-default") is None
    api.patch_md(ns, "hold", {"spec": {"paused": False}})
    wait_for(
        "rollout after unpausing",
        lambda: "16384" in container(api.deployment(ns, "hold-default"))["args"],
    )  # type: ignore[arg-type]
    wait_for("Service back", lambda: api.get(f"/api/v1/namespaces/{ns}/services/hold-default"))


@pytest.mark.timeout(300)
def test_not_enough_gpus_leaves_pods_pending_and_says_so(kvcap_api: Api, op_namespace: str) -> None:
    api, ns = kvcap_api, op_namespace
    spec = {
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
        "workload": {"maxContextTokens": 8192, "targetConcurrency": 64},
        "gpu": {"products": ["L4"], "perNode": 4},
    }
    api.create_md(ns, "tight", spec)
    md = md_when(api, ns, "tight", "Schedulable", "False", "InsufficientGpus")
    message = condition(md, "Schedulable")["message"]
    plan = expected_plan(api, spec)
    need = plan.total_gpus
    assert need > 4
    assert message == f"needs {need} x {L4}, 4 allocatable on Ready nodes"
    assert is_current(md, "CapacityPlanned", "True")  # the plan exists, the cluster is too small

    def pending() -> list[dict[str, Any]]:
        return [
            p
            for p in api.pods(ns, SELECTOR.format(name="tight"))
            if any(
                c["type"] == "PodScheduled"
                and c["status"] == "False"
                and c.get("reason") == "Unschedulable"
                for c in p.get("status", {}).get("conditions", [])
            )
        ]

    stuck = wait_for("unschedulable pods", pending, 60)
    assert "nvidia.com/gpu" in stuck[0]["status"]["conditions"][0]["message"]
    md = md_when(api, ns, "tight", "Ready", "False", "ReplicasNotReady")
    assert md["status"]["readyReplicas"] < md["status"]["replicas"]


@pytest.mark.timeout(300)
def test_config_map_config_and_its_errors(kvcap_api: Api, op_namespace: str) -> None:
    api, ns = kvcap_api, op_namespace
    config = catalog.get_model("meta-llama/Llama-3.1-8B-Instruct").config
    cm_path = f"/api/v1/namespaces/{ns}/configmaps"
    api.create(
        cm_path,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cfg"},
            "data": {"config.json": "{not json"},
        },
    )
    spec = small_spec()
    spec["model"] = {
        "name": "my-org/private-llama",
        "configMapRef": {"name": "cfg", "key": "config.json"},
    }
    api.create_md(ns, "cfg", spec)
    md = md_when(api, ns, "cfg", "CapacityPlanned", "False", "InvalidModelConfig")
    assert (
        "ConfigMap 'cfg' key 'config.json' is not valid JSON"
        in condition(md, "CapacityPlanned")["message"]
    )
    api.merge(f"{cm_path}/cfg", {"data": {"config.json": json.dumps(config)}})
    md = md_when(api, ns, "cfg", "Ready", "True")  # the resync picks the fix up
    dep = api.deployment(ns, "cfg-default")
    assert dep is not None and "my-org/private-llama" in container(dep)["args"]
