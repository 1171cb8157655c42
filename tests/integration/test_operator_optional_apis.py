"""Optional APIs, found by discovery at run time: LeaderWorkerSet for replicas that span nodes,
ServiceMonitor, InferencePool. Stand-in CRDs (permissive schemas; no controllers behind them) are
installed mid-test and removed afterwards."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from operator_helpers import (
    Api,
    apply_crd,
    condition,
    is_current,
    report,
    wait_for,
)

pytest_plugins = ["operator_fixtures"]
pytestmark = [pytest.mark.integration, pytest.mark.e2e]

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def stand_in_crd(group: str, version: str, plural: str, kind: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"{plural}.{group}"}
    if group.endswith(".k8s.io") and not group.endswith(".x-k8s.io"):
        meta["annotations"] = {"api-approved.kubernetes.io": "unapproved, kvcap test stand-in"}
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": meta,
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind,
                      "listKind": f"{kind}List"},
            "versions": [{
                "name": version, "served": True, "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }],
        },
    }


STAND_INS = [
    stand_in_crd("leaderworkerset.x-k8s.io", "v1", "leaderworkersets", "LeaderWorkerSet"),
    stand_in_crd("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor"),
    stand_in_crd("inference.networking.k8s.io", "v1", "inferencepools", "InferencePool"),
]


@pytest.fixture
def stand_in_crds(kvcap_api: Api) -> Iterator[Any]:
    def install() -> None:
        for crd in STAND_INS:
            apply_crd(kvcap_api, crd)

    yield install
    for crd in STAND_INS:
        kvcap_api.delete(f"{CRD_PATH}/{crd['metadata']['name']}")
    for crd in STAND_INS:
        wait_for(f"CRD {crd['metadata']['name']} removed",
                 lambda c=crd: kvcap_api.get(f"{CRD_PATH}/{c['metadata']['name']}") is None, 60)


@pytest.mark.timeout(180)
def test_multi_node_replicas_wait_for_leader_worker_set_and_extras_appear(
    kvcap_api: Api, op_namespace: str, stand_in_crds: Any
) -> None:
    api, ns = kvcap_api, op_namespace
    spec = {"model": {"name": "meta-llama/Llama-3.1-70B-Instruct"},
            "workload": {"maxContextTokens": 8192, "targetConcurrency": 16},
            # 131 GiB of weights: more than one 80 GB GPU holds, whatever the overhead model says,
            # so one GPU per node means a multi-node replica
            "gpu": {"products": ["H100-80GB"], "perNode": 1}}
    api.create_md(ns, "big", spec)
    wait_for("NeedsMultiNode", lambda: is_current(api.md(ns, "big"), "CapacityPlanned", "False",
                                                  "NeedsMultiNode"), 60)
    md = api.md(ns, "big")
    message = condition(md, "CapacityPlanned")["message"]
    assert "LeaderWorkerSet" in message and "`spec.gpu.perNode` is 1" in message
    assert md["status"]["plan"]["feasible"] is False  # type: ignore[index]
    assert md["status"]["plan"]["reason"] == "NeedsMultiNode"  # type: ignore[index]
    assert api.deployment(ns, "big-default") is None
    assert not api.items(f"/apis/apps/v1/namespaces/{ns}/deployments")

    t0 = time.monotonic()
    stand_in_crds()
    lws_path = f"/apis/leaderworkerset.x-k8s.io/v1/namespaces/{ns}/leaderworkersets/big-default"
    lws = wait_for("the LeaderWorkerSet", lambda: api.get(lws_path), 60)
    report("LWS CRD installed -> LeaderWorkerSet applied", time.monotonic() - t0)
    md = wait_for("PlanFits", lambda: (m := api.md(ns, "big")) and is_current(
        m, "CapacityPlanned", "True", "PlanFits") and m, 30)
    pool = md["status"]["plan"]["pools"][0]
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["size"] * int(group["leaderTemplate"]["spec"]["containers"][0]["resources"][
        "limits"]["nvidia.com/gpu"]) == pool["gpusPerReplica"]
    assert lws["spec"]["replicas"] == pool["replicas"]
    assert lws["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    assert api.deployment(ns, "big-default") is None  # an LWS, not a Deployment
    assert is_current(md, "Progressing", "True", "RollingOut")  # no LWS controller here

    monitor = wait_for("the ServiceMonitor", lambda: api.get(
        f"/apis/monitoring.coreos.com/v1/namespaces/{ns}/servicemonitors/big"), 30)
    assert monitor["spec"]["endpoints"][0] == {"port": "http", "path": "/metrics", "interval": "15s"}
    pool_obj = wait_for("the InferencePool", lambda: api.get(
        f"/apis/inference.networking.k8s.io/v1/namespaces/{ns}/inferencepools/big"), 30)
    assert pool_obj["spec"]["targetPorts"] == [{"number": 8000}]
    assert pool_obj["spec"]["selector"]["matchLabels"] == {
        "kvcap.io/model-deployment": "big", "kvcap.io/role": "server"}
