"""The test harness is a real Kubernetes control plane, not a mock: prove it."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import devcluster
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from operator_helpers import H100, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def gpu_pod_spec(gpus: int, product: str = H100) -> dict[str, Any]:
    return {
        "nodeSelector": {devcluster.LABEL_PRODUCT: product},
        "tolerations": [devcluster.KWOK_TOLERATION],
        "containers": [
            {
                "name": "vllm",
                "image": "vllm/vllm-openai:v0.11.0",
                "resources": {"limits": {devcluster.GPU_RESOURCE: str(gpus)}},
            }
        ],
    }


# --------------------------------------------------------------------------- apiserver only


@pytest.mark.timeout(240)
def test_apiserver_reports_the_version_that_was_built(envtest_cluster, envtest_client):
    built = subprocess.run(
        [str(envtest_cluster.bin_dir / "kube-apiserver"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    served = client.VersionApi(envtest_client).get_code()
    assert re.fullmatch(r"v1\.\d+\.\d+", built), f"not a release version: {built!r}"
    assert served.git_version == built
    assert served.minor == built.split(".")[1]


WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.kvcap.io"},
    "spec": {
        "group": "test.kvcap.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "minReplicas": {"type": "integer", "minimum": 0, "default": 1},
                                    "maxReplicas": {"type": "integer", "minimum": 1},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.minReplicas <= self.maxReplicas",
                                        "message": "`minReplicas` must be at most `maxReplicas`",
                                    }
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


@pytest.mark.timeout(240)
def test_crd_cel_rule_rejects_a_bad_object(envtest_cluster, envtest_client, k8s_namespace):
    ext = client.ApiextensionsV1Api(envtest_client)
    try:
        ext.create_custom_resource_definition(WIDGET_CRD)
    except ApiException as e:
        assert e.status == 409, e  # another test run in this cluster (KVCAP_K8S_ATTACH) made it
    wait_for(
        "the Widget CRD to be Established",
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in ext.read_custom_resource_definition("widgets.test.kvcap.io").status.conditions
            or []
        ),
    )

    ns = k8s_namespace
    objs = client.CustomObjectsApi(envtest_client)

    def widget(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "test.kvcap.io/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": spec,
        }

    # The CRD may be Established a moment before its REST endpoint serves; retry 404 briefly.
    good = wait_for(
        "the widgets endpoint",
        lambda: _create_or_none(objs, ns, widget("good", {"maxReplicas": 3})),
    )
    assert good["spec"] == {"minReplicas": 1, "maxReplicas": 3}  # defaulted by the apiserver

    with pytest.raises(ApiException) as err:
        objs.create_namespaced_custom_object(
            "test.kvcap.io",
            "v1",
            ns,
            "widgets",
            widget("bad", {"minReplicas": 5, "maxReplicas": 2}),
        )
    assert err.value.status == 422
    assert "`minReplicas` must be at most `maxReplicas`" in err.value.body


def _create_or_none(objs: client.CustomObjectsApi, ns: str, body: dict[str, Any]) -> Any:
    try:
        return objs.create_namespaced_custom_object("test.kvcap.io", "v1", ns, "widgets", body)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


@pytest.mark.timeout(240)
def test_rbac_is_enforced_for_service_accounts(envtest_cluster, k8s_namespace):
    ns = k8s_namespace
    kubeconfig = envtest_cluster.service_account_kubeconfig(ns, "nobody")
    from kubernetes import config

    sa_client = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        core = client.CoreV1Api(sa_client)
        with pytest.raises(ApiException) as err:
            core.list_namespaced_config_map(ns)
        assert err.value.status == 403
        assert f"system:serviceaccount:{ns}:nobody" in err.value.body

        # Grant exactly `list configmaps` in this namespace: now it works, and nothing more does.
        rbac = {"apiGroup": "rbac.authorization.k8s.io"}
        envtest_cluster.request(
            "POST",
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
            {
                "metadata": {"name": "cm-reader"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
            },
        )
        envtest_cluster.request(
            "POST",
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
            {
                "metadata": {"name": "cm-reader"},
                "roleRef": {**rbac, "kind": "Role", "name": "cm-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": ns}],
            },
        )
        wait_for("the RoleBinding to take effect", lambda: _can_list_config_maps(core, ns), 10)
        with pytest.raises(ApiException) as err:
            core.list_namespaced_secret(ns)
        assert err.value.status == 403
    finally:
        sa_client.close()


def _can_list_config_maps(core: client.CoreV1Api, ns: str) -> bool:
    try:
        core.list_namespaced_config_map(ns)
        return True
    except ApiException as e:
        if e.status == 403:
            return False
        raise


@pytest.mark.timeout(60)
def test_missing_binaries_fail_loudly_with_the_build_hint(tmp_path):
    with pytest.raises(devcluster.MissingBinaryError, match=r"hack/build-k8s\.sh"):
        devcluster.Cluster.start(tier="envtest", bin_dir=tmp_path, workdir=tmp_path / "wd")


@pytest.mark.timeout(120)
def test_cli_up_and_down_from_another_process(envtest_cluster, tmp_path):
    """`devcluster.py up` leaves a cluster running; `down` (another process) stops every PID it started."""
    script = REPO / "hack" / "devcluster.py"
    wd = tmp_path / "sandbox"
    up = subprocess.run(
        [
            sys.executable,
            str(script),
            "up",
            "--tier",
            "envtest",
            "--dir",
            str(wd),
            "--bin-dir",
            str(envtest_cluster.bin_dir),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert up.returncode == 0, up.stderr
    other = devcluster.Cluster.attach(wd)
    pids = [p.pid for p in other.procs]
    assert {p.name for p in other.procs} == {"etcd", "kube-apiserver"}
    assert all(p.alive() for p in other.procs)
    assert other.version()["gitVersion"] == envtest_cluster.version()["gitVersion"]

    down = subprocess.run(
        [sys.executable, str(script), "down", "--dir", str(wd)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 0, down.stderr
    assert not any(
        Path(f"/proc/{pid}").exists() and devcluster._proc_start_time(pid) for pid in pids
    )
    assert not (wd / devcluster.STATE_FILE).exists()


# --------------------------------------------------------------------------- full control plane


@pytest.mark.e2e
def test_fake_gpu_nodes_look_like_gpu_feature_discovery_made_them(e2e_client):
    nodes = {n.metadata.name: n for n in client.CoreV1Api(e2e_client).list_node().items}
    h100 = [n for n in nodes.values() if n.metadata.labels.get(devcluster.LABEL_PRODUCT) == H100]
    l4 = [
        n for n in nodes.values() if n.metadata.labels.get(devcluster.LABEL_PRODUCT) == "NVIDIA-L4"
    ]
    assert len(h100) >= 2 and len(l4) >= 1
    for n in h100:
        assert n.status.allocatable[devcluster.GPU_RESOURCE] == "8"
        assert n.metadata.labels[devcluster.LABEL_MEMORY] == "81559"
        assert n.metadata.labels[devcluster.LABEL_COUNT] == "8"
        assert any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
    assert l4[0].status.capacity[devcluster.GPU_RESOURCE] == "4"


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_gpu_deployment_is_scheduled_on_a_fake_gpu_node_and_becomes_ready(
    e2e_cluster, e2e_client, k8s_namespace
):
    ns = k8s_namespace
    apps, core = client.AppsV1Api(e2e_client), client.CoreV1Api(e2e_client)
    labels = {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": "llama"}
    apps.create_namespaced_deployment(
        ns,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "llama-vllm", "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": gpu_pod_spec(8)},
            },
        },
    )

    def ready_replicas() -> int:
        return apps.read_namespaced_deployment_status("llama-vllm", ns).status.ready_replicas or 0

    wait_for("Deployment llama-vllm to have 1 ready replica", ready_replicas, timeout=120)
    (pod,) = core.list_namespaced_pod(ns, label_selector="app.kubernetes.io/instance=llama").items
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels[devcluster.LABEL_PRODUCT] == H100
    assert node.metadata.annotations[devcluster.KWOK_ANNOTATION] == "fake"
    assert pod.status.phase == "Running"
    assert pod.status.pod_ip.startswith("192.0.2.")
    assert any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_pod_wanting_more_gpus_than_any_node_has_stays_pending(e2e_client, k8s_namespace):
    ns = k8s_namespace
    core = client.CoreV1Api(e2e_client)
    core.create_namespaced_pod(
        ns,
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "huge"}, "spec": gpu_pod_spec(16)},
    )

    def unschedulable_message() -> str | None:
        pod = core.read_namespaced_pod_status("huge", ns)
        for c in pod.status.conditions or []:
            if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                return c.message
        return None

    message = wait_for("the scheduler to mark pod 'huge' Unschedulable", unschedulable_message)
    assert "Insufficient nvidia.com/gpu" in message
    pod = core.read_namespaced_pod("huge", ns)
    assert pod.status.phase == "Pending" and not pod.spec.node_name


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_owner_reference_garbage_collection_deletes_children(e2e_client, k8s_namespace):
    ns = k8s_namespace
    core, apps = client.CoreV1Api(e2e_client), client.AppsV1Api(e2e_client)
    owner = core.create_namespaced_config_map(ns, {"metadata": {"name": "owner"}})
    ref = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": "owner",
            "uid": owner.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    core.create_namespaced_config_map(ns, {"metadata": {"name": "child", "ownerReferences": ref}})
    labels = {"app": "child"}
    apps.create_namespaced_deployment(
        ns,
        {
            "metadata": {"name": "child", "ownerReferences": ref},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": gpu_pod_spec(1)},
            },
        },
    )
    wait_for("the child Deployment's pod", lambda: core.list_namespaced_pod(ns).items)

    core.delete_namespaced_config_map("owner", ns, propagation_policy="Foreground")

    def gone() -> bool:
        cms = {c.metadata.name for c in core.list_namespaced_config_map(ns).items}
        return (
            not {"owner", "child"} & cms
            and not apps.list_namespaced_deployment(ns).items
            and not apps.list_namespaced_replica_set(ns).items
            and not core.list_namespaced_pod(ns).items
        )

    wait_for("the garbage collector to delete the children (and their ReplicaSet and pods)", gone)


# --------------------------------------------------------------------------- node health (issue 10, part 9)


def _deployment(
    name: str, replicas: int, image: str = "vllm/vllm-openai:v0.11.0"
) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": name}
    spec = gpu_pod_spec(1)
    spec["containers"][0]["image"] = image
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


def _ready(obj: dict[str, Any]) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or ():
        if cond["type"] == "Ready":
            return str(cond["status"])
    return None


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_pods_become_ready_again_after_their_node_missed_heartbeats(e2e_cluster, tmp_path):
    """kwok stalls (SIGSTOP: as on a starved machine), its node goes Unknown and the node lifecycle
    controller marks the pods NotReady; once kwok runs again the node and the SAME pods are Ready
    again. Before the `kvcap-pod-ready-again` stage they stayed NotReady for good."""
    # A cluster of its own with short lease/grace periods, so the node is lost in seconds.
    health = devcluster.NodeHealth(lease_seconds=4, grace_seconds=8, monitor_seconds=2)
    with devcluster.Cluster.start(
        "e2e", "H100:1", tmp_path / "k8s", bin_dir=e2e_cluster.bin_dir, node_health=health
    ) as c:
        ns = "heartbeats"
        c.ensure_namespace(ns)
        c.request("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", _deployment("llama", 2))
        pods_path = f"/api/v1/namespaces/{ns}/pods"

        def pods() -> list[dict[str, Any]]:
            return c.request("GET", pods_path)["items"]  # type: ignore[no-any-return]

        def all_ready() -> list[dict[str, Any]] | None:
            got = pods()
            return got if len(got) == 2 and all(_ready(p) == "True" for p in got) else None

        before = {p["metadata"]["uid"] for p in wait_for("2 Ready pods", all_ready, 120)}
        node = "gpu-h100-0"
        with c.suspended("kwok"):
            wait_for(
                "the node lifecycle controller to mark the pods NotReady",
                lambda: all(_ready(p) == "False" for p in pods()),
                60,
            )
            assert _ready(c.request("GET", f"/api/v1/nodes/{node}")) == "Unknown"
        wait_for(
            "the node to be Ready again",
            lambda: _ready(c.request("GET", f"/api/v1/nodes/{node}")) == "True",
            60,
        )
        after = wait_for("the same 2 pods Ready again", all_ready, 60)
        assert {p["metadata"]["uid"] for p in after} == before  # recovered, not replaced


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_a_minute_long_kwok_stall_flips_no_node_and_no_pod(e2e_cluster, k8s_namespace):
    """The shared clusters ride out a kwok stalled for longer than the upstream 50 s grace period
    (as on a busy 2-core machine): no node and no pod leaves Ready."""
    c, ns = e2e_cluster, k8s_namespace
    assert devcluster.NodeHealth().grace_seconds >= 3 * devcluster.NodeHealth().lease_seconds
    c.request("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", _deployment("steady", 2))
    pods_path = f"/api/v1/namespaces/{ns}/pods"

    def pods_ready() -> bool:
        got = c.request("GET", pods_path)["items"]
        return len(got) == 2 and all(_ready(p) == "True" for p in got)

    wait_for("2 Ready pods", pods_ready, 120)
    flips: list[str] = []
    stall = 60.0  # > the 50 s kube-controller-manager default --node-monitor-grace-period
    with c.suspended("kwok"):
        end = time.monotonic() + stall
        while time.monotonic() < end:
            for node in c.request("GET", "/api/v1/nodes")["items"]:
                if _ready(node) != "True":
                    flips.append(f"node {node['metadata']['name']}: {_ready(node)}")
            if not pods_ready():
                flips.append("a pod left Ready")
            time.sleep(3)
    assert flips == []


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_an_unpullable_image_waits_in_image_pull_backoff(e2e_cluster, k8s_namespace):
    """kwok answers as a kubelet would for an image on the reserved `.invalid` TLD: Pending, the
    container waiting in ImagePullBackOff, never Ready."""
    ns = k8s_namespace
    image = f"{devcluster.UNPULLABLE_REGISTRY}/vllm/vllm-openai:v0.11.0"
    e2e_cluster.request(
        "POST", f"/apis/apps/v1/namespaces/{ns}/deployments", _deployment("broken", 1, image)
    )

    def waiting() -> dict[str, Any] | None:
        for pod in e2e_cluster.request("GET", f"/api/v1/namespaces/{ns}/pods")["items"]:
            for st in (pod.get("status") or {}).get("containerStatuses") or ():
                if (st.get("state") or {}).get("waiting", {}).get("reason") == "ImagePullBackOff":
                    return pod  # type: ignore[no-any-return]
        return None

    pod = wait_for("a pod in ImagePullBackOff", waiting, 90)
    assert pod["status"]["phase"] == "Pending"
    assert _ready(pod) == "False"
    assert image in pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
