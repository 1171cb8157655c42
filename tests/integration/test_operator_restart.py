"""The operator as a real process (`python -m kvcap run`), SIGKILLed mid-reconcile and restarted:
it must converge to the same children, with no duplicates and nothing left behind."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from operator_helpers import (
    Api,
    OperatorProcess,
    is_current,
    report,
    small_spec,
    wait_for,
)

pytest_plugins = ["operator_fixtures"]
pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def owned(api: Api, ns: str, kind_path: str) -> list[dict[str, Any]]:
    return api.items(f"{kind_path.format(ns=ns)}", "app.kubernetes.io/managed-by=kvcap")


@pytest.mark.timeout(360)
def test_killed_mid_reconcile_and_restarted_converges_without_duplicates(
    kvcap_api: Api, kvcap_crd: Any, fresh_namespace: Any, tmp_path: Path
) -> None:
    api = kvcap_api
    ns = fresh_namespace("kvrs")
    log = tmp_path / "operator.log"
    first = OperatorProcess(api.cluster.kubeconfig, [ns], log).start()
    try:
        specs = {
            "one": small_spec(),
            "two": small_spec(targetConcurrency=32),
            "split": small_spec(
                maxContextTokens=32768,
                longContextPolicy="Required",
                longContextThresholdTokens=4096,
            ),
        }
        for name, spec in specs.items():
            api.create_md(ns, name, spec)
        # kill it as soon as it has started writing children
        wait_for(
            "the first child Deployment",
            lambda: owned(api, ns, "/apis/apps/v1/namespaces/{ns}/deployments"),
            60,
            0.05,
        )
        first.kill()
        killed_at = time.monotonic()
        assert not first.alive()
    finally:
        if first.alive():
            first.stop()
    before = {
        kind: len(owned(api, ns, path))
        for kind, path in (
            ("Deployments", "/apis/apps/v1/namespaces/{ns}/deployments"),
            ("Services", "/api/v1/namespaces/{ns}/services"),
            ("PDBs", "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets"),
        )
    }
    statuses = sum(bool((api.md(ns, n) or {}).get("status", {}).get("plan")) for n in specs)

    # while it is down: a spec edit and a deleted child
    api.patch_md(ns, "two", {"spec": {"workload": {"maxContextTokens": 16384}}})
    api.delete(f"/api/v1/namespaces/{ns}/services/one-default")

    second = OperatorProcess(api.cluster.kubeconfig, [ns], log).start()
    try:
        restarted = time.monotonic()

        def converged() -> list[dict[str, Any]] | None:
            mds = [api.md(ns, name) for name in specs]
            return mds if all(is_current(m, "Ready", "True") for m in mds) else None  # type: ignore[return-value]

        mds = wait_for("all ModelDeployments Ready after the restart", converged, 150, 0.25)
        report(
            f"restart -> converged (at the kill: {before} of 4 each, {statuses} of 3 "
            f"statuses written)",
            time.monotonic() - restarted,
        )
        report("SIGKILL -> converged (including the process start)", time.monotonic() - killed_at)

        expected = {p["deploymentName"] for m in mds for p in m["status"]["plan"]["pools"]}
        assert expected == {"one-default", "two-default", "split-default", "split-long"}
        deployments = owned(api, ns, "/apis/apps/v1/namespaces/{ns}/deployments")
        assert sorted(d["metadata"]["name"] for d in deployments) == sorted(expected)
        services = owned(api, ns, "/api/v1/namespaces/{ns}/services")
        assert sorted(s["metadata"]["name"] for s in services) == sorted(expected)
        pdbs = owned(api, ns, "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets")
        assert sorted(p["metadata"]["name"] for p in pdbs) == sorted(expected)

        def settled_pods() -> bool:
            active = [
                r
                for r in api.items(f"/apis/apps/v1/namespaces/{ns}/replicasets")
                if r["spec"].get("replicas")
            ]
            per_deployment = Counter(r["metadata"]["ownerReferences"][0]["name"] for r in active)
            pods = [p for p in api.pods(ns) if not p["metadata"].get("deletionTimestamp")]
            want = sum(p["replicas"] for m in mds for p in m["status"]["plan"]["pools"])
            return (
                set(per_deployment.values()) == {1}
                and len(per_deployment) == len(expected)
                and len(pods) == want
            )

        wait_for(
            "one active ReplicaSet per Deployment and exactly the planned pods",
            settled_pods,
            60,
            0.5,
        )
        two = api.md(ns, "two")
        assert two is not None and two["status"]["observedGeneration"] == 2
        assert two["status"]["plan"]["pools"][0]["maxModelLen"] == 16384
    finally:
        code = second.stop()
    output = log.read_text(errors="replace")
    assert code == 0, output[-5000:]
    assert "Traceback" not in output, output[-5000:]
    assert "Forbidden" not in output
