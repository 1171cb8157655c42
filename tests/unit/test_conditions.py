"""set_condition transitions, the status builder and transition events (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from operator_factories import make_plan, make_pool

from kvcap.api import constants as kc
from kvcap.controller.conditions import (
    Check,
    Event,
    WorkloadObservation,
    build_status,
    check_progress,
    check_ready,
    get_condition,
    initial_conditions,
    set_condition,
    status_changed,
    transition_events,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


@pytest.mark.parametrize(
    ("before", "status", "expect_time"),
    [
        ([], "True", "2026-01-01T12:05:00Z"),  # new condition: stamped now
        ([{"type": "Ready", "status": "True", "reason": "A", "message": "m",
           "observedGeneration": 1, "lastTransitionTime": "2026-01-01T12:00:00Z"}],
         "True", "2026-01-01T12:00:00Z"),  # same status: time kept
        ([{"type": "Ready", "status": "False", "reason": "A", "message": "m",
           "observedGeneration": 1, "lastTransitionTime": "2026-01-01T12:00:00Z"}],
         "True", "2026-01-01T12:05:00Z"),  # flipped: time moves
        ([{"type": "Ready", "status": "Unknown", "reason": "Reconciling", "message": "m",
           "observedGeneration": 1, "lastTransitionTime": "2026-01-01T12:00:00Z"}],
         "Unknown", "2026-01-01T12:00:00Z"),
    ],
    ids=["new", "same-status", "flip", "unknown-stays"],
)
def test_set_condition_transition_time(before: list[dict[str, Any]], status: str,
                                       expect_time: str) -> None:
    after = set_condition(before, type="Ready", status=status, reason="B",  # type: ignore[arg-type]
                          message="new message", generation=3, now=T1)
    assert after == [{
        "type": "Ready", "status": status, "reason": "B", "message": "new message",
        "observedGeneration": 3, "lastTransitionTime": expect_time,
    }]
    assert after is not before


def test_set_condition_keeps_others_and_does_not_mutate() -> None:
    before = [{"type": "A", "status": "True", "reason": "R", "message": "", "observedGeneration": 1,
               "lastTransitionTime": "x"}]
    snapshot = [dict(c) for c in before]
    after = set_condition(before, type="B", status="False", reason="R2", message="m\n two",
                          generation=2, now=T0)
    assert before == snapshot
    assert [c["type"] for c in after] == ["A", "B"]
    assert after[1]["message"] == "m two"  # one line


def test_initial_conditions_are_all_unknown_reconciling() -> None:
    conds = initial_conditions(4, T0)
    assert [c["type"] for c in conds] == list(kc.CONDITION_TYPES)
    kstatus = {"Reconciling": "True", "Stalled": "False"}  # kstatus reads these as InProgress
    for c in conds:
        assert (c["status"], c["reason"], c["observedGeneration"]) == (
            kstatus.get(c["type"], "Unknown"), "Reconciling", 4
        )


def obs(name: str = "llama-default", ready: int = 2, updated: int = 2, replicas: int = 2,
        current: bool = True, total: int | None = None) -> WorkloadObservation:
    return WorkloadObservation(name=name, kind="Deployment", replicas=replicas, ready_replicas=ready,
                               updated_replicas=updated, current=current, total_replicas=total)


@pytest.mark.parametrize(("workloads", "paused", "expected"), [
    ({}, False, ("True", "RollingOut", "pool 'default' has no workload yet")),
    ({"default": obs(updated=1)}, False,
     ("True", "RollingOut", "Deployment 'llama-default': 1 of 2 replicas updated")),
    ({"default": obs(current=False)}, False,
     ("True", "RollingOut", "Deployment 'llama-default': 2 of 2 replicas updated")),
    ({"default": obs(ready=1)}, False,
     ("True", "RollingOut", "Deployment 'llama-default': 1 of 2 replicas ready")),
    # maxUnavailable 1: two new pods Ready, the third (old) one still terminating
    ({"default": obs(ready=3, total=3)}, False,
     ("True", "RollingOut", "Deployment 'llama-default': 1 old replica pending termination")),
    ({"default": obs(ready=2, total=4)}, False,
     ("True", "RollingOut", "Deployment 'llama-default': 2 old replicas pending termination")),
    ({"default": obs()}, False,
     ("False", "RolloutComplete", "every pool runs the current template at full strength")),
    ({"default": obs(total=2)}, False,
     ("False", "RolloutComplete", "every pool runs the current template at full strength")),
    ({"default": obs(ready=0)}, True,
     ("False", "Paused", "`spec.paused` is true: children are left as they are")),
])
def test_check_progress(workloads: dict[str, WorkloadObservation], paused: bool,
                        expected: tuple[str, str, str]) -> None:
    check = check_progress(make_plan(), workloads, paused=paused)
    assert (check.status, check.reason, check.message) == expected


PLANNED = Check("True", kc.PLAN_FITS, "fits")
SYNCED = Check("True", kc.APPLIED, "5 children applied")


@pytest.mark.parametrize(("planned", "synced", "workloads", "expected"), [
    (PLANNED, SYNCED, {"default": obs()}, ("True", "ReplicasReady", "2 of 2 replicas ready")),
    (PLANNED, SYNCED, {"default": obs(ready=5)}, ("True", "ReplicasReady", "2 of 2 replicas ready")),
    (PLANNED, SYNCED, {"default": obs(ready=1)}, ("False", "ReplicasNotReady", "1 of 2 replicas ready")),
    (PLANNED, SYNCED, {}, ("False", "ReplicasNotReady", "0 of 2 replicas ready")),
    (Check("False", "InvalidSpec", "bad"), SYNCED, {}, ("False", "InvalidSpec", "bad")),
    (Check("Unknown", "Reconciling", "wait"), SYNCED, {}, ("Unknown", "Reconciling", "wait")),
    (PLANNED, Check("False", "Conflict", "Service 'x' exists"), {"default": obs()},
     ("False", "Conflict", "Service 'x' exists")),
])
def test_check_ready(planned: Check, synced: Check, workloads: dict[str, WorkloadObservation],
                     expected: tuple[str, str, str]) -> None:
    check = check_ready(planned, synced, make_plan(), workloads)
    assert (check.status, check.reason, check.message) == expected


def status_for(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        generation=2, old_status=None, plan=make_plan(), planned=PLANNED,
        schedulable=Check("True", kc.GPUS_AVAILABLE, "needs 2 x NVIDIA-H100-80GB-HBM3, 16 allocatable"),
        synced=SYNCED, workloads={"default": obs(ready=1)},
        names={"default": ("llama-default", "llama-default")}, paused=False, vllm_version="0.11.0",
        now=T0,
    )
    args.update(kw)
    return build_status(**args)


def test_build_status_golden() -> None:
    def cond(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return {"type": type_, "status": status, "reason": reason, "message": message,
                "observedGeneration": 2, "lastTransitionTime": "2026-01-01T12:00:00Z"}

    assert status_for() == {
        "observedGeneration": 2,
        "replicas": 2,
        "readyReplicas": 1,
        "totalGpus": 2,
        "lowerBoundGpus": 1,
        "plan": {
            "feasible": True, "reason": "PlanFits", "message": "2 x 1 H100-80GB",
            "splitDecision": "one pool", "vllmVersion": "0.11.0",
            "pools": [{
                "name": "default", "gpuProduct": "H100-80GB", "tensorParallelSize": 1,
                "pipelineParallelSize": 1, "replicas": 2, "readyReplicas": 1, "gpusPerReplica": 1,
                "maxModelLen": 8192, "minContextTokens": 0, "maxNumSeqs": 128,
                "kvTokensPerReplica": 400000, "kvCacheBytesPerGpu": 53000000000,
                "deploymentName": "llama-default", "serviceName": "llama-default",
            }],
        },
        "conditions": [
            cond("Ready", "False", "ReplicasNotReady", "1 of 2 replicas ready"),
            cond("CapacityPlanned", "True", "PlanFits", "fits"),
            cond("Schedulable", "True", "GpusAvailable",
                 "needs 2 x NVIDIA-H100-80GB-HBM3, 16 allocatable"),
            cond("Progressing", "True", "RollingOut",
                 "Deployment 'llama-default': 1 of 2 replicas ready"),
            cond("ChildrenSynced", "True", "Applied", "5 children applied"),
            cond("Reconciling", "True", "RollingOut",
                 "Deployment 'llama-default': 1 of 2 replicas ready"),
            cond("Stalled", "False", "NotStalled", "nothing blocks progress"),
        ],
    }


def test_build_status_invalid_spec_has_empty_plan() -> None:
    status = status_for(plan=None, planned=Check("False", kc.INVALID_SPEC, "`spec.model`: required"),
                        workloads={}, names={}, vllm_version="")
    assert status["plan"] == {"feasible": False, "reason": "InvalidSpec",
                              "message": "`spec.model`: required", "splitDecision": "",
                              "vllmVersion": "", "pools": []}
    assert (status["replicas"], status["readyReplicas"], status["totalGpus"]) == (0, 0, 0)
    assert get_condition(status, "Ready")["reason"] == "InvalidSpec"  # type: ignore[index]


def test_build_status_needs_multi_node_keeps_pools_but_not_feasible() -> None:
    check = Check("False", kc.NEEDS_MULTI_NODE, "pool 'default' needs 16 GPUs per replica")
    status = status_for(planned=check, workloads={})
    assert status["plan"]["feasible"] is False
    assert status["plan"]["reason"] == "NeedsMultiNode"
    assert len(status["plan"]["pools"]) == 1
    assert status["replicas"] == 0 and status["totalGpus"] == 0


def test_build_status_only_known_condition_types_in_fixed_order() -> None:
    old = {"conditions": [{"type": "Stale", "status": "True", "reason": "X", "message": "",
                           "lastTransitionTime": "t"}, *initial_conditions(1, T0)]}
    status = status_for(old_status=old, now=T1)
    assert [c["type"] for c in status["conditions"]] == list(kc.CONDITION_TYPES)
    # CapacityPlanned flipped Unknown -> True at T1
    assert get_condition(status, "CapacityPlanned")["lastTransitionTime"] == "2026-01-01T12:05:00Z"  # type: ignore[index]


def test_status_is_stable_across_resyncs() -> None:
    first = status_for()
    second = status_for(old_status=first, now=T1)
    assert second == first
    assert not status_changed(first, second)
    assert status_changed({}, first)


def test_transition_events() -> None:
    initial = {"conditions": initial_conditions(1, T0)}
    planned = status_for(old_status=initial)
    events = transition_events(initial, planned)
    assert events == [Event("Normal", "PlanChanged",
                            "Planned default: 2 x 1 H100-80GB (TP 1, PP 1, max-model-len 8192)")]
    assert transition_events(planned, status_for(old_status=planned, now=T1)) == []  # resync: quiet

    ready = status_for(old_status=planned, workloads={"default": obs()})
    assert transition_events(planned, ready) == [Event("Normal", "Ready", "2 of 2 replicas ready")]

    scaled_plan = make_plan(make_pool(replicas=3))
    scaled = status_for(old_status=ready, plan=scaled_plan, workloads={"default": obs()})
    assert transition_events(ready, scaled) == [
        Event("Normal", "ScaledUp", "Scaled from 2 to 3 replicas"),
        Event("Warning", "NotReady", "ReplicasNotReady: 2 of 3 replicas ready"),
    ]

    infeasible = status_for(old_status=ready, plan=None, workloads={},
                            planned=Check("False", kc.INFEASIBLE, "InsufficientGpuMemory: too big"))
    assert transition_events(ready, infeasible) == [
        Event("Warning", "PlanInfeasible", "Infeasible: InsufficientGpuMemory: too big"),
        Event("Warning", "NotReady", "Infeasible: InsufficientGpuMemory: too big"),
    ]

    conflict = status_for(old_status=planned,
                          synced=Check("False", kc.CONFLICT, "Service 'llama-default' exists"),
                          schedulable=Check("False", kc.INSUFFICIENT_GPUS, "needs 16, 8 allocatable"))
    assert transition_events(planned, conflict) == [
        Event("Warning", "Conflict", "Service 'llama-default' exists"),
        Event("Warning", "Unschedulable", "needs 16, 8 allocatable"),
    ]
