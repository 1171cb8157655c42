"""High availability (issue 10, part 8) on the real control plane: two operator processes share a
coordination.k8s.io Lease; only the leader reconciles. SIGKILL the leader: the standby takes the
Lease over once it expires and carries on, with no duplicate children and no duplicate events."""

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

LEASE_SECONDS = 4


def lease(api: Api, ns: str) -> dict[str, Any]:
    return api.get(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/kvcap-operator") or {}


def owned(api: Api, ns: str, path: str) -> list[str]:
    items = api.items(path.format(ns=ns), "app.kubernetes.io/managed-by=kvcap")
    return sorted(i["metadata"]["name"] for i in items)


def md_events(api: Api, ns: str) -> list[tuple[str, str, str]]:
    return sorted(
        (e["involvedObject"]["name"], e["reason"], e["message"])
        for e in api.items(f"/api/v1/namespaces/{ns}/events")
        if e["involvedObject"].get("kind") == "ModelDeployment"
    )


@pytest.mark.timeout(420)
def test_killed_leader_is_replaced_by_the_standby(
    kvcap_api: Api, kvcap_crd: Any, fresh_namespace: Any, tmp_path: Path
) -> None:
    api = kvcap_api
    ns = fresh_namespace("kvha")
    env = {
        "KVCAP_LEADER_ELECTION": "Enabled",
        "KVCAP_LEADER_ELECTION_NAMESPACE": ns,
        "KVCAP_LEADER_ELECTION_LEASE_SECONDS": str(LEASE_SECONDS),
        "KVCAP_RESYNC_SECONDS": "2",
    }
    procs = [
        OperatorProcess(api.cluster.kubeconfig, [ns], tmp_path / f"op{i}.log", env).start()
        for i in range(2)
    ]
    try:
        holder = wait_for("a Lease holder", lambda: lease(api, ns).get("spec", {}).get(
            "holderIdentity"), 60)
        leader = wait_for("the leader's log", lambda: next(
            (p for p in procs if f"as {holder}" in p.output()), None), 30)
        standby = procs[1 - procs.index(leader)]
        wait_for("the standby to stand by", lambda: "Standing by" in standby.output(), 30)

        for name in ("one", "two"):
            api.create_md(ns, name, small_spec())
        wait_for("both Ready", lambda: all(
            is_current(api.md(ns, n), "Ready", "True") for n in ("one", "two")), 180)
        # the standby did nothing at all
        assert "Reconciled ModelDeployment" not in standby.output()
        events_before = md_events(api, ns)
        assert len(events_before) == len(set(events_before))
        children = {
            kind: owned(api, ns, path) for kind, path in (
                ("deployments", "/apis/apps/v1/namespaces/{ns}/deployments"),
                ("services", "/api/v1/namespaces/{ns}/services"),
                ("pdbs", "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets"),
            )
        }
        assert children["deployments"] == ["one-default", "two-default"]

        leader.kill()
        killed = time.monotonic()
        transitions = int(lease(api, ns)["spec"].get("leaseTransitions") or 0)
        new_holder = wait_for("the standby to take the Lease", lambda: (
            h if (h := lease(api, ns).get("spec", {}).get("holderIdentity")) not in (None, holder)
            else None), 60, 0.2)
        report("leader SIGKILL -> standby holds the Lease", time.monotonic() - killed)
        assert f"as {new_holder}" in standby.output()
        assert int(lease(api, ns)["spec"]["leaseTransitions"]) == transitions + 1

        # the new leader reconciles: a spec edit reaches the children and the status
        api.patch_md(ns, "two", {"spec": {"workload": {"maxContextTokens": 16384}}})
        two = wait_for("two at generation 2", lambda: (
            m if is_current(m := api.md(ns, "two"), "CapacityPlanned", "True")
            and m["status"]["observedGeneration"] == 2 else None), 90)
        report("leader SIGKILL -> the standby reconciled an edit", time.monotonic() - killed)
        assert two["status"]["plan"]["pools"][0]["maxModelLen"] == 16384
        wait_for("the new leader's reconcile log", lambda: "Reconciled ModelDeployment" in
                 standby.output(), 10)

        # no duplicate children, and no event posted twice for one transition
        for kind, path in (
            ("deployments", "/apis/apps/v1/namespaces/{ns}/deployments"),
            ("services", "/api/v1/namespaces/{ns}/services"),
            ("pdbs", "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets"),
        ):
            assert owned(api, ns, path) == children[kind]
        events_after = md_events(api, ns)
        one_events = [e for e in events_after if e[0] == "one"]
        assert one_events == [e for e in events_before if e[0] == "one"]  # "one" did not change
        counts = Counter((e[0], e[1]) for e in events_after)
        assert counts[("two", "PlanChanged")] == 2, counts  # generation 1 and 2, once each
    finally:
        for p in procs:
            if p.alive():
                p.stop()
    for p in procs:
        assert "Traceback" not in p.output(), p.output()[-5000:]


@pytest.mark.timeout(300)
def test_leader_election_under_the_chart_rbac(
    kvcap_api: Api, kvcap_crd: Any, fresh_namespace: Any, tmp_path: Path
) -> None:
    """As the chart runs it: the chart's ServiceAccount and RBAC (with its leases Role in the
    release namespace), leader election on. The Lease is created and renewed, nothing is
    forbidden."""
    from test_operator_rbac import apply_docs, render_rbac

    api = kvcap_api
    system_ns = fresh_namespace("kvha-sys")
    ns = fresh_namespace("kvha-rbac")
    docs = render_rbac(f"kvcap-{ns[-6:]}", system_ns, [ns])  # namespaced, as KVCAP_NAMESPACES
    created = apply_docs(api, docs, system_ns)
    sa = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
    kubeconfig = api.cluster.service_account_kubeconfig(system_ns, sa, tmp_path / "sa.kubeconfig")
    env = {"KVCAP_NAMESPACES": ns, "KVCAP_LEADER_ELECTION": "Enabled",
           "KVCAP_LEADER_ELECTION_NAMESPACE": system_ns,
           "KVCAP_LEADER_ELECTION_LEASE_SECONDS": str(LEASE_SECONDS)}
    op = OperatorProcess(kubeconfig, [], tmp_path / "op.log", extra_env=env).start()
    try:
        api.create_md(ns, "ha", small_spec())
        wait_for("Ready under the chart's RBAC with leader election",
                 lambda: is_current(api.md(ns, "ha"), "Ready", "True"), 150)
        first = lease(api, system_ns)["spec"]["renewTime"]
        wait_for("the Lease renewed", lambda: lease(api, system_ns)["spec"]["renewTime"] != first,
                 30)
    finally:
        code = op.stop()
        for path in reversed(created):
            if "/clusterrole" in path:
                api.delete(path)
    output = op.output()
    assert code == 0, output[-5000:]
    assert "Released Lease" in output
    assert lease(api, system_ns)["spec"].get("holderIdentity") is None  # released on SIGTERM
    for needle in ("403", "Forbidden", "forbidden", "Traceback"):
        assert needle not in output, f"{needle!r} in the operator log:\n{output[-5000:]}"
