"""kvcap.controller.decide: the pure middle of a reconcile, table-tested on plain data."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from operator_factories import MODEL, make_plan, make_pool

from kvcap.api import constants as kc
from kvcap.api.errors import ModelNotFound
from kvcap.api.models import ModelDeploymentSpec
from kvcap.capacity.plan_types import CapacityPlan
from kvcap.controller.conditions import Check, get_condition
from kvcap.controller.decide import (
    ActOutcome,
    Failure,
    ModelConfig,
    Observation,
    Policy,
    PoolScale,
    assess,
    decide,
    decide_error,
    pods_needed,
    pool_runtime,
)
from kvcap.controller.render import Features, RenderOptions

NOW = datetime(2026, 1, 1, tzinfo=UTC)
H100 = "NVIDIA-H100-80GB-HBM3"
SPEC = {"model": {"name": MODEL}, "workload": {"maxContextTokens": 8192, "targetConcurrency": 64}}


def md(spec: dict[str, Any], *, generation: int = 1, status: dict[str, Any] | None = None,
       annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "kvcap.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "llama", "namespace": "team-a", "uid": "uid-1",
                         "generation": generation, "annotations": annotations or {}},
            "spec": spec, "status": status or {}}


def observation(obj: dict[str, Any], *, inventory: Any = None, config: ModelConfig | None = None,
                children: tuple[dict[str, Any], ...] = (), pods: tuple[dict[str, Any], ...] = (),
                metrics: object | None = None) -> Observation:
    return Observation(obj=obj, features=Features(),
                       inventory={H100: [8, 8]} if inventory is None else inventory,
                       model_config=config or ModelConfig(), children=children, pods=pods,
                       now=NOW, metrics=metrics)


def planner(plan: CapacityPlan | Exception) -> Any:
    def plan_fn(spec: Any, *, config: Any = None, cluster_gpus: Any = None) -> CapacityPlan:
        if isinstance(plan, Exception):
            raise plan
        return plan
    return plan_fn


INFEASIBLE = CapacityPlan(feasible=False, reason="InsufficientGpuMemory", message="too big",
                          model=MODEL)
BIG = make_plan(make_pool(gpus_per_replica=16, tensor_parallel_size=16, replicas=1))


@pytest.mark.parametrize(("spec", "config", "plan", "mode", "planned", "hold", "kinds"), [
    (SPEC, None, make_plan(), "apply", ("True", "PlanFits"), None,
     ["Deployment", "Service", "PodDisruptionBudget"]),
    ({**SPEC, "paused": True}, None, make_plan(), "hold", ("True", "PlanFits"), "Paused", []),
    ({"model": {"name": MODEL}, "workload": {"maxContextTokens": -1}}, None, make_plan(), "hold",
     ("False", "InvalidSpec"), "NotPlanned", []),
    (SPEC, ModelConfig(error=Check("False", "HubUnavailable", "down")), make_plan(), "hold",
     ("False", "HubUnavailable"), "NotPlanned", []),
    (SPEC, None, INFEASIBLE, "hold", ("False", "Infeasible"), "NotPlanned", []),
    (SPEC, None, ModelNotFound("no such model"), "hold", ("False", "ModelNotFound"),
     "NotPlanned", []),
    (SPEC, None, ZeroDivisionError("bug"), "hold", ("False", "PlannerError"), "NotPlanned", []),
    (SPEC, None, BIG, "hold", ("False", "NeedsMultiNode"), "NotPlanned", []),
])
def test_decide(spec: dict[str, Any], config: ModelConfig | None, plan: Any, mode: str,
                planned: tuple[str, str], hold: str | None, kinds: list[str]) -> None:
    decision = decide(observation(md(spec), config=config), Policy(plan_fn=planner(plan)))
    assert decision.mode == mode
    assert (decision.planned.status, decision.planned.reason) == planned
    assert (decision.hold.reason if decision.hold else None) == hold
    assert [o["kind"] for o in decision.desired] == kinds


@pytest.mark.parametrize(("scales", "replicas", "status_extra"), [
    ({}, 2, {}),
    ({"default": PoolScale(5, {"desiredReplicas": 5})}, 5, {"desiredReplicas": 5}),
    ({"default": PoolScale(None)}, None, {}),  # External: replicas left out of the Deployment
    ({"default": PoolScale(0, {"desiredReplicas": 0})}, 0, {"desiredReplicas": 0}),  # to zero
])
def test_decide_scale_override(scales: dict[str, PoolScale], replicas: int | None,
                               status_extra: dict[str, Any]) -> None:
    seen: list[Any] = []

    def scale(spec: Any, plan: CapacityPlan, metrics: object, stored: Any, inventory: Any) -> Any:
        seen.append(metrics)
        return scales

    obs = observation(md(SPEC), metrics="snapshot")
    policy = Policy(plan_fn=planner(make_plan()), scale=scale)
    decision = decide(obs, policy)
    assert seen == ["snapshot"]
    (dep,) = [o for o in decision.desired if o["kind"] == "Deployment"]
    assert dep["spec"].get("replicas") == replicas
    report = assess(obs, decision, ActOutcome(Check("True", "Applied", "")), "change", policy)
    pool = (report.status.get("pools") or [{}])[0]  # the autoscaler's entry: status.pools[]
    for key, value in status_extra.items():
        assert pool[key] == value


def workload(ready: int, replicas: int = 2, pool: str = "default") -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"llama-{pool}", "generation": 1,
                         "labels": {kc.LABEL_POOL: pool},
                         "ownerReferences": [{"uid": "uid-1", "controller": True}]},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": 1, "readyReplicas": ready, "updatedReplicas": 2}}


def pending_pod(name: str, pool: str = "default") -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {kc.LABEL_POOL: pool}},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/3 nodes are available"}]}}


@pytest.mark.parametrize(("children", "expected"), [
    ((), False), ((workload(2),), False), ((workload(1),), True),
    ((workload(2), workload(0, pool="long")), True),
])
def test_pods_needed(children: tuple[dict[str, Any], ...], expected: bool) -> None:
    assert pods_needed(children) is expected


def test_pool_runtime_groups_workloads_and_pods_by_pool() -> None:
    pools = pool_runtime([workload(1)], [pending_pod("a"), pending_pod("b", "long")])
    assert sorted(pools) == ["default", "long"]
    assert pools["default"].workload is not None and len(pools["default"].pods) == 1
    assert pools["long"].workload is None


@pytest.mark.parametrize(("children", "outcome", "pods", "inventory", "expect"), [
    # applied, ready: Ready=True
    ((workload(2),), Check("True", "Applied", "3 children applied"), (), None,
     {"Ready": ("True", "ReplicasReady"), "Schedulable": ("True", "GpusAvailable")}),
    # one pending pod the scheduler cannot place
    ((workload(1),), Check("True", "Applied", ""), (pending_pod("llama-default-x"),), None,
     {"Ready": ("False", "ReplicasNotReady"), "Schedulable": ("False", "PodUnschedulable")}),
    # a conflict in act
    ((), Check("False", "Conflict", "Service 'llama-default' exists"), (), None,
     {"Ready": ("False", "Conflict"), "ChildrenSynced": ("False", "Conflict")}),
    # no inventory (disabled)
    ((workload(2),), Check("True", "Applied", ""), (), {},
     {"Schedulable": ("False", "InsufficientGpus")}),
])
def test_assess(children: tuple[dict[str, Any], ...], outcome: Check,
                pods: tuple[dict[str, Any], ...], inventory: Any,
                expect: dict[str, tuple[str, str]]) -> None:
    obs = observation(md(SPEC), children=children, pods=pods, inventory=inventory)
    policy = Policy(plan_fn=planner(make_plan()))
    decision = decide(obs, policy)
    report = assess(obs, decision, ActOutcome(outcome), "change", policy)
    for type_, (status, reason) in expect.items():
        cond = get_condition(report.status, type_)
        assert cond is not None and (cond["status"], cond["reason"]) == (status, reason), type_
    assert report.changed and report.status["observedGeneration"] == 1


def test_assess_is_quiet_when_nothing_changed() -> None:
    policy = Policy(plan_fn=planner(make_plan()))
    obs = observation(md(SPEC), children=(workload(2),))
    first = assess(obs, decide(obs, policy), ActOutcome(Check("True", "Applied", "")), "resync",
                   policy)
    assert [e.reason for e in first.events] == [kc.EVENT_PLAN_CHANGED, kc.EVENT_READY]
    again = observation(md(SPEC, status=first.status), children=(workload(2),))
    second = assess(again, decide(again, policy), ActOutcome(Check("True", "Applied", "")),
                    "resync", policy)
    assert not second.changed and second.events == () and second.failure is None


def test_assess_reports_deleted_pools() -> None:
    policy = Policy(plan_fn=planner(make_plan()))
    obs = observation(md(SPEC))
    report = assess(obs, decide(obs, policy),
                    ActOutcome(Check("True", "Applied", ""), deleted=("Deployment 'llama-long'",)),
                    "change", policy)
    assert report.events[0].reason == kc.EVENT_POOL_DELETED


@pytest.mark.parametrize(("trigger", "planned", "synced", "expected"), [
    ("change", Check("True", "PlanFits", ""), Check("True", "Applied", ""), None),
    ("change", Check("False", "Infeasible", "x"), Check("Unknown", "NotPlanned", ""), True),
    ("resync", Check("False", "Infeasible", "x"), Check("Unknown", "NotPlanned", ""), None),
    ("change", Check("False", "NeedsMultiNode", "x"), Check("Unknown", "NotPlanned", ""), True),
    ("change", Check("False", "InvalidSpec", "x"), Check("Unknown", "NotPlanned", ""), True),
    ("resync", Check("False", "InvalidSpec", "x"), Check("Unknown", "NotPlanned", ""), None),
    ("change", Check("False", "ModelNotFound", "x"), Check("Unknown", "NotPlanned", ""), None),
    ("resync", Check("False", "HubUnavailable", "x"), Check("Unknown", "NotPlanned", ""), False),
    ("change", Check("True", "PlanFits", ""), Check("False", "ApplyRejected", "422"), True),
    ("change", Check("True", "PlanFits", ""), Check("False", "Conflict", "x"), None),
])
def test_decide_error(trigger: Any, planned: Check, synced: Check, expected: bool | None) -> None:
    failure = decide_error(trigger, planned, synced, 1.0)
    assert (failure.permanent if isinstance(failure, Failure) else None) is expected
    if failure is not None and not failure.permanent:
        assert failure.delay == 60.0


def test_render_options_reach_the_children() -> None:
    policy = Policy(plan_fn=planner(make_plan()),
                    render=RenderOptions(extra_tolerations=({"key": "k", "operator": "Exists"},)))
    decision = decide(observation(md(SPEC)), policy)
    dep = decision.desired[0]
    assert {"key": "k", "operator": "Exists"} in dep["spec"]["template"]["spec"]["tolerations"]


# --- the pinned plan -------------------------------------------------------------------------------

L4_PLAN = make_plan(make_pool(gpu_product="L4", gpu_labels=("NVIDIA-L4",), replicas=4,
                              gpus_per_replica=2, tensor_parallel_size=2))


def planned_once() -> tuple[dict[str, Any], tuple[dict[str, Any], ...]]:
    """The stored ModelDeployment after one reconcile on H100s, and the children it rendered."""
    policy = Policy(plan_fn=planner(make_plan()))
    obs = observation(md(SPEC, annotations={"kvcap.io/replan": "a"}))
    decision = decide(obs, policy)
    report = assess(obs, decision, ActOutcome(Check("True", "Applied", "")), "change", policy)
    return report.status, decision.desired


@pytest.mark.parametrize(("generation", "annotation", "strip", "replans"), [
    (1, "a", None, False),  # same generation, same annotation: pinned, the inventory is ignored
    (2, "a", None, True),  # the spec changed
    (1, "b", None, True),  # `kubectl annotate ... kvcap.io/replan=b --overwrite`
    (1, None, None, True),  # the annotation was removed
    (1, "a", "vllmArgs", True),  # a status written by an older kvcap: plan again
])
def test_the_plan_is_pinned_until_the_spec_or_the_replan_annotation_changes(
        generation: int, annotation: str | None, strip: str | None, replans: bool) -> None:
    status, children = planned_once()
    if strip is not None:
        for pool in status["plan"]["pools"]:
            pool.pop(strip)
    obj = md(SPEC, generation=generation, status=status,
             annotations={"kvcap.io/replan": annotation} if annotation else {})
    calls: list[Any] = []

    def on_l4(spec: Any, *, config: Any = None, cluster_gpus: Any = None) -> CapacityPlan:
        calls.append(cluster_gpus)
        return L4_PLAN

    # the H100 nodes are cordoned: only L4s are schedulable now
    obs = observation(obj, inventory={"NVIDIA-L4": [4]})
    decision = decide(obs, Policy(plan_fn=on_l4))
    assert bool(calls) is replans
    assert (decision.desired != children) is replans
    if not replans:
        report = assess(obs, decision, ActOutcome(Check("True", "Applied", "")), "resync",
                        Policy())
        assert report.status["plan"] == status["plan"]
        cond = get_condition(report.status, "Schedulable")
        assert cond is not None and cond["reason"] == "InsufficientGpus"  # inventory: status only


def test_pinned_status_carries_the_shape() -> None:
    status, _ = planned_once()
    plan = status["plan"]
    assert (plan["plannedGeneration"], plan["replanToken"]) == (1, "a")
    pool = plan["pools"][0]
    assert pool["gpuLabels"] == [H100] and pool["vllmArgs"][0] == MODEL


@pytest.mark.parametrize(("latency", "fields"), [
    (None, set()),  # no latencyObjectives: status.plan carries no latency figures
    (("tpot", 180.0, 21.5), {"bindingConstraint", "predictedTtftMilliseconds",
                             "predictedTpotMilliseconds"}),
])
def test_latency_figures_are_in_status_and_survive_the_pin(
        latency: tuple[str, float, float] | None, fields: set[str]) -> None:
    """With spec.workload.latencyObjectives, status.plan.pools[] says which constraint sized the
    pool and the TTFT/TPOT the step-time model predicts; the pinned plan keeps them."""
    pool = make_pool() if latency is None else make_pool(
        binding_constraint=latency[0], predicted_ttft_ms=latency[1], predicted_tpot_ms=latency[2])
    policy = Policy(plan_fn=planner(make_plan(pool)))
    obs = observation(md(SPEC, annotations={"kvcap.io/replan": "a"}))
    decision = decide(obs, policy)
    status = assess(obs, decision, ActOutcome(Check("True", "Applied", "")), "change",
                    policy).status
    entry = status["plan"]["pools"][0]
    latency_keys = {"bindingConstraint", "predictedTtftMilliseconds", "predictedTpotMilliseconds"}
    assert latency_keys & set(entry) == fields
    if latency is not None:
        assert (entry["bindingConstraint"], entry["predictedTtftMilliseconds"],
                entry["predictedTpotMilliseconds"]) == latency
    # a resync with the same generation rebuilds the plan from status: the figures stay
    again = observation(md(SPEC, status=status, annotations={"kvcap.io/replan": "a"}))
    pinned = decide(again, Policy(plan_fn=planner(RuntimeError("must not re-plan"))))
    restatus = assess(again, pinned, ActOutcome(Check("True", "Applied", "")), "resync",
                      Policy()).status
    assert restatus["plan"]["pools"][0] == entry


def test_token_prices_are_pinned_and_price_a_model_outside_the_catalog() -> None:
    """The planner prices each pool's tokens; status.plan keeps the prices, so a resync prices a
    Hub or ConfigMap model (whose config.json the operator no longer reads) as the plan did."""
    from kvcap.controller.scaling import token_costs_for

    hub = {**SPEC, "model": {"name": "example-org/private-llama"}}
    priced = make_pool(prefill_seconds_per_token=4e-5, decode_seconds_per_token=9e-4)
    policy = Policy(plan_fn=planner(make_plan(priced)))
    obs = observation(md(hub, annotations={"kvcap.io/replan": "a"}))
    status = assess(obs, decide(obs, policy), ActOutcome(Check("True", "Applied", "")), "change",
                    policy).status
    entry = status["plan"]["pools"][0]
    assert (entry["prefillSecondsPerToken"], entry["decodeSecondsPerToken"]) == (4e-5, 9e-4)
    again = observation(md(hub, status=status, annotations={"kvcap.io/replan": "a"}))
    pinned = decide(again, Policy(plan_fn=planner(RuntimeError("must not re-plan"))))
    assert pinned.plan is not None
    spec = ModelDeploymentSpec.model_validate(hub)
    assert token_costs_for(spec, pinned.plan.pools[0]) == (4e-5, 9e-4)
    # the same pool unpriced (a plan pinned by an older kvcap): not in the catalog, no prices
    assert token_costs_for(spec, make_pool()) is None


@pytest.mark.parametrize(("old", "new", "patch"), [
    ({}, {"a": 1}, {"a": 1}),
    ({"a": 1, "gone": 2}, {"a": 1}, {"a": 1, "gone": None}),
    ({"plan": {"pools": [1], "modelBytes": 5}}, {"plan": {"pools": []}},
     {"plan": {"pools": [], "modelBytes": None}}),
    ({"plan": {"x": {"y": 1, "z": 2}}}, {"plan": {"x": {"y": 1}}}, {"plan": {"x": {"y": 1, "z": None}}}),
    ({"conditions": [{"a": 1}]}, {"conditions": []}, {"conditions": []}),  # lists are replaced
])
def test_status_patch_removes_what_is_no_longer_written(old: dict[str, Any], new: dict[str, Any],
                                                        patch: dict[str, Any]) -> None:
    from kvcap.controller.decide import status_patch

    assert status_patch(old, new) == patch
