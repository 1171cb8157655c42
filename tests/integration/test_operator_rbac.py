"""The operator under the Helm chart's ServiceAccount, with RBAC enforced by the real API server.

The chart's RBAC (helm/kvcap/templates/rbac.yaml + serviceaccount.yaml) is rendered with `helm
template` (helm from $HELM, PATH, or hack/get-helm.sh), applied, and the operator runs as a
subprocess with a TokenRequest token of that ServiceAccount. It must plan, apply, delete a dropped
pool, read Nodes, patch status and post events without a single 403 — in both chart modes:
cluster-wide (ClusterRole) and namespaced (`watchNamespaces`: Role per namespace + small ClusterRole).
The rules must hold no wildcard."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import devcluster
import pytest
import yaml
from operator_helpers import (
    REPO,
    Api,
    OperatorProcess,
    condition,
    is_current,
    report,
    small_spec,
    wait_for,
)

pytest_plugins = ["operator_fixtures"]
pytestmark = [pytest.mark.integration, pytest.mark.e2e]

CHART = REPO / "helm" / "kvcap"
RBAC_KINDS = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"}
API_PATHS = {
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
}


def find_helm() -> str:
    found = os.environ.get("HELM") or shutil.which("helm")
    if found:
        return found
    try:
        out = subprocess.run([str(REPO / "hack" / "get-helm.sh")], capture_output=True, text=True,
                             timeout=600, check=True)
    except (subprocess.SubprocessError, OSError) as err:
        pytest.fail(f"helm is needed to render the chart's RBAC; set $HELM or run hack/get-helm.sh "
                    f"({err})", pytrace=False)
    return out.stdout.strip()


def render_rbac(release: str, namespace: str, watch: list[str]) -> list[dict[str, Any]]:
    args = [find_helm(), "template", release, str(CHART), "--namespace", namespace,
            "--show-only", "templates/rbac.yaml", "--show-only", "templates/serviceaccount.yaml"]
    if watch:
        args += ["--set", "watchNamespaces={" + ",".join(watch) + "}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert {d["kind"] for d in docs} <= RBAC_KINDS
    return docs


def assert_no_wildcards(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        for rule in doc.get("rules") or ():
            for field in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
                assert "*" not in (rule.get(field) or ()), (doc["kind"], doc["metadata"]["name"], rule)
            assert all("*" not in r for r in rule.get("resources") or ()), rule


def apply_docs(api: Api, docs: list[dict[str, Any]], namespace: str) -> list[str]:
    paths = []
    for doc in docs:
        ns = doc["metadata"].get("namespace") or namespace
        path = f"{API_PATHS[doc['kind']].format(ns=ns)}/{doc['metadata']['name']}"
        api.apply(path, doc)
        paths.append(path)
    return paths


@pytest.mark.timeout(360)
@pytest.mark.parametrize("mode", ["namespaced", "cluster-wide"])
def test_operator_under_the_chart_rbac(mode: str, kvcap_api: Api, kvcap_crd: Any,
                                       fresh_namespace: Any, tmp_path: Path) -> None:
    api = kvcap_api
    release = f"kvcap-{uuid.uuid4().hex[:5]}"
    system_ns = fresh_namespace("kvrbac-sys")
    ns = fresh_namespace("kvrbac")
    watch = [ns] if mode == "namespaced" else []
    docs = render_rbac(release, system_ns, watch)
    assert_no_wildcards(docs)
    if mode == "namespaced":
        # a Role per watched namespace, plus the leader-election Role (Leases) in the release's own
        assert {(d["kind"], d["metadata"].get("namespace")) for d in docs if d["kind"] == "Role"} \
            == {("Role", ns), ("Role", system_ns)}
    created = apply_docs(api, docs, system_ns)
    sa = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
    kubeconfig = api.cluster.service_account_kubeconfig(system_ns, sa, tmp_path / "sa.kubeconfig")

    log = tmp_path / "operator.log"
    env = {"KVCAP_NAMESPACES": ",".join(watch)}  # as the chart's Deployment sets it
    op = OperatorProcess(kubeconfig, [], log, extra_env=env).start()
    try:
        t0 = time.monotonic()
        api.create(f"/api/v1/namespaces/{ns}/configmaps", {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
            "data": {"config.json": "{}"}})
        spec = small_spec(maxContextTokens=32768, longContextPolicy="Required",
                          longContextThresholdTokens=4096)
        api.create_md(ns, "rbac", spec)

        def ready() -> dict[str, Any] | None:
            md = api.md(ns, "rbac")
            return md if is_current(md, "Ready", "True") else None

        md = wait_for("Ready under the chart's RBAC", ready, 150)
        report(f"RBAC ({mode}): operator start + create -> Ready", time.monotonic() - t0)
        assert is_current(md, "Schedulable", "True", "GpusAvailable")  # Nodes were listed
        assert [p["name"] for p in md["status"]["plan"]["pools"]] == ["default", "long"]
        api.patch_md(ns, "rbac", {"spec": {"workload": {"longContextPolicy": "Disabled",
                                                        "longContextThresholdTokens": None}}})
        wait_for("the long pool deleted under RBAC",
                 lambda: api.deployment(ns, "rbac-long") is None, 60)
        wait_for("the PoolDeleted event", lambda: any(
            e["reason"] == "PoolDeleted" for e in api.items(f"/api/v1/namespaces/{ns}/events")), 10)
        # a ConfigMap read (spec.model.configMapRef) is allowed too: '{}' is not a usable config
        api.patch_md(ns, "rbac", {"spec": {"model": {
            "configMapRef": {"name": "cfg", "key": "config.json"}}}})
        wait_for("the ConfigMap read", lambda: condition(api.md(ns, "rbac"), "CapacityPlanned").get(
            "observedGeneration") == 3, 30)
        assert condition(api.md(ns, "rbac"), "CapacityPlanned")["reason"] != "Reconciling"
    finally:
        code = op.stop()
        for path in reversed(created):
            if "/clusterrole" in path:
                api.delete(path)
    output = log.read_text(errors="replace")
    assert code == 0, output[-5000:]
    # a bare 403 (not one inside a random namespace name such as kvrbac-403f58)
    for pattern in (r"(?<![\w-])403(?![\w-])", "Forbidden", "forbidden", "Traceback"):
        found = re.search(pattern, output)
        assert found is None, f"{found[0]!r} in the operator log:\n{output[-5000:]}"


def render_user_roles(release: str, namespace: str) -> list[dict[str, Any]]:
    args = [find_helm(), "template", release, str(CHART), "--namespace", namespace,
            "--show-only", "templates/aggregate-roles.yaml"]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.timeout(240)
def test_secrets_only_by_name_and_edit_users_get_model_deployments(
    kvcap_api: Api, kvcap_crd: Any, fresh_namespace: Any
) -> None:
    """Cluster-wide, the operator's ServiceAccount reads only the Secrets named in
    `rbac.secretNames` (not every Secret of the cluster); a user holding the built-in `edit`
    role gets ModelDeployments through the chart's aggregated ClusterRole (the aggregation
    controller of the real kube-controller-manager fills `edit` in)."""
    api = kvcap_api
    release = f"kvcap-{uuid.uuid4().hex[:5]}"
    system_ns = fresh_namespace("kvsec-sys")
    ns = fresh_namespace("kvsec")
    docs = render_rbac(release, system_ns, [])
    users = render_user_roles(release, system_ns)
    assert {d["metadata"]["name"] for d in users} == {f"{release}-edit", f"{release}-view"}
    created = apply_docs(api, docs, system_ns) + apply_docs(api, users, system_ns)
    try:
        sa = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
        operator = Api(api.cluster, api.cluster.service_account_token(system_ns, sa))
        for name in ("hf-token", "db-password"):
            api.create(f"/api/v1/namespaces/{ns}/secrets", {
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                "stringData": {"token": "x"}})
        assert operator.get(f"/api/v1/namespaces/{ns}/secrets/hf-token") is not None
        for path in (f"/api/v1/namespaces/{ns}/secrets/db-password",
                     f"/api/v1/namespaces/{ns}/secrets", "/api/v1/secrets"):
            with pytest.raises(devcluster.ApiError) as err:
                operator.call("GET", path)
            assert err.value.status == 403, path

        api.cluster.ensure_service_account(ns, "dev")
        api.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "dev-edit"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "edit"},
            "subjects": [{"kind": "ServiceAccount", "name": "dev", "namespace": ns}]})
        dev = Api(api.cluster, api.cluster.service_account_token(ns, "dev"))

        def create_as_dev() -> bool:
            try:
                dev.create_md(ns, "dev", small_spec())
            except devcluster.ApiError as err:
                if err.status == 403:  # the aggregation has not reached `edit` yet
                    return False
                raise
            return True

        wait_for("a ModelDeployment created by an `edit` user", create_as_dev, 60)
        assert dev.md(ns, "dev") is not None
    finally:
        for path in reversed(created):
            if "/clusterrole" in path:
                api.delete(path)
