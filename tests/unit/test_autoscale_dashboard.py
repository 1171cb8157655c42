"""The Grafana dashboard's JSON structure and the chart's ConfigMap (every panel's PromQL runs
against a real Prometheus in tests/integration/test_autoscale_dashboard_prometheus.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kvcap.api import constants as kc
from kvcap.controller.conditions import Check
from kvcap.controller.decide import PoolScale
from kvcap.controller.exporter import OperatorMetrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "helm" / "kvcap" / "dashboards" / "kvcap-autoscaling.json"


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_structure() -> None:
    d = dashboard()
    assert d["uid"] == "kvcap-autoscaling" and d["schemaVersion"] >= 36
    names = [v["name"] for v in d["templating"]["list"]]
    assert names == ["datasource", "namespace", "modeldeployment", "pool"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in d["panels"]}
    for wanted in ("KV tokens: in use vs capacity", "Replicas: desired vs current",
                   "Capacity-waiting requests", "Preemptions per second", "Scale decisions"):
        assert wanted in titles
    for p in d["panels"]:
        assert p["datasource"]["uid"] == "${datasource}"
        assert set(p["gridPos"]) == {"x", "y", "w", "h"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"] and t["refId"]
            assert t["expr"].count("(") == t["expr"].count(")")
            # every variable used is defined (or a Grafana built-in)
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var in names or var.startswith("__"), var


def test_every_kvcap_metric_the_dashboard_reads_is_exported() -> None:
    m = OperatorMetrics()
    m.record("ns", "md", {"default": PoolScale(2, {
        "currentReplicas": 2, "desiredReplicas": 3, "kvTokensInUse": 10, "kvTokensCapacity": 20,
        "capacityWaiting": 1, "preemptionRate": 0.5, "lastScaleTime": "2026-01-01T00:00:00Z",
    }, {kc.METRICS_AVAILABLE: Check("True", kc.METRICS_CURRENT, "")})})
    text = m.render()
    exported = set(re.findall(r"^(kvcap_\w+)\{", text, re.M))
    used = set()
    for p in dashboard()["panels"]:
        for t in p["targets"]:
            used |= set(re.findall(r"\b(kvcap_\w+)\{", t["expr"]))
    assert used and used <= exported, used - exported
    assert 'kvcap_pool_replicas{kvcap_namespace="ns",modeldeployment="md",pool="default",kind="desired"} 3' in text


def helm() -> str:
    path = subprocess.run([str(REPO / "hack" / "get-helm.sh")], capture_output=True, text=True, check=False).stdout.strip()
    if not path and os.environ.get("CI"):
        pytest.fail("helm is missing (hack/get-helm.sh)")
    return path or shutil.which("helm") or pytest.fail("helm is missing: run hack/get-helm.sh")


def test_chart_ships_the_dashboard_only_when_enabled() -> None:
    exe = helm()
    off = subprocess.run([exe, "template", "kvcap", str(REPO / "helm" / "kvcap")], capture_output=True, text=True, check=True).stdout
    assert "grafana_dashboard" not in off
    on = subprocess.run([exe, "template", "kvcap", str(REPO / "helm" / "kvcap"), "--set", "grafanaDashboard.enabled=true"],
                        capture_output=True, text=True, check=True).stdout
    cm = next(d for d in yaml.safe_load_all(on) if d and d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["kvcap-autoscaling.json"]) == dashboard()
