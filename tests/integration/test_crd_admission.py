"""The CRD on a real kube-apiserver: admission of the example table, defaulting, status, columns.

Applies crds/modeldeployments.kvcap.io.yaml (server-side apply, so it coexists with other tests that
install it) and sends every manifest of tests/unit/test_examples.py's `CASES` as a dry-run create with
strict field validation: invalid ones must be rejected with the case's schema or CEL message, valid
ones accepted and defaulted exactly as pydantic defaults them. The CEL rules exist only here.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import ssl
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvcap import GROUP, PLURAL, VERSION
from kvcap.api.models import ModelDeploymentSpec

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / f"{PLURAL}.{GROUP}.yaml"
CRD_URL = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{PLURAL}.{GROUP}"

pytestmark = pytest.mark.integration


def _load_cases() -> Any:
    path = REPO / "tests" / "unit" / "test_examples.py"
    spec = importlib.util.spec_from_file_location("kvcap_example_cases", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module while the class is built
    spec.loader.exec_module(module)
    return module


CASES_MODULE = _load_cases()
CASES = CASES_MODULE.CASES


def _devcluster() -> Any:
    import devcluster  # on sys.path via tests/integration/conftest.py

    return devcluster


def apply_crd(cluster: Any) -> None:
    """Server-side apply the CRD and wait until it is Established and its endpoint answers."""
    crd = yaml.safe_load(CRD_PATH.read_text())
    cluster.request(
        "PATCH", f"{CRD_URL}?fieldManager=kvcap-crd-test&force=true",
        json.dumps(crd).encode(), content_type="application/apply-patch+yaml",
    )
    deadline = time.monotonic() + 60
    while True:
        got = cluster.request("GET", CRD_URL)
        conditions = {c["type"]: c for c in (got.get("status") or {}).get("conditions") or []}
        if conditions.get("Established", {}).get("status") == "True":
            break
        if conditions.get("NamesAccepted", {}).get("status") == "False":
            pytest.fail(f"CRD names not accepted: {conditions['NamesAccepted']}")
        if time.monotonic() > deadline:
            pytest.fail(f"CRD not Established after 60s: {conditions}")
        time.sleep(0.2)
    while True:  # the endpoint answers 404, then 429 "storage is (re)initializing", then 200
        try:
            cluster.request("GET", f"/apis/{GROUP}/{VERSION}/{PLURAL}")
            return
        except _devcluster().ApiError as err:
            if err.status not in (404, 429, 503) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(envtest_cluster: Any) -> Any:
    apply_crd(envtest_cluster)
    return envtest_cluster


@pytest.fixture(scope="module")
def namespace(cluster: Any, k8s_namespace_factory: Any) -> str:
    name: str = k8s_namespace_factory("crd-admission")
    return name


def collection(namespace: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"


def create(cluster: Any, namespace: str, doc: dict[str, Any], *, dry_run: bool) -> Any:
    query = "fieldValidation=Strict" + ("&dryRun=All" if dry_run else "")
    return cluster.request("POST", f"{collection(namespace)}?{query}", doc)


def expected_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = ModelDeploymentSpec.model_validate(doc["spec"])
    return spec.model_dump(by_alias=True, exclude_none=True)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_admission(cluster: Any, namespace: str, case: Any) -> None:
    doc = copy.deepcopy(case.manifest)
    if case.valid:
        stored = create(cluster, namespace, doc, dry_run=True)
        assert stored["spec"] == expected_spec(case.manifest), (
            "the apiserver's defaulting differs from pydantic's"
        )
        return
    with pytest.raises(_devcluster().ApiError) as err:
        create(cluster, namespace, doc, dry_run=True)
    assert err.value.status in (400, 422), err.value
    message = json.loads(err.value.body).get("message", err.value.body)
    assert case.apiserver_error in message, message


@pytest.fixture
def created(cluster: Any, namespace: str) -> Iterator[dict[str, Any]]:
    doc = copy.deepcopy(CASES_MODULE.manifest(name="stored"))
    obj = create(cluster, namespace, doc, dry_run=False)
    yield obj
    cluster.request("DELETE", f"{collection(namespace)}/stored")


def test_stored_object_is_defaulted(cluster: Any, namespace: str, created: dict[str, Any]) -> None:
    got = cluster.request("GET", f"{collection(namespace)}/stored")
    assert got["spec"] == expected_spec(CASES_MODULE.manifest(name="stored"))
    assert got["metadata"]["generation"] == 1


SAMPLE_STATUS: dict[str, Any] = {
    "observedGeneration": 1,
    "replicas": 3,
    "readyReplicas": 2,
    "totalGpus": 3,
    "lowerBoundGpus": 2,
    "plan": {
        "feasible": True,
        "reason": "PlanFits",
        "message": "3 GPUs (default: 2 x H100-80GB TP 1; long: 1 x H100-80GB TP 1)",
        "splitDecision": "split at 6000 tokens: maxContextTokens 32768 > 4 x p99 6000",
        "vllmVersion": "0.11.0",
        "pools": [
            {"name": "default", "gpuProduct": "H100-80GB", "tensorParallelSize": 1,
             "pipelineParallelSize": 1, "replicas": 2, "readyReplicas": 2, "gpusPerReplica": 1,
             "maxModelLen": 6000, "minContextTokens": 0, "maxNumSeqs": 160,
             "kvTokensPerReplica": 1_000_000, "kvCacheBytesPerGpu": 48 * 2**30,
             "deploymentName": "stored-default", "serviceName": "stored-default"},
            {"name": "long", "gpuProduct": "H100-80GB", "tensorParallelSize": 1,
             "pipelineParallelSize": 1, "replicas": 1, "readyReplicas": 0, "gpusPerReplica": 1,
             "maxModelLen": 32768, "minContextTokens": 6001, "maxNumSeqs": 38,
             "kvTokensPerReplica": 1_000_000, "kvCacheBytesPerGpu": 48 * 2**30,
             "deploymentName": "stored-long", "serviceName": "stored-long"},
        ],
    },
    "conditions": [
        {"type": "Ready", "status": "False", "reason": "ReplicasUnavailable",
         "message": "2 of 3 replicas ready", "observedGeneration": 1,
         "lastTransitionTime": "2026-01-01T00:00:00Z"},
        {"type": "CapacityPlanned", "status": "True", "reason": "PlanFits", "message": "",
         "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"},
    ],
}


def patch_status(cluster: Any, namespace: str, status: dict[str, Any]) -> Any:
    return cluster.request(
        "PATCH", f"{collection(namespace)}/stored/status?fieldValidation=Strict",
        {"status": status}, content_type="application/merge-patch+json",
    )


def test_status_subresource_takes_the_operators_status(
    cluster: Any, namespace: str, created: dict[str, Any]
) -> None:
    patched = patch_status(cluster, namespace, SAMPLE_STATUS)
    assert patched["status"] == SAMPLE_STATUS
    assert patched["metadata"]["generation"] == 1  # status writes do not bump the generation
    # The main resource ignores status; the status subresource ignores spec.
    main = cluster.request(
        "PATCH", f"{collection(namespace)}/stored", {"status": {"replicas": 99}},
        content_type="application/merge-patch+json",
    )
    assert main["status"]["replicas"] == 3


@pytest.mark.parametrize(("status", "message"), [
    ({"plan": {"reason": "not camel case"}}, "status.plan.reason"),
    ({"conditions": [{"type": "Ready", "status": "Yes", "reason": "X", "message": "",
                      "lastTransitionTime": "2026-01-01T00:00:00Z"}]}, "Unsupported value"),
    ({"replicas": -1}, "status.replicas"),
    ({"phase": "Running"}, 'unknown field "status.phase"'),
], ids=["reason-not-camel", "condition-status", "negative-replicas", "no-phase"])
def test_status_schema_rejects(
    cluster: Any, namespace: str, created: dict[str, Any], status: dict[str, Any], message: str
) -> None:
    with pytest.raises(_devcluster().ApiError) as err:
        patch_status(cluster, namespace, status)
    assert message in json.loads(err.value.body)["message"]


def test_printer_columns(cluster: Any, namespace: str, created: dict[str, Any]) -> None:
    patch_status(cluster, namespace, SAMPLE_STATUS)
    table = _table(cluster, namespace)
    names = [c["name"] for c in table["columnDefinitions"]]
    assert names == ["Name", "Ready", "Replicas", "Available", "GPUs", "Model", "Message", "Age"]
    row = next(r["cells"] for r in table["rows"] if r["cells"][0] == "stored")
    assert row[1:7] == ["False", 3, 2, 3, "meta-llama/Llama-3.1-8B-Instruct", "2 of 3 replicas ready"]


def _table(cluster: Any, namespace: str) -> Any:
    """The list as `kubectl get` asks for it (a meta.k8s.io Table with the printer columns)."""
    req = urllib.request.Request(f"{cluster.server}{collection(namespace)}")
    req.add_header("Authorization", f"Bearer {cluster.token}")
    req.add_header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    context = ssl.create_default_context(cafile=str(cluster.ca_file))
    with urllib.request.urlopen(req, context=context, timeout=30) as resp:
        return json.loads(resp.read())


def test_spec_model_name_is_mutable(cluster: Any, namespace: str, created: dict[str, Any]) -> None:
    patched = cluster.request(
        "PATCH", f"{collection(namespace)}/stored", {"spec": {"model": {"name": "Qwen/Qwen3-8B"}}},
        content_type="application/merge-patch+json",
    )
    assert patched["spec"]["model"]["name"] == "Qwen/Qwen3-8B"
    assert patched["metadata"]["generation"] == 2


# Core and built-in kinds in manifests/ -> their collection path.
_COLLECTIONS = {
    "Namespace": "/api/v1/namespaces",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
}


@pytest.mark.parametrize("name", ["namespace.yaml", "rbac.yaml", "deployment.yaml"])
def test_manifests_are_admitted(cluster: Any, name: str) -> None:
    """Every object in manifests/ passes the real apiserver's strict validation (dry run)."""
    docs = [d for d in yaml.safe_load_all((REPO / "manifests" / name).read_text()) if d]
    for doc in docs:
        ns = doc["metadata"].get("namespace")
        if ns:
            cluster.ensure_namespace(ns)  # dry-run creates still need the namespace to exist
        path = _COLLECTIONS[doc["kind"]].format(ns=ns) + "/" + doc["metadata"]["name"]
        # Server-side apply, so it also works when another test installed the operator already.
        applied = cluster.request(
            "PATCH",
            f"{path}?dryRun=All&fieldValidation=Strict&fieldManager=kvcap-manifests-test&force=true",
            json.dumps(doc).encode(), content_type="application/apply-patch+yaml",
        )
        assert applied["metadata"]["name"] == doc["metadata"]["name"]
