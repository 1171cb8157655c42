"""The operator applies a team's calibration from a ConfigMap (issue 8, part 5): the same document
`kvcap calibrate --write-override` writes, named by KVCAP_CALIBRATION_CONFIGMAP, changes the KV budget
the plan gives the matching model, GPU and vLLM version -- on a real API server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from operator_helpers import Api, OperatorProcess, condition, small_spec, wait_for

from kvcap.api.models import ModelDeploymentSpec
from kvcap.capacity.calibration import to_document
from kvcap.capacity.memory import Calibration
from kvcap.capacity.planner import plan_deployment

pytest_plugins = ["operator_fixtures"]
pytestmark = [pytest.mark.integration, pytest.mark.e2e]

DELTA = 5 * 1024**3  # a team measured 5 GiB more activation memory than kvcap predicts


def planned_pool(api: Api, ns: str, name: str) -> dict[str, Any] | None:
    md = api.md(ns, name)
    if md is None or condition(md, "CapacityPlanned").get("status") != "True":
        return None
    pools = (md.get("status") or {}).get("plan", {}).get("pools") or []
    return pools[0] if pools else None


@pytest.mark.timeout(300)
def test_operator_plans_with_the_calibration_configmap(
    kvcap_api: Api, kvcap_crd: Any, fresh_namespace: Any, tmp_path: Path
) -> None:
    api = kvcap_api
    ns = fresh_namespace("kvcal")
    spec = small_spec()
    offline = plan_deployment(ModelDeploymentSpec.model_validate(spec))
    pool = offline.pools[0]
    cal = Calibration(spec["model"]["name"], pool.gpu_product, offline.extra["vllm_version"],
                      activation_delta_bytes=DELTA, source="integration test")
    api.create(f"/api/v1/namespaces/{ns}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kvcap-calibrations"},
        "data": {"calibrations.yaml": json.dumps(to_document([cal]))},
    })
    env = {"KVCAP_CALIBRATION_CONFIGMAP": f"{ns}/kvcap-calibrations"}
    op = OperatorProcess(api.cluster.kubeconfig, [ns], tmp_path / "op.log", env).start()
    try:
        api.create_md(ns, "llama", spec)
        got = wait_for("a plan", lambda: planned_pool(api, ns, "llama"), 120, 0.5)
        assert got["kvCacheBytesPerGpu"] == pool.kv_bytes_per_gpu - DELTA
        # An entry for another vLLM version does not apply; the next re-plan reads the change.
        other = Calibration(cal.model, cal.gpu, "0.1.0", activation_delta_bytes=DELTA)
        api.merge(f"/api/v1/namespaces/{ns}/configmaps/kvcap-calibrations",
                  {"data": {"calibrations.yaml": json.dumps(to_document([other]))}})
        api.patch_md(ns, "llama", {"metadata": {"annotations": {"kvcap.io/replan": "1"}}})
        wait_for("the uncalibrated plan",
                 lambda: (planned_pool(api, ns, "llama") or {}).get("kvCacheBytesPerGpu")
                 == pool.kv_bytes_per_gpu, 120, 0.5)
        assert op.alive(), op.output()[-3000:]
    finally:
        op.stop()
