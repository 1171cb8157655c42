"""The CRD (crds/modeldeployments.kvcap.io.yaml) and the pydantic models describe the same API.

Walks `ModelDeploymentSpec.model_json_schema(by_alias=True)` and the CRD's `spec` schema together and
asserts, field by field, the same names, types, required-ness, enums, bounds, lengths, patterns,
defaults and descriptions. Also checks the CRD's own rules (strict, structural, described, bounded),
the status schema the operator writes, and that the chart ships a byte-identical copy.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvcap import GROUP, KIND, PLURAL, VERSION
from kvcap.api.models import MAX_NAME_LENGTH, NAME_PATTERN, PLANNED_FLAGS, ModelDeploymentSpec

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
CHART_CRD_DIR = REPO / "helm" / "kvcap" / "crds"
CRD_PATH = CRD_DIR / f"{PLURAL}.{GROUP}.yaml"

# Keywords compared one to one between pydantic's JSON schema and the CRD's OpenAPI schema.
COMPARED = ("type", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern", "maxItems",
            "minItems", "description")
# Keywords a structural, strict CRD schema may use; anything else fails the test.
ALLOWED_CRD_KEYWORDS = {
    "type", "format", "description", "default", "enum", "minimum", "maximum", "minLength",
    "maxLength", "pattern", "minItems", "maxItems", "items", "properties", "required",
    "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
}


def load_crd() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return doc


def version_of(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    result: dict[str, Any] = version
    return result


def root_schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = version_of(crd)["schema"]["openAPIV3Schema"]
    return schema


PYDANTIC = ModelDeploymentSpec.model_json_schema(by_alias=True)


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Inline `$ref`s and unwrap `Optional[X]` (anyOf X | null): the CRD has neither."""
    node = dict(node)
    if "anyOf" in node:
        alternatives = [a for a in node.pop("anyOf") if a.get("type") != "null"]
        assert len(alternatives) == 1, f"unexpected union {alternatives}"
        node = {**alternatives[0], **node}
        if node.get("default", "unset") is None:
            del node["default"]  # Optional[X] = None: the field is just absent
    if "$ref" in node:
        target = PYDANTIC["$defs"][node.pop("$ref").split("/")[-1]]
        node = {**target, **node}  # the field's own description wins over the class docstring
    return node


def walk_pairs(
    crd: dict[str, Any], pyd: dict[str, Any], path: str = "spec"
) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Every (path, CRD node, resolved pydantic node) pair under `spec`, checking names as it goes."""
    pyd = resolve(pyd)
    pairs = [(path, crd, pyd)]
    if pyd.get("type") == "object":
        crd_props, pyd_props = crd.get("properties", {}), pyd.get("properties", {})
        assert set(crd_props) == set(pyd_props), (
            f"{path}: only in CRD {sorted(set(crd_props) - set(pyd_props))}, "
            f"only in pydantic {sorted(set(pyd_props) - set(crd_props))}"
        )
        for name in crd_props:
            pairs += walk_pairs(crd_props[name], pyd_props[name], f"{path}.{name}")
    if pyd.get("type") == "array":
        assert "items" in crd, f"{path}: CRD array without items"
        pairs += walk_pairs(crd["items"], pyd["items"], f"{path}[*]")
    return pairs


SPEC_PAIRS = walk_pairs(root_schema(load_crd())["properties"]["spec"], PYDANTIC)


def test_walk_covers_every_spec_field() -> None:
    paths = {p for p, _, _ in SPEC_PAIRS}
    assert len(paths) == len(SPEC_PAIRS)
    for expected in ("spec.model.name", "spec.workload.contextPercentiles.p99",
                     "spec.vllm.env[*].name", "spec.vllm.extraArgs[*]", "spec.autoscaling.policy"):
        assert expected in paths


@pytest.mark.parametrize(("path", "crd", "pyd"), SPEC_PAIRS, ids=[p for p, _, _ in SPEC_PAIRS])
def test_field_matches_pydantic(path: str, crd: dict[str, Any], pyd: dict[str, Any]) -> None:
    for keyword in COMPARED:
        assert crd.get(keyword) == pyd.get(keyword), (
            f"{path}: {keyword} is {crd.get(keyword)!r} in the CRD, {pyd.get(keyword)!r} in pydantic"
        )
    assert sorted(crd.get("required", [])) == sorted(pyd.get("required", [])), f"{path}: required"


@pytest.mark.parametrize(("path", "crd", "pyd"), SPEC_PAIRS, ids=[p for p, _, _ in SPEC_PAIRS])
def test_default_matches_pydantic(path: str, crd: dict[str, Any], pyd: dict[str, Any]) -> None:
    if "default" in pyd:
        assert "default" in crd and crd["default"] == pyd["default"], (
            f"{path}: default {crd.get('default')!r} in the CRD, {pyd['default']!r} in pydantic"
        )
    elif crd.get("type") == "object" and "default" in crd:
        # pydantic's `default_factory=GpuSpec`: the CRD spells out the whole default object (the
        # apiserver checks CEL rules against a default as written, before nested defaults apply).
        assert crd["default"] == default_object(path), f"{path}: default differs from pydantic's"
    elif crd.get("type") == "array" and "default" in crd:
        assert crd["default"] == [], path  # pydantic's `default_factory=list`
    else:
        assert "default" not in crd, f"{path}: the CRD defaults a field pydantic leaves unset"


MINIMAL_SPEC = {"model": {"name": "m"}, "workload": {"maxContextTokens": 8192, "targetConcurrency": 4}}


def default_object(path: str) -> Any:
    """What pydantic fills in at `path` (e.g. 'spec.gpu') when the field is left out."""
    value: Any = ModelDeploymentSpec.model_validate(MINIMAL_SPEC).model_dump(
        by_alias=True, exclude_none=True)
    for part in path.split(".")[1:]:
        value = value[part]
    return value


def crd_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Apply the CRD's defaults the way the apiserver does: drop nulls, default, recurse."""
    if schema.get("type") == "object" and isinstance(value, dict):
        props = schema.get("properties", {})
        out = {k: v for k, v in value.items() if v is not None}
        for name, sub in props.items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = crd_defaults(sub, out[name])
        return out
    if schema.get("type") == "array" and isinstance(value, list):
        return [crd_defaults(schema["items"], v) for v in value]
    return value


@pytest.mark.parametrize("spec", [
    MINIMAL_SPEC,
    {"model": {"name": "m", "revision": None}, "workload": {"maxContextTokens": 8192,
     "targetConcurrency": 4}, "gpu": {"products": ["L4"]}, "vllm": {"env": [{"name": "A"}]},
     "autoscaling": {"policy": "KVHeadroom"}},
], ids=["minimal", "partial"])
def test_crd_defaulting_equals_pydantic_defaults(spec: dict[str, Any]) -> None:
    schema = root_schema(load_crd())["properties"]["spec"]
    expected = ModelDeploymentSpec.model_validate(spec).model_dump(by_alias=True, exclude_none=True)
    assert crd_defaults(schema, spec) == expected


def all_nodes(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    nodes = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        nodes += all_nodes(sub, f"{path}.{name}")
    if "items" in node:
        nodes += all_nodes(node["items"], f"{path}[*]")
    return nodes


ALL_NODES = all_nodes(root_schema(load_crd()))


def test_schema_is_structural_strict_described_and_bounded() -> None:
    problems = []
    for path, node in ALL_NODES:
        unknown = set(node) - ALLOWED_CRD_KEYWORDS
        if unknown:
            problems.append(f"{path}: keywords {sorted(unknown)} (no preserve-unknown-fields)")
        if not node.get("description") and path != ".metadata":  # the apiserver forbids one there
            problems.append(f"{path or '<root>'}: no description")
        kind = node.get("type")
        if kind is None:
            problems.append(f"{path}: no type")
        if kind == "integer" and not ("minimum" in node and "maximum" in node):
            problems.append(f"{path}: integer without minimum and maximum")
        bounded = "maxLength" in node or "enum" in node or node.get("format") == "date-time"
        if kind == "string" and not bounded and path not in (".apiVersion", ".kind"):
            problems.append(f"{path}: string without maxLength")
        if kind == "array" and "maxItems" not in node:
            problems.append(f"{path}: array without maxItems")
        if kind == "object" and path not in ("", ".metadata") and "properties" not in node:
            problems.append(f"{path}: object without properties")
    assert not problems, "\n".join(problems)


def test_names_scope_and_version() -> None:
    crd = load_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert crd["spec"]["group"] == GROUP
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (KIND, PLURAL, "modeldeployment")
    assert names["shortNames"] == ["mdep"] and names["categories"] == ["kvcap"]
    version = version_of(crd)
    assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    columns = {c["name"]: c for c in version_of(load_crd())["additionalPrinterColumns"]}
    ready = '.status.conditions[?(@.type=="Ready")]'
    assert columns["Ready"]["jsonPath"] == f"{ready}.status"
    assert columns["Replicas"]["jsonPath"] == ".status.replicas"
    assert columns["Available"]["jsonPath"] == ".status.readyReplicas"
    assert columns["GPUs"]["jsonPath"] == ".status.totalGpus"
    assert columns["Model"]["jsonPath"] == ".spec.model.name" and columns["Model"]["priority"] == 1
    assert columns["Message"]["jsonPath"] == f"{ready}.message"
    assert columns["Message"]["priority"] == 1
    assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp"
    assert list(columns)[-1] == "Age"


def test_status_schema_is_what_the_operator_writes() -> None:
    status = root_schema(load_crd())["properties"]["status"]
    props = status["properties"]
    assert set(props) == {"observedGeneration", "replicas", "readyReplicas", "totalGpus",
                          "lowerBoundGpus", "plan", "pools", "conditions"}
    assert props["observedGeneration"]["format"] == "int64"
    for name in ("replicas", "readyReplicas", "totalGpus", "lowerBoundGpus"):
        assert props[name]["format"] == "int32", name
    plan = props["plan"]["properties"]
    assert set(plan) == {"feasible", "reason", "message", "splitDecision", "vllmVersion", "pools",
                         "plannedGeneration", "replanToken", "modelBytes"}
    assert plan["feasible"]["type"] == "boolean"
    pools = plan["pools"]
    assert pools["x-kubernetes-list-type"] == "map"
    assert pools["x-kubernetes-list-map-keys"] == ["name"] and pools["maxItems"] == 4
    pool = pools["items"]["properties"]
    assert set(pool) == {
        "name", "gpuProduct", "tensorParallelSize", "pipelineParallelSize", "replicas",
        "readyReplicas", "gpusPerReplica", "maxModelLen", "minContextTokens", "maxNumSeqs",
        "kvTokensPerReplica", "kvCacheBytesPerGpu", "deploymentName", "serviceName",
        "gpuLabels", "vllmArgs", "gpuMemoryUtilization", "targetConcurrency", "concurrencyPerReplica",
        "bindingConstraint", "predictedTtftMilliseconds", "predictedTpotMilliseconds",
        "prefillSecondsPerToken", "decodeSecondsPerToken",
    }
    assert pool["kvTokensPerReplica"]["format"] == pool["kvCacheBytesPerGpu"]["format"] == "int64"
    # status.pools[]: the autoscaler's per-pool state, where users read it
    # (kvcap.controller.scaling.pool_status writes exactly these keys, plus the pool's name)
    auto = props["pools"]
    assert auto["x-kubernetes-list-type"] == "map"
    assert auto["x-kubernetes-list-map-keys"] == ["name"] and auto["maxItems"] == 4
    entry = auto["items"]["properties"]
    assert set(entry) == {
        "name", "currentReplicas", "desiredReplicas", "kvTokensInUse", "kvTokensCapacity",
        "plannedKvTokensPerReplica", "observedKvTokensPerReplica", "capacityWaiting",
        "preemptionRate", "lastScaleTime", "decision", "metricsTime", "autoscaler",
    }
    assert set(entry["autoscaler"]["properties"]) == {"lowSince", "lastScaleTime"}
    assert entry["lastScaleTime"]["format"] == entry["metricsTime"]["format"] == "date-time"
    conditions = props["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    cond = conditions["items"]
    assert set(cond["properties"]) == {"type", "status", "reason", "message",
                                       "observedGeneration", "lastTransitionTime"}
    assert cond["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert cond["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert set(cond["required"]) == {"type", "status", "reason", "message", "lastTransitionTime"}


def rules_at(path: str) -> list[dict[str, Any]]:
    nodes = dict(ALL_NODES)
    rules: list[dict[str, Any]] = nodes[path].get("x-kubernetes-validations", [])
    return rules


def test_every_rule_has_a_must_message() -> None:
    for path, node in ALL_NODES:
        for rule in node.get("x-kubernetes-validations", []):
            assert " must " in rule["message"], f"{path}: {rule['message']!r}"


def test_extra_args_rule_lists_exactly_the_planned_flags() -> None:
    (rule,) = rules_at(".spec.vllm.extraArgs[*]")
    listed = set(re.findall(r"'(-[-a-z]+)'", rule["rule"]))
    assert listed == set(PLANNED_FLAGS)
    assert "replace('_', '-')" in rule["rule"]  # '--max_model_len' is '--max-model-len' to vLLM


def test_name_rules_use_the_models_constants() -> None:
    rules = " ".join(r["rule"] for r in rules_at(""))
    assert f"self.metadata.name.size() <= {MAX_NAME_LENGTH}" in rules
    assert f"self.metadata.name.matches('{NAME_PATTERN}')" in rules


def test_cross_field_rules_exist_where_pydantic_validates() -> None:
    assert "self.p50 <= self.p90 && self.p90 <= self.p99" in str(
        rules_at(".spec.workload.contextPercentiles"))
    workload = " ".join(r["rule"] for r in rules_at(".spec.workload"))
    assert "self.contextPercentiles.p99 <= self.maxContextTokens" in workload
    assert "self.longContextThresholdTokens < self.maxContextTokens" in workload
    assert "self.longContextPolicy != 'Required'" in workload
    assert "self.minReplicas <= self.maxReplicas" in str(rules_at(".spec.autoscaling"))


def test_chart_crds_are_byte_identical_copies() -> None:
    ours = sorted(p.name for p in CRD_DIR.glob("*.yaml"))
    chart = sorted(p.name for p in CHART_CRD_DIR.glob("*.yaml"))
    assert ours == chart, "helm/kvcap/crds/ must hold exactly the files in crds/"
    for name in ours:
        assert (CRD_DIR / name).read_bytes() == (CHART_CRD_DIR / name).read_bytes(), (
            f"helm/kvcap/crds/{name} differs from crds/{name}; run: cp crds/*.yaml helm/kvcap/crds/"
        )
