"""Issue 10, parts 5-7 on the real control plane: the pod policy as the apiserver admits it, status
that says why pods fail (kstatus Stalled/Reconciling), and secrets that never leak.

kwok plays the kubelet: an image on the reserved `.invalid` TLD waits in ImagePullBackOff
(devcluster's `kvcap-pod-image-pull-backoff` stage), as a kubelet reports an unpullable image."""

from __future__ import annotations

import base64
import re
from typing import Any

import devcluster
import pytest
from operator_helpers import H100 as H100_LABEL
from operator_helpers import MD_PATH, Api, condition, is_current, small_spec, wait_for

from kvcap.api import constants as kc

pytest_plugins = ["operator_fixtures"]
pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SELECTOR = "kvcap.io/model-deployment={name}"
TIMEOUT = 150.0


def md_when(api: Api, ns: str, name: str, type_: str, status: str, reason: str | None = None,
            timeout: float = TIMEOUT) -> dict[str, Any]:
    last: list[Any] = [None]

    def check() -> dict[str, Any] | None:
        md = api.md(ns, name)
        last[0] = ((md or {}).get("status") or {}).get("conditions")
        return md if is_current(md, type_, status, reason) else None

    try:
        return wait_for(f"{name}: {type_}={status} ({reason})", check, timeout)  # type: ignore[no-any-return]
    except pytest.fail.Exception:
        pytest.fail(f"{name}: {type_}={status} ({reason}) not reached in {timeout}s; "
                    f"conditions: {last[0]}", pytrace=False)


def events(api: Api, ns: str, name: str) -> list[dict[str, Any]]:
    return [e for e in api.items(f"/api/v1/namespaces/{ns}/events")
            if (e.get("involvedObject") or {}).get("name") == name]


def kubelet_service_env(pod: dict[str, Any], services: list[dict[str, Any]]) -> dict[str, str]:
    """The service-link variables a kubelet injects into a container of `pod`: for every Service of
    the namespace with a cluster IP, `<NAME>_SERVICE_HOST`, `<NAME>_PORT=tcp://IP:PORT`, ... unless
    `enableServiceLinks` is false (the `kubernetes` Service of `default` is always added; it is not
    in these namespaces). kubelet `pkg/kubelet/envvars/envvars.go` FromServices and
    `kubelet_pods.go` getServiceEnvVarMap."""
    if pod["spec"].get("enableServiceLinks", True) is False:
        return {}
    env: dict[str, str] = {}
    for svc in services:
        ip = svc["spec"].get("clusterIP")
        if not ip or ip == "None":
            continue
        prefix = svc["metadata"]["name"].upper().replace("-", "_")
        port = svc["spec"]["ports"][0]
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(port["port"])
        env[f"{prefix}_PORT"] = f"{port.get('protocol', 'TCP').lower()}://{ip}:{port['port']}"
    return env


@pytest.mark.timeout(300)
def test_a_service_named_vllm_does_not_reach_the_vllm_container(
    kvcap_api: Api, op_namespace: str
) -> None:
    """With service links a `vllm` Service sets VLLM_PORT=tcp://..., which vLLM refuses."""
    api, ns = kvcap_api, op_namespace
    api.create(f"/api/v1/namespaces/{ns}/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "vllm"},
        "spec": {"ports": [{"port": 8000, "protocol": "TCP"}], "selector": {"app": "other"}},
    })
    api.create_md(ns, "llama", small_spec())
    pods = wait_for("the pods", lambda: api.pods(ns, SELECTOR.format(name="llama")), TIMEOUT)
    services = api.items(f"/api/v1/namespaces/{ns}/services")
    assert any(s["metadata"]["name"] == "vllm" for s in services)
    for pod in pods:
        assert pod["spec"]["enableServiceLinks"] is False
        assert "VLLM_PORT" not in kubelet_service_env(pod, services)
        names = {e["name"] for e in pod["spec"]["containers"][0].get("env") or ()}
        assert "VLLM_PORT" not in names
    # the check above can fail: the same pod with service links would get it
    linked = {**pods[0], "spec": {**pods[0]["spec"], "enableServiceLinks": True}}
    assert kubelet_service_env(linked, services)["VLLM_PORT"].startswith("tcp://")


@pytest.mark.timeout(300)
def test_pods_are_admitted_under_baseline_and_fail_visibly_under_restricted(
    kvcap_api: Api, kvcap_operator: Any, fresh_namespace: Any
) -> None:
    """Pod Security admission is the apiserver's own (PodSecurity plugin, on by default):
    `baseline` admits kvcap's pods; `restricted` (runAsNonRoot) rejects the image's root user, and
    the ModelDeployment says FailedCreate in Ready and Stalled instead of '0 of 2 replicas ready';
    with `spec.vllm.runAsUser` `restricted` admits them too.
    https://kubernetes.io/docs/concepts/security/pod-security-admission/"""
    api = kvcap_api
    for level, ns, uid in (("baseline", "kvop-psa-b", None), ("restricted", "kvop-psa-r", None),
                           ("restricted", "kvop-psa-u", 1001)):
        ns = fresh_namespace(ns)  # named kvop-*: the shared operator watches it
        api.merge(f"/api/v1/namespaces/{ns}", {"metadata": {"labels": {
            "pod-security.kubernetes.io/enforce": level,
            "pod-security.kubernetes.io/enforce-version": "latest",
        }}})
        spec = small_spec()
        if uid is not None:
            spec["vllm"] = {"runAsUser": uid}
        api.create_md(ns, "llama", spec)
        if uid is not None:
            md = md_when(api, ns, "llama", "Ready", "True")
            pods = api.items(f"/api/v1/namespaces/{ns}/pods")
            assert pods and all(p["spec"]["securityContext"]["runAsUser"] == uid for p in pods)
            assert is_current(md, kc.STALLED, "False")
        elif level == "baseline":
            md = md_when(api, ns, "llama", "Ready", "True")
            assert md["status"]["readyReplicas"] == 2
            # the weights that size the pods are stored (not pruned) and pinned with the plan
            assert md["status"]["plan"]["modelBytes"] > 15 * 10**9
            assert is_current(md, kc.STALLED, "False")
        else:
            md = md_when(api, ns, "llama", kc.STALLED, "True", kc.FAILED_CREATE)
            ready = condition(md, "Ready")
            assert (ready["status"], ready["reason"]) == ("False", kc.FAILED_CREATE)
            assert "violates PodSecurity" in ready["message"]
            assert is_current(md, kc.RECONCILING_TYPE, "False")
            def failed_create(ns: str = ns) -> list[dict[str, Any]]:
                return [e for e in events(api, ns, "llama") if e["reason"] == kc.FAILED_CREATE]

            warned = wait_for("a FailedCreate event on the ModelDeployment", failed_create, 30)
            assert warned[0]["type"] == "Warning"


@pytest.mark.timeout(300)
def test_image_pull_backoff_is_the_reason_not_zero_of_two_ready(
    kvcap_api: Api, op_namespace: str
) -> None:
    api, ns = kvcap_api, op_namespace
    spec = small_spec()
    spec["vllm"] = {"image": f"{devcluster.UNPULLABLE_REGISTRY}/vllm/vllm-openai:v0.11.0"}
    api.create_md(ns, "broken", spec)
    md = md_when(api, ns, "broken", "Ready", "False", "ImagePullBackOff")
    message = condition(md, "Ready")["message"]
    assert "registry.invalid/vllm/vllm-openai:v0.11.0" in message
    assert message.startswith("0 of 2 replicas ready; pool 'default'")
    assert condition(md, "Progressing")["reason"] == "ImagePullBackOff"
    assert is_current(md, kc.STALLED, "True", "ImagePullBackOff")
    assert is_current(md, kc.RECONCILING_TYPE, "False")
    pulled = wait_for("an ImagePullBackOff event", lambda: [
        e for e in events(api, ns, "broken") if e["reason"] == "ImagePullBackOff"], 30)
    assert pulled[0]["type"] == "Warning" and len(pulled) == 1


@pytest.mark.timeout(300)
def test_no_gpus_of_any_allowed_product_is_stalled(kvcap_api: Api, op_namespace: str) -> None:
    api, ns = kvcap_api, op_namespace
    spec = small_spec()
    spec["gpu"] = {"products": ["A100-80GB"]}  # the cluster has H100s and L4s only
    api.create_md(ns, "nogpu", spec)
    # The plan is made for the spec, not the live inventory (it is pinned); the inventory says
    # that nothing can run it, and that is what stalls it.
    md = md_when(api, ns, "nogpu", kc.STALLED, "True", kc.INSUFFICIENT_GPUS)
    assert "0 allocatable on Ready nodes" in condition(md, kc.STALLED)["message"]
    assert is_current(md, kc.RECONCILING_TYPE, "False")
    assert is_current(md, "Ready", "False")
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"]


@pytest.mark.timeout(300)
def test_a_non_utf8_token_secret_never_leaks_into_status_or_events(
    kvcap_api: Api, op_namespace: str
) -> None:
    api, ns = kvcap_api, op_namespace
    secret = b"\xff\xfehf_SEKRETtoken\xfa"
    api.create(f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf"},
        "data": {"token": base64.b64encode(secret).decode()},
    })
    spec = small_spec()
    spec["model"] = {"name": "acme/private-model",  # not in the catalog: the Hub path
                     "hfTokenSecretRef": {"name": "hf", "key": "token"}}
    api.create_md(ns, "gated", spec)
    md = md_when(api, ns, "gated", "CapacityPlanned", "False")
    assert condition(md, "CapacityPlanned")["message"] == (
        "Secret 'hf' key 'token' is not UTF-8 text")
    text = repr(md["status"]) + repr(events(api, ns, "gated"))
    for leak in ("SEKRET", "0xff", "\\xff", "0xfe", "position", "ÿ"):
        assert leak not in text


def test_abbreviated_planned_flags_are_rejected_by_the_apiserver(
    kvcap_api: Api, kvcap_crd: Any, fresh_namespace: Any
) -> None:
    api = kvcap_api
    ns = fresh_namespace("abbrev")
    spec = small_spec()
    spec["vllm"] = {"extraArgs": ["--gpu-memory-util=0.99"]}
    with pytest.raises(devcluster.ApiError) as err:
        api.create_md(ns, "abbrev", spec)
    assert err.value.status == 422
    assert "must not set or abbreviate '--gpu-memory-util'" in err.value.body
    for field, value in (("name", "acme/../../admin"), ("revision", "..")):
        bad = small_spec()
        bad["model"][field] = value
        with pytest.raises(devcluster.ApiError) as err:
            api.create_md(ns, "dotdot", bad)
        assert err.value.status == 422
        assert f"{field} must not contain '..' path segments" in err.value.body
    spec["vllm"] = {"extraArgs": ["--model-impl=vllm", "--enable-chunked-prefill"]}
    assert api.create_md(ns, "fine", spec)["metadata"]["name"] == "fine"
    assert api.get(f"{MD_PATH.format(ns=ns)}/fine") is not None


@pytest.mark.timeout(420)
def test_a_rollout_progresses_on_a_fully_used_gpu_pool(kvcap_api: Api, op_namespace: str) -> None:
    """Every H100 of the cluster in use: the old `maxSurge: 1, maxUnavailable: 0` waited forever
    for a spare GPU; now one old pod goes first and the rollout completes."""
    api, ns = kvcap_api, op_namespace
    api.create_md(ns, "full", small_spec())
    md = md_when(api, ns, "full", "Ready", "True")
    total = sum(int(n["status"]["allocatable"].get("nvidia.com/gpu", 0))
                for n in api.items("/api/v1/nodes")
                if n["metadata"]["labels"].get(devcluster.LABEL_PRODUCT) == H100_LABEL)
    filler = total - md["status"]["totalGpus"]
    labels = {"app": "filler"}
    api.create(f"/apis/apps/v1/namespaces/{ns}/deployments", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "filler"},
        "spec": {"replicas": filler, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"nodeSelector": {devcluster.LABEL_PRODUCT: H100_LABEL},
                     "tolerations": [devcluster.KWOK_TOLERATION],
                     "containers": [{"name": "c", "image": "busybox",
                                     "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}})
    wait_for(f"{filler} filler pods holding every other H100", lambda: (api.get(
        f"/apis/apps/v1/namespaces/{ns}/deployments/filler") or {}).get("status", {}).get(
        "readyReplicas") == filler, TIMEOUT)

    api.patch_md(ns, "full", {"spec": {"vllm": {"env": [{"name": "ROLL", "value": "1"}]}}})
    md = md_when(api, ns, "full", "Progressing", "False", kc.ROLLOUT_COMPLETE, timeout=240)
    assert md["metadata"]["generation"] == 2
    dep = api.deployment(ns, "full-default")
    assert dep is not None
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 1}
    assert dep["status"].get("updatedReplicas") == 2 and dep["status"].get("readyReplicas") == 2
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "ROLL", "value": "1"} in env
    assert is_current(md, "Ready", "True")


@pytest.mark.timeout(300)
def test_a_gpu_quota_shows_as_failed_create(kvcap_api: Api, op_namespace: str) -> None:
    """A ResourceQuota allows one GPU; the plan needs two: the ReplicaSet cannot create the second
    pod, and the ModelDeployment says so with the quota's own words."""
    api, ns = kvcap_api, op_namespace
    api.create(f"/api/v1/namespaces/{ns}/resourcequotas", {
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "gpus"},
        "spec": {"hard": {"requests.nvidia.com/gpu": "1"}}})
    wait_for("the quota to be counted", lambda: (api.get(
        f"/api/v1/namespaces/{ns}/resourcequotas/gpus") or {}).get("status", {}).get("hard"), 30)
    api.create_md(ns, "quota", small_spec())
    md = md_when(api, ns, "quota", kc.STALLED, "True", kc.FAILED_CREATE)
    ready = condition(md, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", kc.FAILED_CREATE)
    assert "exceeded quota: gpus" in ready["message"]
    # the pod the quota admitted may still be starting
    assert re.match(r"[01] of 2 replicas ready; pool 'default': Deployment 'quota-default' "
                    r"cannot create pods: ", ready["message"])
