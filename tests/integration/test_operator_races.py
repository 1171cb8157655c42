"""Races (issue 10, part 4) on the real control plane: rapid spec edits while the operator resyncs
every 2 s and reacts to child events. Every status the API server stores has an observedGeneration
no older than the one before it, and the Deployment's template never goes back to an older spec
(a rollback rollout). The old code read the object before taking the per-object lock and wrote
status outside it, so a resync could land generation N's status after generation N+1's. The
deterministic versions of these races are unit tests (tests/unit/test_reconcile_pure.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kubernetes import client, watch
from operator_helpers import Api, is_current, small_spec, wait_for

pytest_plugins = ["operator_fixtures"]
pytestmark = [pytest.mark.integration, pytest.mark.e2e]

EDITS = [9216, 10240, 11264, 12288, 13312, 14336]  # maxContextTokens, increasing


class Recorder(threading.Thread):
    """Every watch event of one object kind in one namespace, in order."""

    def __init__(self, fn: Any, *args: Any) -> None:
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.events: list[dict[str, Any]] = []
        self.watch = watch.Watch()

    def run(self) -> None:
        sanitize = client.ApiClient().sanitize_for_serialization
        try:
            for event in self.watch.stream(self.fn, *self.args, timeout_seconds=240):
                obj = event["object"]
                self.events.append(obj if isinstance(obj, dict) else sanitize(obj))
        except Exception:  # the stream is cut when stop() is called
            if not self.watch._stop:
                raise

    def stop(self) -> None:
        self.watch.stop()


def max_model_len(dep: dict[str, Any]) -> int:
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    return int(args[args.index("--max-model-len") + 1])


@pytest.mark.timeout(300)
def test_rapid_edits_never_move_status_or_children_backwards(
    kvcap_api: Api, op_namespace: str, e2e_client: Any
) -> None:
    api, ns = kvcap_api, op_namespace
    api.create_md(ns, "racy", small_spec())
    wait_for("racy planned", lambda: is_current(api.md(ns, "racy"), "CapacityPlanned", "True"), 60)
    mds = Recorder(client.CustomObjectsApi(e2e_client).list_namespaced_custom_object,
                   "kvcap.io", "v1alpha1", ns, "modeldeployments")
    deps = Recorder(client.AppsV1Api(e2e_client).list_namespaced_deployment, ns)
    mds.start()
    deps.start()
    try:
        time.sleep(1)
        for tokens in EDITS:
            api.patch_md(ns, "racy", {"spec": {"workload": {"maxContextTokens": tokens}}})
            time.sleep(0.4)
        final = len(EDITS) + 1

        def settled() -> bool:
            md = api.md(ns, "racy")
            dep = api.deployment(ns, "racy-default")
            return bool(md and dep and md["status"].get("observedGeneration") == final
                        and max_model_len(dep) == EDITS[-1])

        wait_for("the last edit applied and reported", settled, 90)
        time.sleep(3)  # a resync or two more
    finally:
        mds.stop()
        deps.stop()
    observed = [m.get("status", {}).get("observedGeneration") or 0 for m in mds.events]
    assert observed == sorted(observed), f"observedGeneration went backwards: {observed}"
    assert observed[-1] == final
    lengths = [max_model_len(d) for d in deps.events if d["metadata"]["name"] == "racy-default"]
    assert lengths == sorted(lengths), f"the Deployment went back to an older spec: {lengths}"
    assert lengths[-1] == EDITS[-1]
    # each condition is stamped with the generation it was computed for, never a newer one
    for m in mds.events:
        for cond in m.get("status", {}).get("conditions") or ():
            assert cond["observedGeneration"] <= m["metadata"]["generation"]
