"""docs/argocd-health.lua on a real Lua 5.1 runtime (lupa; Argo CD runs gopher-lua, a Lua 5.1),
against the status objects the operator itself builds, and checked against the kstatus rules
that Flux applies to the same objects (sigs.k8s.io/cli-utils pkg/kstatus, README "Conditions":
observedGeneration behind -> InProgress; Stalled=True -> Failed; Reconciling=True -> InProgress;
otherwise Current)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lupa.lua51 as lua51
import pytest
from operator_factories import make_plan, make_pool
from test_conditions import PLANNED, T0, obs, status_for
from test_pod_failures import PULL, Pool, deployment, pod

from kvcap.api import constants as kc
from kvcap.controller.conditions import Check, classify_pools, initial_conditions

SCRIPT = (Path(__file__).resolve().parents[2] / "docs" / "argocd-health.lua").read_text()


def run_health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    return str(result["status"]), str(result["message"] or "")


def kstatus(obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return "InProgress"
    conds = {c["type"]: c["status"] for c in status.get("conditions") or ()}
    if conds.get("Stalled") == "True":
        return "Failed"
    if conds.get("Reconciling") == "True":
        return "InProgress"
    return "Current"


def md(status: dict[str, Any] | None, generation: int = 2) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "kvcap.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "llama", "namespace": "team-a", "generation": generation},
    }
    if status is not None:
        obj["status"] = status
    return obj


IMAGE_PULL = classify_pools({"default": Pool(deployment(), (pod(waiting=PULL),))})

# (id, ModelDeployment, Argo CD health, kstatus)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("no-status-yet", md(None), "Progressing", "InProgress"),
    ("first-visit", md({"observedGeneration": 2, "conditions": initial_conditions(2, T0)}),
     "Progressing", "InProgress"),
    ("spec-changed-not-yet-seen", md(status_for(workloads={"default": obs()}), generation=3),
     "Progressing", "InProgress"),
    ("rolling-out", md(status_for()), "Progressing", "InProgress"),
    ("serving", md(status_for(workloads={"default": obs()})), "Healthy", "Current"),
    ("image-pull-backoff", md(status_for(workloads={"default": obs(ready=0)}, failure=IMAGE_PULL)),
     "Degraded", "Failed"),
    ("infeasible", md(status_for(plan=None, planned=Check("False", kc.INFEASIBLE, "NoFit: x"),
                                 workloads={}, names={})), "Degraded", "Failed"),
    ("no-gpus", md(status_for(schedulable=Check("False", kc.INSUFFICIENT_GPUS, "needs 2, 0")))
     , "Degraded", "Failed"),
    ("hub-unreachable", md(status_for(plan=None, planned=Check("False", kc.HUB_UNAVAILABLE, "x"),
                                      workloads={}, names={})), "Progressing", "InProgress"),
    ("paused", md(status_for(paused=True)), "Suspended", "Current"),
    ("two-pools-one-not-ready", md(status_for(
        plan=make_plan(make_pool(), make_pool(name="long", min_context_tokens=8193, replicas=1)),
        workloads={"default": obs(), "long": obs(name="llama-long", ready=0, replicas=1)},
        names={})), "Progressing", "InProgress"),
]


@pytest.mark.parametrize(
    ("obj", "health", "kstat"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_argocd_health_agrees_with_kstatus(obj: dict[str, Any], health: str, kstat: str) -> None:
    got, message = run_health(obj)
    assert got == health
    assert kstatus(obj) == kstat
    # Argo CD and Flux tell the same story about the same object
    assert {"Healthy": "Current", "Suspended": "Current", "Degraded": "Failed",
            "Progressing": "InProgress"}[got] == kstat
    assert message


def test_degraded_message_names_the_reason() -> None:
    obj = md(status_for(workloads={"default": obs(ready=0)}, failure=IMAGE_PULL))
    health, message = run_health(obj)
    assert health == "Degraded"
    assert message.startswith("ImagePullBackOff: pool 'default'")


def test_the_script_is_plain_lua_51() -> None:
    assert PLANNED.ok  # the fixtures this module shares are the operator's own
    lua = lua51.LuaRuntime()
    assert lua.eval("_VERSION") == "Lua 5.1"
    lua.execute("obj = {metadata = {generation = 1}}")
    assert lua.execute(SCRIPT)["status"] == "Progressing"
