"""manifests/ is the chart rendered now, and the chart agrees with the operator's code.

- manifests/ equals a fresh `hack/render-manifests.sh` rendering (needs the pinned helm: CI runs
  hack/get-helm.sh first; locally the test skips with that hint unless $CI is set, then it fails).
- RBAC covers every kind the operator's client touches, with no wildcards.
- Every KVCAP_* variable the chart sets is one operator/kvcap/controller/settings.py reads.
- The operator Deployment is hardened and probed as the style guide says.
- values.yaml: every value commented with its name, and described by values.schema.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvcap import GROUP, PLURAL

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
CHART = REPO / "helm" / "kvcap"
HELM_VERSION = "v3.17.2"  # what hack/get-helm.sh pins
CACHED_HELM = (
    Path(os.environ.get("KVCAP_TOOLS_CACHE", Path.home() / ".cache" / "kvcap" / "tools"))
    / f"helm-{HELM_VERSION}-kubectl-v1.32.3" / "helm"
)


def find_helm() -> str | None:
    for candidate in (os.environ.get("HELM"), str(CACHED_HELM), shutil.which("helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            version = subprocess.run([candidate, "version", "--template", "{{.Version}}"],
                                     capture_output=True, text=True, check=False).stdout.strip()
            if version == HELM_VERSION:
                return candidate
    return None


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def test_manifests_are_rendered_from_the_chart() -> None:
    helm = find_helm()
    if helm is None:
        pytest.fail(f"helm {HELM_VERSION} not found: run hack/get-helm.sh (`make test` does)")
    result = subprocess.run(
        [str(REPO / "hack" / "render-manifests.sh"), "--check"],
        env={**os.environ, "HELM": helm}, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_manifest_files_and_headers() -> None:
    names = sorted(p.name for p in MANIFESTS.glob("*.yaml"))
    assert names == ["crds.yaml", "deployment.yaml", "namespace.yaml", "rbac.yaml"]
    for name in names:
        assert "DO NOT EDIT" in (MANIFESTS / name).read_text().splitlines()[0], name


def test_manifest_crd_is_the_crd() -> None:
    (crd,) = docs("crds.yaml")
    assert crd == yaml.safe_load((REPO / "crds" / f"{PLURAL}.{GROUP}.yaml").read_text())


def is_user_role(doc: dict[str, Any]) -> bool:
    """The ClusterRoles aggregated into the built-in edit/admin/view roles (for users, not the
    operator)."""
    labels = (doc.get("metadata") or {}).get("labels") or {}
    return any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in labels)


def operator_rbac() -> list[dict[str, Any]]:
    return [d for d in docs("rbac.yaml") if not is_user_role(d)]


def rules_by_resource() -> dict[tuple[str, str], set[str]]:
    verbs: dict[tuple[str, str], set[str]] = {}
    for doc in operator_rbac():
        for rule in doc.get("rules", []):
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    verbs.setdefault((group, resource), set()).update(rule["verbs"])
    return verbs


def test_rbac_has_no_wildcards() -> None:
    for doc in docs("rbac.yaml"):
        for rule in doc.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], rule
            assert "nonResourceURLs" not in rule, rule
            # resourceNames only where it narrows Secrets to the chart's rbac.secretNames
            assert "resourceNames" not in rule or rule["resources"] == ["secrets"], rule


def test_secrets_are_readable_only_by_name() -> None:
    rules = [r for d in operator_rbac() for r in d.get("rules", []) if "secrets" in r["resources"]]
    assert rules and all(r["resources"] == ["secrets"] for r in rules)
    assert all(r["verbs"] == ["get"] and r["resourceNames"] == ["hf-token"] for r in rules)


def test_edit_and_view_get_model_deployments_by_aggregation() -> None:
    users = {d["metadata"]["name"]: d for d in docs("rbac.yaml") if is_user_role(d)}
    edit, view = users["kvcap-edit"], users["kvcap-view"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "mount a Secret" in edit["metadata"]["annotations"]["kvcap.io/security"]
    assert "create" in edit["rules"][0]["verbs"]
    assert view["rules"][0]["verbs"] == ["get", "list", "watch"]


def test_rbac_covers_every_kind_the_operator_touches() -> None:
    from kvcap.clients.kube import PLURALS

    verbs = rules_by_resource()
    for (api_version, _kind), plural in PLURALS.items():
        group = api_version.split("/")[0] if "/" in api_version else ""
        assert (group, plural) in verbs, f"no RBAC rule for {plural}.{group or 'core'}"
    assert verbs[(GROUP, PLURAL)] >= {"list", "watch", "patch"}  # kopf
    assert verbs[(GROUP, f"{PLURAL}/status")] >= {"patch"}
    assert verbs[("", "events")] >= {"create"}  # kopf posts core/v1 Events
    assert verbs[("apiextensions.k8s.io", "customresourcedefinitions")] >= {"list", "watch"}
    assert verbs[("", "secrets")] == {"get"}  # only the referenced key, never list
    # blockOwnerDeletion on children needs update on the owner's finalizers subresource where
    # OwnerReferencesPermissionEnforcement is on; that is the only update the chart grants.
    assert verbs[(GROUP, f"{PLURAL}/finalizers")] == {"update"}
    for (group, resource), granted in verbs.items():
        if resource != f"{PLURAL}/finalizers":
            assert "update" not in granted, f"{resource}.{group}: the operator only patches"


def deployment() -> dict[str, Any]:
    (dep,) = [d for d in docs("deployment.yaml") if d["kind"] == "Deployment"]
    return dep


def test_chart_sets_only_settings_the_operator_reads() -> None:
    controller = REPO / "operator" / "kvcap" / "controller"
    # settings.py, and the autoscaling variables parsed by autoscaler.py
    settings_source = (controller / "settings.py").read_text() + (controller / "autoscaler.py").read_text()
    (container,) = deployment()["spec"]["template"]["spec"]["containers"]
    names = [e["name"] for e in container["env"]]
    assert {"KVCAP_NAMESPACES", "KVCAP_PROMETHEUS_URL", "KVCAP_EXTRA_TOLERATIONS"} <= set(names)
    for name in names:
        assert f'"{name}"' in settings_source, f"{name} is not read by controller/settings.py or autoscaler.py"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert json.loads(env["KVCAP_EXTRA_TOLERATIONS"]) == []


def test_operator_deployment_is_hardened() -> None:
    dep = deployment()
    spec = dep["spec"]
    # two replicas, one leading through a Lease; a rolling update hands over without a gap
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["KVCAP_LEADER_ELECTION"]["value"] == "Enabled"
    assert env["KVCAP_LEADER_ELECTION_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.namespace")
    (pdb,) = [d for d in docs("deployment.yaml") if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == spec["selector"]
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["command"] == ["kvcap"]
    assert container["args"][:2] == ["run", "--liveness=http://0.0.0.0:8080/healthz"]
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    assert "readinessProbe" not in container
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]


# Values whose children are chart settings (commented one by one); others hold Kubernetes objects.
CHART_SECTIONS = ("image", "serviceAccount", "rbac", "leaderElection")


def test_every_value_is_commented_with_its_name() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    path: list[str] = []
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):", line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        path = [*path[:depth], match.group(2)]
        if depth > 1 or (depth == 1 and path[0] not in CHART_SECTIONS):
            continue
        name = ".".join(path)
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith(
                f"# {name} "):
            j -= 1
        assert j >= 0 and lines[j].strip().startswith(f"# {name} "), (
            f"values.yaml: {name} needs a comment starting with '# {name} --'"
        )


def test_values_schema_matches_values() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert set(values) == set(schema["properties"])
    for name, value in values.items():
        prop = schema["properties"][name]
        assert prop.get("description"), name
        if "default" in prop:
            assert prop["default"] == value, f"values.schema.json default of {name}"
        if name in CHART_SECTIONS:
            assert prop["additionalProperties"] is False, name
            assert set(value) == set(prop["properties"]), name
            for key, sub in value.items():
                assert prop["properties"][key].get("default", sub) == sub, f"{name}.{key}"
