"""`kvcap export keda` against the real things: KEDA's published ScaledObject CRD installed in the
real apiserver (server-side apply, dry run, strict field validation), and the trigger's PromQL run
against a real Prometheus scraping vLLM emulators named like the pool's pods."""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_helpers import Api, apply_crd

from kvcap.autoscale.emulator import Levels
from kvcap.commands.export import export_keda

pytest_plugins = ["operator_fixtures", "prometheus_fixture"]
pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
KEDA_CRD = Path(__file__).parent / "data" / "keda.sh_scaledobjects.yaml"
EXAMPLE = REPO / "examples" / "qwen3-30b-a3b-long-context.yaml"


@pytest.fixture(scope="module")
def keda_api(envtest_cluster: Any) -> Api:
    api = Api(envtest_cluster)
    crd = next(d for d in yaml.safe_load_all(KEDA_CRD.read_text()) if d)
    apply_crd(api, crd)
    return api


def test_scaled_objects_pass_a_server_side_dry_run_against_kedas_crd(keda_api: Api) -> None:
    ns = f"keda-{uuid.uuid4().hex[:6]}"
    keda_api.cluster.ensure_namespace(ns)
    objects = export_keda(yaml.safe_load(EXAMPLE.read_text()), namespace=ns)
    assert len(objects) == 2
    for obj in objects:
        path = f"/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects/{obj['metadata']['name']}"
        got = keda_api.call(
            "PATCH",
            f"{path}?fieldManager=kvcap-export&dryRun=All&fieldValidation=Strict",
            obj,
            content_type="application/apply-patch+yaml",
        )
        assert got["spec"]["triggers"] == obj["spec"]["triggers"]  # nothing pruned
        assert got["spec"]["advanced"] == obj["spec"]["advanced"]
        assert keda_api.get(path) is None  # a dry run persists nothing
    # a field KEDA's schema does not know is rejected: the dry run really validates
    bad = {**objects[0], "spec": {**objects[0]["spec"], "cooldownSeconds": 5}}
    with pytest.raises(Exception, match="cooldownSeconds"):
        keda_api.call(
            "PATCH",
            f"/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects/{bad['metadata']['name']}"
            "?fieldManager=kvcap-export&dryRun=All&fieldValidation=Strict",
            bad,
            content_type="application/apply-patch+yaml",
        )


@pytest.mark.parametrize("naming", ["current", "legacy"])
def test_trigger_promql_computes_the_pool_demand(prometheus: Any, emulators: Any, naming: str) -> None:
    ns = f"keda-{uuid.uuid4().hex[:6]}"
    (default, long) = export_keda(yaml.safe_load(EXAMPLE.read_text()), namespace=ns)
    levels = [Levels(kv_usage=0.9, running=40, waiting_capacity=6), Levels(kv_usage=0.7, running=30)]
    # pods named as a Deployment names them; one pod of the other pool must not count
    for i, lv in enumerate(levels):
        emulators(ns, f"qwen3-30b-default-7c9d8f6b5-{'abcde'[i]}bcde", lv, naming=naming)
    emulators(ns, "qwen3-30b-long-5f6d7c8b9-zzzzz", Levels(kv_usage=1.0, running=99), naming=naming)
    meta = default["spec"]["triggers"][0]["metadata"]
    result = prometheus.wait_for(
        meta["query"],
        lambda r: len(r) == 1 and float(r[0]["value"][1]) > 0 and _running(prometheus, ns) == 169,
    )
    value = float(result[0]["value"][1])
    # recompute by hand from the query's constants: usage x C + waiting x W + running x G
    query = meta["query"]
    c = int(query.split(") * ")[1].split()[0])
    w = int(query.split(")) * ")[1].split()[0])
    g = int(query.rsplit(" * ", 1)[1])
    waiting = 6  # 'current': the capacity reason; 'legacy': every waiting request (no split)
    expected = (0.9 + 0.7) * c + waiting * w + (40 + 30) * g
    assert value == pytest.approx(expected, rel=1e-6)
    # what the HPA KEDA drives would ask for: ceil(demand / threshold)
    wanted = math.ceil(value / float(meta["threshold"]))
    assert wanted == math.ceil(expected / (0.75 * c))
    assert long["spec"]["triggers"][0]["metadata"]["query"] != query


def _running(prometheus: Any, ns: str) -> float:
    r = prometheus.query(
        f'sum(vllm:num_requests_running{{namespace="{ns}"}} or vllm_num_requests_running{{namespace="{ns}"}})'
    )
    return float(r[0]["value"][1]) if r else 0.0
