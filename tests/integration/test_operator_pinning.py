"""The plan is pinned (issue 10, part 2): cordoning the H100 nodes a ModelDeployment runs on changes
its `Schedulable` condition, never its pods. Only a spec change or the `kvcap.io/replan` annotation
plans again. On the old code every resync re-planned against the live inventory, so the plan
flipped to L4, the pod template changed and every pod rolled."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from operator_helpers import H100, L4, Api, condition, is_current, wait_for

pytest_plugins = ["operator_fixtures"]
pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SPEC = {  # any GPU product: the planner picks H100 while they are schedulable
    "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
    "workload": {"maxContextTokens": 8192, "targetConcurrency": 64},
}
RESYNC = 2.0  # KVCAP_RESYNC_SECONDS of the test operator


def gpu_nodes(api: Api, product: str) -> list[str]:
    nodes = api.items("/api/v1/nodes", f"nvidia.com/gpu.product={product}")
    return [n["metadata"]["name"] for n in nodes]


def set_cordon(api: Api, names: list[str], cordoned: bool) -> None:
    for name in names:
        api.merge(f"/api/v1/nodes/{name}", {"spec": {"unschedulable": cordoned or None}})


@pytest.fixture
def h100_nodes(kvcap_api: Api) -> Iterator[list[str]]:
    names = gpu_nodes(kvcap_api, H100)
    assert len(names) == 2
    try:
        yield names
    finally:
        set_cordon(kvcap_api, names, False)


def template(api: Api, ns: str) -> dict[str, Any]:
    dep = api.deployment(ns, "llama-default")
    assert dep is not None
    return {
        "generation": dep["metadata"]["generation"],
        "hash": dep["spec"]["template"]["metadata"]["annotations"]["kvcap.io/spec-hash"],
        "affinity": dep["spec"]["template"]["spec"].get("affinity"),
    }


@pytest.mark.timeout(300)
def test_cordoned_gpus_change_schedulable_not_the_pods(
    kvcap_api: Api, op_namespace: str, h100_nodes: list[str]
) -> None:
    api, ns = kvcap_api, op_namespace
    api.create_md(ns, "llama", SPEC)
    md = wait_for("llama planned on H100", lambda: (
        m if is_current(m := api.md(ns, "llama"), "CapacityPlanned", "True") else None), 60)
    assert [p["gpuProduct"] for p in md["status"]["plan"]["pools"]] == ["H100-80GB"]
    wait_for("the Deployment", lambda: api.deployment(ns, "llama-default"), 60)
    before = template(api, ns)

    set_cordon(api, h100_nodes, True)
    # the inventory reaches the status: no H100 is schedulable any more ...
    wait_for("Schedulable=False after the cordon", lambda: condition(
        api.md(ns, "llama"), "Schedulable").get("status") == "False", 60)
    time.sleep(4 * RESYNC)  # ... and several resyncs later the children are untouched
    assert template(api, ns) == before, "cordoning nodes rolled the pods"
    md = api.md(ns, "llama")
    assert md is not None
    assert [p["gpuProduct"] for p in md["status"]["plan"]["pools"]] == ["H100-80GB"]
    assert md["status"]["plan"]["plannedGeneration"] == md["metadata"]["generation"] == 1
    assert "InsufficientGpus" == condition(md, "Schedulable")["reason"]

    # uncordoned: Schedulable again, still no rollout
    set_cordon(api, h100_nodes, False)
    wait_for("Schedulable=True after the uncordon", lambda: condition(
        api.md(ns, "llama"), "Schedulable").get("status") == "True", 60)
    assert template(api, ns) == before

    # an explicit re-plan against the current inventory: the annotation
    set_cordon(api, h100_nodes, True)
    wait_for("Schedulable=False again", lambda: condition(
        api.md(ns, "llama"), "Schedulable").get("status") == "False", 60)
    api.merge(f"/apis/kvcap.io/v1alpha1/namespaces/{ns}/modeldeployments/llama",
              {"metadata": {"annotations": {"kvcap.io/replan": "after-cordon"}}})

    def replanned() -> dict[str, Any] | None:
        m = api.md(ns, "llama")
        plan = (m or {}).get("status", {}).get("plan") or {}
        return m if plan.get("replanToken") == "after-cordon" else None

    md = wait_for("the re-plan", replanned, 60)
    assert [p["gpuProduct"] for p in md["status"]["plan"]["pools"]] == ["L4"]
    after = template(api, ns)
    assert after["hash"] != before["hash"]
    assert L4 in str(after["affinity"])
