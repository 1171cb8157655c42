"""Pod and workload failures -> Ready/Progressing/Stalled/Reconciling and events, table-driven.

The pod objects are shaped as a kubelet and the Deployment controller write them (container
`state.waiting`, `lastState.terminated`, Deployment `ReplicaFailure` and `Progressing`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from test_conditions import T0, obs, status_for

from kvcap.api import constants as kc
from kvcap.controller.conditions import (
    Check,
    check_reconciling,
    check_stalled,
    classify_pools,
    get_condition,
    transition_events,
)


@dataclass(frozen=True)
class Pool:
    workload: dict[str, Any] | None = None
    pods: tuple[dict[str, Any], ...] = ()


def pod(
    name: str = "llama-default-abc",
    *,
    ready: bool = False,
    waiting: tuple[str, str] | None = None,
    last_terminated: str | None = None,
    restarts: int = 0,
    deleting: bool = False,
) -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "vllm", "ready": ready, "restartCount": restarts, "state": {}}
    if waiting is not None:
        cs["state"] = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    elif ready:
        cs["state"] = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    if last_terminated is not None:
        cs["lastState"] = {"terminated": {"reason": last_terminated, "exitCode": 137}}
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "status": {
            "phase": "Running" if ready else "Pending",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [cs],
        },
    }


def deployment(*conditions: dict[str, str]) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": "llama-default"},
        "status": {"conditions": list(conditions)},
    }


PULL = ("ImagePullBackOff", 'Back-off pulling image "registry.invalid/vllm:v1"')
CRASH = ("CrashLoopBackOff", "back-off 5m0s restarting failed container=vllm")
QUOTA = {
    "type": "ReplicaFailure",
    "status": "True",
    "reason": "FailedCreate",
    "message": 'pods "llama-default-x" is forbidden: exceeded quota: gpus, requested: '
    "requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=8, limited: "
    "requests.nvidia.com/gpu=8",
}
DEADLINE = {
    "type": "Progressing",
    "status": "False",
    "reason": "ProgressDeadlineExceeded",
    "message": 'ReplicaSet "llama-default-5d4" has timed out progressing.',
}

# (id, pools, expected reason or None, words the message must contain)
CASES: list[tuple[str, dict[str, Pool], str | None, tuple[str, ...]]] = [
    ("nothing-yet", {"default": Pool(deployment(), (pod(),))}, None, ()),
    ("all-ready", {"default": Pool(deployment(), (pod(ready=True),))}, None, ()),
    (
        "image-pull",
        {"default": Pool(deployment(), (pod(waiting=PULL), pod("b", waiting=PULL)))},
        "ImagePullBackOff",
        ("pool 'default'", "registry.invalid/vllm:v1", "and 1 more pod"),
    ),
    (
        "err-image-pull-is-the-same-steady-reason",  # the kubelet alternates the two
        {"default": Pool(None, (pod(waiting=("ErrImagePull", "manifest unknown")),))},
        "ImagePullBackOff",
        ("waiting in ErrImagePull", "manifest unknown"),
    ),
    (
        "crashing-between-back-offs",  # running again after a crash, not ready: still a loop
        {"default": Pool(None, (pod(last_terminated="Error", restarts=3),))},
        "CrashLoopBackOff",
        ("keeps exiting", "last exit code 137", "3 restarts"),
    ),
    (
        "crash-loop",
        {"default": Pool(deployment(), (pod(waiting=CRASH, restarts=4),))},
        "CrashLoopBackOff",
        ("4 restarts",),
    ),
    (
        "oom-explains-the-crash-loop",
        {"default": Pool(None, (pod(waiting=CRASH, last_terminated="OOMKilled", restarts=2),))},
        "OOMKilled",
        ("OOMKilled", "exit code 137", "more memory"),
    ),
    (
        "missing-secret",
        {
            "default": Pool(
                None,
                (pod(waiting=("CreateContainerConfigError", 'secret "hf" not found')),),
            )
        },
        "CreateContainerConfigError",
        ('secret "hf" not found',),
    ),
    (
        "quota-failed-create",
        {"default": Pool(deployment(QUOTA), ())},
        "FailedCreate",
        ("exceeded quota", "Deployment 'llama-default' cannot create pods"),
    ),
    (
        "progress-deadline",
        {"default": Pool(deployment(DEADLINE), (pod(),))},
        "ProgressDeadlineExceeded",
        ("timed out progressing",),
    ),
    (
        "pods-before-deadline",  # the pods say why the deadline passed
        {"default": Pool(deployment(DEADLINE), (pod(waiting=PULL),))},
        "ImagePullBackOff",
        (),
    ),
    (
        "one-restart-may-be-recovering",  # a one-off crash, reloading: not a loop (yet)
        {"default": Pool(None, (pod(last_terminated="Error", restarts=1),))},
        None,
        (),
    ),
    (
        "ready-pod-with-old-oom-is-fine",
        {"default": Pool(None, (pod(ready=True, last_terminated="OOMKilled", restarts=1),))},
        None,
        (),
    ),
    (
        "terminating-pods-are-ignored",
        {"default": Pool(None, (pod(waiting=PULL, deleting=True),))},
        None,
        (),
    ),
    (
        "first-failing-pool-by-name",
        {
            "long": Pool(None, (pod("l", waiting=CRASH),)),
            "default": Pool(None, (pod("d", waiting=PULL),)),
        },
        "ImagePullBackOff",
        ("pool 'default'", "pod 'd'"),
    ),
]


@pytest.mark.parametrize(
    ("pools", "reason", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_classify_pools(pools: dict[str, Pool], reason: str | None, words: tuple[str, ...]) -> None:
    got = classify_pools(pools)
    if reason is None:
        assert got is None
        return
    assert got is not None and got.status == "False" and got.reason == reason
    for word in words:
        assert word in got.message


STALL_CASES = [
    ("healthy", [Check("True", kc.PLAN_FITS, "")], "False", kc.NOT_STALLED),
    ("hub-down-is-transient", [Check("False", kc.HUB_UNAVAILABLE, "x")], "False", kc.NOT_STALLED),
    ("infeasible", [Check("False", kc.INFEASIBLE, "NoGpus: x")], "True", kc.INFEASIBLE),
    (
        "no-gpus-in-inventory",
        [Check("True", kc.PLAN_FITS, ""), Check("False", kc.INSUFFICIENT_GPUS, "needs 2")],
        "True",
        kc.INSUFFICIENT_GPUS,
    ),
    (
        "unschedulable-pod-may-heal",
        [Check("False", kc.POD_UNSCHEDULABLE, "0/3 nodes")],
        "False",
        kc.NOT_STALLED,
    ),
    ("image-pull", [Check("False", "ImagePullBackOff", "x")], "True", "ImagePullBackOff"),
    ("conflict", [Check("False", kc.CONFLICT, "x")], "True", kc.CONFLICT),
]


@pytest.mark.parametrize(
    ("checks", "status", "reason"),
    [c[1:] for c in STALL_CASES],
    ids=[c[0] for c in STALL_CASES],
)
def test_check_stalled(checks: list[Check], status: str, reason: str) -> None:
    got = check_stalled(checks)
    assert (got.status, got.reason) == (status, reason)


@pytest.mark.parametrize(
    ("stalled", "planned", "progressing", "status", "reason"),
    [
        (Check("False", kc.NOT_STALLED, ""), Check("True", kc.PLAN_FITS, ""),
         Check("True", kc.ROLLING_OUT, ""), "True", kc.ROLLING_OUT),
        (Check("False", kc.NOT_STALLED, ""), Check("True", kc.PLAN_FITS, ""),
         Check("False", kc.ROLLOUT_COMPLETE, ""), "False", kc.RECONCILED),
        (Check("False", kc.NOT_STALLED, ""), Check("False", kc.HUB_UNAVAILABLE, ""),
         Check("False", kc.NOT_PLANNED, ""), "True", kc.HUB_UNAVAILABLE),
        # kstatus: never Reconciling and Stalled at once
        (Check("True", "ImagePullBackOff", "x"), Check("True", kc.PLAN_FITS, ""),
         Check("True", kc.ROLLING_OUT, ""), "False", "ImagePullBackOff"),
    ],
    ids=["rolling-out", "done", "transient-error", "stalled-wins"],
)
def test_check_reconciling(
    stalled: Check, planned: Check, progressing: Check, status: str, reason: str
) -> None:
    got = check_reconciling(stalled, planned, progressing)
    assert (got.status, got.reason) == (status, reason)


def test_image_pull_failure_shows_in_ready_progressing_stalled_and_one_event() -> None:
    failure = classify_pools({"default": Pool(deployment(), (pod(waiting=PULL),))})
    before = status_for(workloads={"default": obs(ready=0, updated=2)})
    after = status_for(workloads={"default": obs(ready=0, updated=2)}, failure=failure)
    ready = get_condition(after, kc.READY)
    progressing = get_condition(after, kc.PROGRESSING)
    stalled = get_condition(after, kc.STALLED)
    reconciling = get_condition(after, kc.RECONCILING_TYPE)
    assert ready is not None and progressing is not None and stalled is not None
    assert reconciling is not None
    assert (ready["status"], ready["reason"]) == ("False", "ImagePullBackOff")
    assert ready["message"].startswith("0 of 2 replicas ready; pool 'default'")
    assert (progressing["status"], progressing["reason"]) == ("False", "ImagePullBackOff")
    assert (stalled["status"], stalled["reason"]) == ("True", "ImagePullBackOff")
    assert reconciling["status"] == "False"
    events = transition_events(before, after)
    assert [(e.type, e.reason) for e in events] == [("Warning", "ImagePullBackOff")]
    assert "registry.invalid/vllm:v1" in events[0].message
    assert transition_events(after, after) == []  # once, not on every resync


def test_ready_stays_true_when_only_a_surge_pod_fails() -> None:
    failure = classify_pools({"default": Pool(deployment(), (pod(waiting=PULL),))})
    status = status_for(workloads={"default": obs(ready=2, updated=1)}, failure=failure)
    assert get_condition(status, kc.READY)["status"] == "True"  # type: ignore[index]
    assert get_condition(status, kc.STALLED)["status"] == "True"  # type: ignore[index]


def test_healthy_status_is_current_for_kstatus() -> None:
    status = status_for(workloads={"default": obs(ready=2, updated=2)}, now=T0)
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds[kc.READY] == "True"
    assert conds[kc.RECONCILING_TYPE] == "False" and conds[kc.STALLED] == "False"
