"""Every panel of the Grafana dashboard returns data from a real Prometheus scraping vLLM emulators
and the operator's own metrics endpoint (fed by a real autoscaler tick over those emulators)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from kvcap.api.models import ModelDeploymentSpec
from kvcap.autoscale.emulator import Levels
from kvcap.capacity.plan_types import CapacityPlan, PoolPlan
from kvcap.controller.autoscaler import Autoscaler, AutoscaleSettings, live_pools
from kvcap.controller.scaling import ObjectMetrics

pytest_plugins = ["prometheus_fixture"]
pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "helm" / "kvcap" / "dashboards" / "kvcap-autoscaling.json"
VARIABLES = {"$namespace": ".*", "$modeldeployment": ".*", "$pool": ".*", "$__range": "5m",
             "${datasource}": ""}


def pool_plan() -> PoolPlan:
    return PoolPlan(
        name="default", gpu_product="H100-80GB", gpu_labels=(), tensor_parallel_size=1,
        pipeline_parallel_size=1, replicas=2, gpus_per_replica=1, max_model_len=8192,
        min_context_tokens=0, max_num_seqs=256, kv_tokens_per_replica=131072, kv_bytes_per_gpu=1,
        gpu_memory_utilization=0.9, concurrency_per_replica=64.0, target_concurrency=128,
        headroom_percent=10.0, vllm_args=(),
    )


def k8s_pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kvcap.io/pool": "default", "kvcap.io/role": "server"}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}


def test_every_panel_returns_data(prometheus: Any, emulators: Any) -> None:
    ns = f"dash-{uuid.uuid4().hex[:6]}"
    names = ["llama-default-6d5f7c8b9-abcde", "llama-default-6d5f7c8b9-fghij"]
    for name in names:
        emulators(ns, name, Levels(kv_usage=0.9, running=30, waiting_capacity=4, preemptions_per_second=0.2))
    for name in names:
        prometheus.wait_scraped(ns, name)
    autoscaler = Autoscaler(AutoscaleSettings(prometheus_url=prometheus.url, rate_window="6s"))
    port = autoscaler.start_exporter(port=0, host="127.0.0.1")
    assert port
    try:
        prometheus.add_target("kvcap-system", "kvcap-operator-0", port)
        snap = asyncio.run(autoscaler.snapshot(prometheus.url, max_age=0))
        assert snap.error is None
        deployment = {"kind": "Deployment", "metadata": {"labels": {"kvcap.io/pool": "default"},
                      "ownerReferences": [{"uid": "u", "controller": True}]}, "spec": {"replicas": 2}}
        metrics = ObjectMetrics(now=snap.time, error=None, namespace=ns, name="llama",
                                pools=live_pools(snap, ns, "u", [deployment], [k8s_pod(n) for n in names]))
        spec = ModelDeploymentSpec.model_validate({
            "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
            "workload": {"maxContextTokens": 8192, "targetConcurrency": 128},
            "autoscaling": {"policy": "KVHeadroom", "maxReplicas": 4},
        })
        plan = CapacityPlan(True, "PlanFits", "ok", "m", pools=(pool_plan(),))
        out = autoscaler.scale(spec, plan, metrics, {})
        assert out["default"].replicas and out["default"].replicas > 2
        prometheus.wait_for('kvcap_pool_replicas{kind="desired"}', lambda r: len(r) >= 1)
        dashboard = json.loads(DASHBOARD.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for var, value in VARIABLES.items():
                    expr = expr.replace(var, value)
                result = prometheus.wait_for(expr, bool, timeout=20)
                assert result, f"panel {panel['title']!r}: no data for {expr}"
    finally:
        autoscaler.exporter.stop()
