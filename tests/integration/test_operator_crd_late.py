"""The operator started before its CRD exists picks the CRD up when it is created (issue 10,
part 8), and again when the CRD is deleted and re-created while it runs. On a private envtest
control plane (etcd + kube-apiserver): deleting the CRD must not disturb the session's shared
operator."""

from __future__ import annotations

import time
from pathlib import Path

import devcluster
import pytest
from operator_helpers import (
    CRD_FILE,
    Api,
    OperatorProcess,
    apply_crd,
    crd_documents,
    is_current,
    report,
    small_spec,
    wait_for,
)

pytestmark = [pytest.mark.integration]


@pytest.mark.timeout(420)
def test_operator_started_before_its_crd_picks_it_up(tmp_path: Path) -> None:
    """The CRD is deleted, the operator starts, then the CRD is created: ModelDeployments made
    after that are reconciled without a restart of the process; the same after the CRD is deleted
    and created again while the operator runs. (kopf alone re-resolves its resources on CRD events
    only, and the API server's discovery may serve a new CRD a moment after its last event: kopf
    then never serves it. That race is what this test caught on the old code.)"""
    # Its own control plane: deleting the CRD must not disturb the session's shared operator.
    cluster = devcluster.Cluster.start(tier="envtest", workdir=tmp_path / "k8s", timeout=120)
    api = Api(cluster)
    ns = "kvcrd"
    cluster.ensure_namespace(ns)
    crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/modeldeployments.kvcap.io"

    def delete_crd() -> None:
        api.delete(crd_path)
        wait_for("the CRD to go", lambda: api.get(crd_path) is None, 120, 0.5)

    def planned(name: str) -> None:
        try:
            wait_for(f"{name} to be planned", lambda: is_current(
                api.md(ns, name), "CapacityPlanned", "True"), 90)
        except pytest.fail.Exception:
            pytest.fail(f"{name} not picked up; operator log:\n{proc.output()[-6000:]}",
                        pytrace=False)

    proc = OperatorProcess(api.cluster.kubeconfig, [ns], tmp_path / "op.log").start()
    try:
        wait_for("the operator to wait for its CRD", lambda: "Waiting for the ModelDeployment CRD"
                 in proc.output() or not proc.alive(), 60)
        assert proc.alive(), proc.output()[-3000:]
        for crd in crd_documents(CRD_FILE):
            apply_crd(api, crd)
        created = time.monotonic()
        api.create_md(ns, "late", small_spec())
        planned("late")
        report("CRD created -> first ModelDeployment planned", time.monotonic() - created)

        delete_crd()  # and again, while the operator runs
        for crd in crd_documents(CRD_FILE):
            apply_crd(api, crd)
        created = time.monotonic()
        api.create_md(ns, "again", small_spec())
        planned("again")
        report("CRD re-created -> ModelDeployment planned", time.monotonic() - created)
        assert proc.alive()
    finally:
        proc.stop()
        cluster.stop()
    assert "Traceback" not in proc.output(), proc.output()[-5000:]
