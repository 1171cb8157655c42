"""A transient API error midway through applying the children: ChildrenSynced=False/ApplyFailed
(how far it got), Reconciling=True, nothing pruned, and a retry (a temporary Failure)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from operator_factories import OWNER, make_plan, make_pool, make_spec
from test_conditions import status_for

from kvcap.api import constants as kc
from kvcap.clients.kube import ApiError
from kvcap.controller.conditions import Check, get_condition
from kvcap.controller.decide import decide_error
from kvcap.controller.reconcile import sync_children
from kvcap.controller.render import RenderOptions, owner_reference, render_children


class FlakyKube:
    """Applies succeed until the `fail_at`-th, which answers 503 like an overloaded apiserver."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at = fail_at
        self.applied: list[str] = []
        self.deleted: list[str] = []

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        if len(self.applied) + 1 == self.fail_at:
            raise ApiError(503, "ServiceUnavailable", "the server is currently unable to handle it")
        self.applied.append(f"{obj['kind']}/{obj['metadata']['name']}")
        return {**obj, "metadata": {**obj["metadata"], "resourceVersion": "1", "uid": "u"}}

    async def get(self, *args: Any) -> None:
        return None

    async def delete(self, api_version: str, plural: str, ns: str, name: str, uid: str) -> bool:
        self.deleted.append(name)
        return True


def stale_child() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "llama-long", "namespace": "team-a", "uid": "old",
                         "resourceVersion": "7", "ownerReferences": [owner_reference(OWNER)]}}


@pytest.mark.asyncio
async def test_a_transient_error_midway_is_reported_and_retried() -> None:
    desired = render_children(OWNER, make_spec(), make_plan(make_pool()), RenderOptions())
    kube = FlakyKube(fail_at=2)
    result = await sync_children(
        kube, OWNER, desired, [stale_child()], logging.getLogger("test")  # type: ignore[arg-type]
    )
    assert kube.applied == ["Deployment/llama-default"]
    assert kube.deleted == []  # a half-applied set is never pruned
    check = result.check
    assert (check.status, check.reason) == ("False", kc.APPLY_FAILED)
    assert check.message.startswith("applied 1 of 3 children, then Service 'llama-default': 503")
    failure = decide_error("resync", Check("True", kc.PLAN_FITS, "fits"), check, 5.0)
    assert failure is not None and not failure.permanent and failure.delay == 5.0

    status = status_for(synced=check)
    synced = get_condition(status, kc.CHILDREN_SYNCED)
    reconciling = get_condition(status, kc.RECONCILING_TYPE)
    assert synced is not None and synced["reason"] == kc.APPLY_FAILED
    assert reconciling is not None and reconciling["status"] == "True"
    assert get_condition(status, kc.STALLED)["status"] == "False"  # type: ignore[index]


@pytest.mark.asyncio
async def test_all_applied_is_applied() -> None:
    desired = render_children(OWNER, make_spec(), make_plan(make_pool()), RenderOptions())
    kube = FlakyKube(fail_at=0)
    result = await sync_children(
        kube, OWNER, desired, [stale_child()], logging.getLogger("test")  # type: ignore[arg-type]
    )
    assert result.check.reason == kc.APPLIED and kube.deleted == ["llama-long"]
