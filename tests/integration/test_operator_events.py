"""Only kvcap's own transition events reach the Kubernetes Events of a ModelDeployment (issue 10,
part 4). kopf before 1.41 had no `settings.posting.loggers` and posted every INFO log line of a
handled object ("Handler 'x' succeeded.", ...) as an Event; kvcap requires a kopf with the switch
and sets it off explicitly."""

from __future__ import annotations

from collections import Counter
from typing import Any

import kopf
import pytest
from operator_helpers import Api, is_current, small_spec, wait_for

from kvcap.api import constants as kc
from kvcap.controller.handlers import configure_kopf

pytest_plugins = ["operator_fixtures"]
pytestmark = [pytest.mark.integration, pytest.mark.e2e]

KVCAP_REASONS = {
    value for name, value in vars(kc).items() if name.startswith("EVENT_") and isinstance(value, str)
}


def md_events(api: Api, ns: str, name: str) -> list[dict[str, Any]]:
    return [
        e
        for e in api.items(f"/api/v1/namespaces/{ns}/events")
        if e["involvedObject"].get("kind") == "ModelDeployment"
        and e["involvedObject"].get("name") == name
    ]


def test_kopf_is_configured_to_post_no_log_lines() -> None:
    settings = kopf.OperatorSettings()
    settings.posting.loggers = True  # whatever the default of the installed kopf
    configure_kopf(settings)
    assert settings.posting.loggers is False


@pytest.mark.timeout(240)
def test_only_kvcap_transition_events_are_posted(kvcap_api: Api, op_namespace: str) -> None:
    api, ns = kvcap_api, op_namespace
    api.create_md(ns, "llama", small_spec())
    wait_for("llama Ready", lambda: is_current(api.md(ns, "llama"), "Ready", "True"), 150)
    # a spec edit: a new plan, a rollout, Ready again
    api.patch_md(ns, "llama", {"spec": {"workload": {"maxContextTokens": 16384}}})
    wait_for("llama Ready at generation 2",
             lambda: is_current(api.md(ns, "llama"), "Ready", "True"), 150)
    events = wait_for("events", lambda: md_events(api, ns, "llama"), 30)
    for event in events:
        assert event["reason"] in KVCAP_REASONS, event
        assert event["source"].get("component") == "kvcap", event
        assert "\n" not in event["message"]
    reasons = Counter(e["reason"] for e in events)
    assert reasons[kc.EVENT_PLAN_CHANGED] == 2, reasons  # generation 1 and 2, once each
    assert reasons[kc.EVENT_READY] >= 1, reasons
    assert all(e.get("count", 1) == 1 for e in events), events  # posted once, never repeated
