"""`kvcap export keda` and the emulator's pod follower, on plain data (the dry run against the real
apiserver and the PromQL against a real Prometheus are in tests/integration/test_autoscale_keda_apiserver.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from kvcap.api import constants as kc
from kvcap.autoscale.emulator import Levels, ServerConfig
from kvcap.cli import main
from kvcap.commands.emulate import PodFollower, read_levels, write_targets
from kvcap.commands.export import export_keda

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "qwen3-30b-a3b-long-context.yaml"


def test_one_scaled_object_per_pool_encoding_the_rule() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    objects = export_keda(doc, namespace="serving")
    assert [o["metadata"]["name"] for o in objects] == ["qwen3-30b-default", "qwen3-30b-long"]
    for obj in objects:
        spec = obj["spec"]
        assert obj["apiVersion"] == "keda.sh/v1alpha1" and obj["kind"] == "ScaledObject"
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": obj["metadata"]["name"]}
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 6)
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
        meta = trigger["metadata"]
        assert all(isinstance(v, str) for v in meta.values())  # KEDA's schema: map of strings
        assert meta["ignoreNullValues"] == "false"
        assert 'namespace="serving"' in meta["query"]
        assert "vllm:kv_cache_usage_perc" in meta["query"] and "vllm_gpu_cache_usage_perc" in meta["query"]
        assert 'reason="capacity"' in meta["query"]
        down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    # threshold = 75 % of the planned KV tokens per replica
    tokens = int(objects[0]["metadata"]["annotations"]["kvcap.io/rule"].split(" x ")[1].split()[0])
    assert objects[0]["spec"]["triggers"][0]["metadata"]["threshold"] == f"{0.75 * tokens:.0f}"


def test_cli_prints_yaml(tmp_path: Path, capsys: Any) -> None:
    assert main(["export", "keda", "-f", str(EXAMPLE), "--prometheus-url", "http://prom.monitoring.svc:9090"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert len(docs) == 2
    assert docs[0]["spec"]["triggers"][0]["metadata"]["serverAddress"] == "http://prom.monitoring.svc:9090"


def pod(name: str, pool: str = "default", role: str = kc.ROLE_SERVER, **meta: Any) -> dict[str, Any]:
    labels = {kc.LABEL_MODEL_DEPLOYMENT: "md", kc.LABEL_POOL: pool, kc.LABEL_ROLE: role}
    return {"metadata": {"name": name, "namespace": "ns", "labels": labels, **meta}}


def test_pod_follower_tracks_pods_and_levels() -> None:
    pods = [pod("a"), pod("b", pool="long"), pod("w", role=kc.ROLE_WORKER)]
    targets: dict[tuple[str, str], int] = {}
    levels = {("ns", "md", "default"): Levels(kv_usage=0.9)}
    follower = PodFollower(
        list_pods=lambda: pods,
        on_add=lambda ns, p, port: targets.__setitem__((ns, p), port),
        on_remove=lambda ns, p: targets.pop((ns, p)),
        config_for=lambda _p: ServerConfig(kv_cache_size_tokens=1234),
        levels_for=levels.get,
    )
    try:
        follower.sync()
        assert set(targets) == {("ns", "a"), ("ns", "b")}
        assert follower.servers[("ns", "a")][1].levels().kv_usage == 0.9
        assert follower.servers[("ns", "b")][1].levels().kv_usage == 0.0
        pods[0] = pod("a", deletionTimestamp="2026-01-01T00:00:00Z")
        follower.sync()
        assert set(targets) == {("ns", "b")}
    finally:
        follower.stop()
    assert targets == {}


def test_levels_and_targets_files(tmp_path: Path) -> None:
    assert main(["emulate-vllm", "set", "--levels-file", str(tmp_path / "l.json"), "--pool", "ns/md/default",
                 "--kv-usage", "0.95", "--waiting-capacity", "12"]) == 0
    got = read_levels(tmp_path / "l.json")["ns/md/default"]
    assert (got.kv_usage, got.waiting_capacity) == (0.95, 12)
    write_targets(tmp_path / "t.json", {("ns", "p"): 1234})
    assert json.loads((tmp_path / "t.json").read_text()) == [
        {"targets": ["127.0.0.1:1234"], "labels": {"namespace": "ns", "pod": "p"}}
    ]


def test_trace_slice_drives_the_emulator() -> None:
    from kvcap.commands.emulate import trace_scenarios

    doc = yaml.safe_load((REPO / "examples" / "llama-3.1-8b.yaml").read_text())
    trace = "/work/shared/traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv"
    trace_path = Path(trace)
    if not trace_path.exists():  # the CI clone has ../shared beside it
        trace_path = REPO.parent / "shared" / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
    scenarios, tokens = trace_scenarios(doc, str(trace_path), start=600, duration=60, replicas=2)
    assert len(scenarios) == 2 and tokens > 100_000
    for sc in scenarios:
        assert len(sc.steps) == 61
        levels = [lv for _, lv in sc.steps]
        assert all(0 <= lv.kv_usage <= 1 and lv.running >= 0 and lv.preemptions_per_second >= 0 for lv in levels)
        assert max(lv.running for lv in levels) > 0  # the slice has traffic
        assert sum(lv.prompt_tokens_per_second for lv in levels) > 0
