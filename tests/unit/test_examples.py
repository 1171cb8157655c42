"""Example manifests: the ones in examples/ and a table of valid/invalid ones, checked with pydantic.

`CASES` is shared with tests/integration/test_crd_admission.py, which sends the same manifests to a
real kube-apiserver: each case names the error text pydantic gives and the one the apiserver gives
(the CRD's schema or CEL message), so the two validators are held to the same verdicts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kvcap.api.models import MAX_NAME_LENGTH, ModelDeploymentSpec, parse_manifest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@dataclass(frozen=True)
class Case:
    id: str
    manifest: dict[str, Any]
    pydantic_error: str | None = None  # None: valid. Else a substring of pydantic's error text
    apiserver_error: str | None = None  # a substring of the apiserver's rejection (schema or CEL)
    notes: tuple[str, ...] = field(default=())

    @property
    def valid(self) -> bool:
        return self.pydantic_error is None


def manifest(name: str = "demo", **spec_overrides: Any) -> dict[str, Any]:
    """A minimal valid ModelDeployment; `spec_overrides` are merged section by section."""
    spec: dict[str, Any] = {
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
        "workload": {"maxContextTokens": 8192, "targetConcurrency": 16},
    }
    for key, value in spec_overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return {"apiVersion": "kvcap.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name}, "spec": spec}


def without(doc: dict[str, Any], *path: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return doc


PLANNED = "kvcap plans it; use the matching spec field"

CASES: list[Case] = [
    # --- valid -------------------------------------------------------------------------------
    Case("minimal", manifest()),
    Case("every-field", manifest(
        model={"revision": "main", "servedModelName": "llama", "quantization": "FP8",
               "configMapRef": {"name": "llama-config", "key": "config.json"},
               "hfTokenSecretRef": {"name": "hf-token", "key": "token"}},
        workload={"contextPercentiles": {"p50": 1000, "p90": 3000, "p99": 6000},
                  "longContextThresholdTokens": 6000, "longContextPolicy": "Required",
                  "kvHeadroomPercent": 20},
        gpu={"products": ["H100-80GB", "NVIDIA-L4"], "perNode": 4, "maxTotal": 16,
             "memory": "80Gi", "resourceName": "amd.com/gpu"},
        vllm={"image": "vllm/vllm-openai:v0.12.0", "version": "0.12.0", "kvCacheDtype": "FP8",
              "kvMemoryPolicy": "Bytes", "gpuMemoryUtilizationPercent": 90,
              "kvCacheMemory": "40Gi", "blockSize": 32, "maxNumBatchedTokens": 8192,
              "maxNumSeqs": 256, "extraArgs": ["--enable-chunked-prefill", "--seed=0"],
              "env": [{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}, {"name": "EMPTY"}],
              "shmSize": "1e9"},
        autoscaling={"policy": "KVHeadroom", "minReplicas": 0, "maxReplicas": 4,
                     "targetKvUtilizationPercent": 70, "scaleDownDelaySeconds": 0,
                     "prometheusUrl": "http://prometheus.monitoring:9090"},
        paused=True,
    )),
    Case("required-with-percentiles", manifest(workload={
        "longContextPolicy": "Required", "contextPercentiles": {"p50": 10, "p90": 10, "p99": 10}})),
    Case("threshold-just-below-max", manifest(workload={"longContextThresholdTokens": 8191})),
    Case("p99-equals-max", manifest(workload={
        "contextPercentiles": {"p50": 100, "p90": 8192, "p99": 8192}})),
    Case("name-at-length-limit", manifest(name="a" * MAX_NAME_LENGTH)),
    Case("null-optional-fields", manifest(model={"revision": None},
                                          gpu={"maxTotal": None, "memory": None})),
    Case("unplanned-look-alike-flags", manifest(vllm={"extraArgs": [
        "--max-model-length-hint", "--port-range=1", "--enforce-eager", ""]})),
    # --- invalid: CEL cross-field rules ------------------------------------------------------------
    Case("percentiles-out-of-order", manifest(workload={
        "contextPercentiles": {"p50": 4000, "p90": 3000, "p99": 6000}}),
        "contextPercentiles must satisfy p50 <= p90 <= p99",
        "contextPercentiles must satisfy p50 <= p90 <= p99"),
    Case("p99-above-max-context", manifest(workload={
        "contextPercentiles": {"p50": 1000, "p90": 3000, "p99": 9000}}),
        "contextPercentiles.p99 must be <= maxContextTokens",
        "contextPercentiles.p99 must be <= maxContextTokens"),
    Case("threshold-at-max-context", manifest(workload={"longContextThresholdTokens": 8192}),
         "longContextThresholdTokens must be < maxContextTokens",
         "longContextThresholdTokens must be < maxContextTokens"),
    Case("required-without-threshold", manifest(workload={"longContextPolicy": "Required"}),
         "longContextPolicy 'Required' must come with longContextThresholdTokens or "
         "contextPercentiles",
         "longContextPolicy 'Required' must come with longContextThresholdTokens or "
         "contextPercentiles"),
    Case("min-replicas-above-max", manifest(autoscaling={"minReplicas": 5, "maxReplicas": 4}),
         "autoscaling.minReplicas must be <= autoscaling.maxReplicas",
         "autoscaling.minReplicas must be <= autoscaling.maxReplicas"),
    Case("planned-flag-with-value", manifest(vllm={"extraArgs": ["--tensor-parallel-size=2"]}),
         f"extraArgs must not set '--tensor-parallel-size': {PLANNED}",
         f"extraArgs must not set or abbreviate '--tensor-parallel-size': {PLANNED}"),
    Case("planned-flag-underscored", manifest(vllm={"extraArgs": ["--max_model_len=4096"]}),
         f"extraArgs must not set '--max-model-len': {PLANNED}",
         f"extraArgs must not set or abbreviate '--max-model-len': {PLANNED}"),
    Case("planned-short-flag", manifest(vllm={"extraArgs": ["--seed=1", "-tp", "2"]}),
         f"extraArgs must not set '-tp': {PLANNED}",
         f"extraArgs must not set or abbreviate '-tp': {PLANNED}"),
    Case("name-too-long", manifest(name="a" * (MAX_NAME_LENGTH + 1)),
         f"at most {MAX_NAME_LENGTH} characters",
         f"metadata.name must be at most {MAX_NAME_LENGTH} characters"),
    Case("name-starts-with-digit", manifest(name="3b-model"),
         "should match pattern",
         "metadata.name must be an RFC 1035 label"),
    # --- invalid: schema -------------------------------------------------------------------------
    Case("missing-workload", without(manifest(), "spec", "workload"),
         "Field required", "spec.workload: Required value"),
    Case("missing-model-name", without(manifest(), "spec", "model", "name"),
         "Field required", "spec.model.name: Required value"),
    Case("unknown-field", manifest(workload={"maxContextLength": 8192}),
         "Extra inputs are not permitted", 'unknown field "spec.workload.maxContextLength"'),
    Case("enum-wrong-case", manifest(workload={"longContextPolicy": "required"}),
         "Input should be 'Auto', 'Disabled' or 'Required'",
         'spec.workload.longContextPolicy: Unsupported value: "required"'),
    Case("integer-as-string", manifest(workload={"maxContextTokens": "8192"}),
         "Input should be a valid integer", "spec.workload.maxContextTokens: Invalid value"),
    Case("float-percent", manifest(vllm={"gpuMemoryUtilizationPercent": 0.9}),
         "Input should be a valid integer",
         "spec.vllm.gpuMemoryUtilizationPercent: Invalid value"),
    Case("zero-concurrency", manifest(workload={"targetConcurrency": 0}),
         "Input should be greater than or equal to 1",
         "spec.workload.targetConcurrency: Invalid value: 0"),
    Case("headroom-too-high", manifest(workload={"kvHeadroomPercent": 95}),
         "Input should be less than or equal to 90",
         "spec.workload.kvHeadroomPercent: Invalid value: 95"),
    Case("memory-not-a-quantity", manifest(gpu={"memory": "80GB"}),
         "String should match pattern", "spec.gpu.memory: Invalid value: \"80GB\""),
    Case("env-name-invalid", manifest(vllm={"env": [{"name": "1BAD"}]}),
         "String should match pattern", "spec.vllm.env[0].name: Invalid value: \"1BAD\""),
    Case("too-many-products", manifest(gpu={"products": [f"gpu-{i}" for i in range(33)]}),
         "List should have at most 32 items", "spec.gpu.products: Too many: 33"),
    Case("version-not-semver", manifest(vllm={"version": "latest"}),
         "String should match pattern", "spec.vllm.version: Invalid value: \"latest\""),
]


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_with_pydantic(case: Case) -> None:
    if case.valid:
        parse_manifest(case.manifest)
        return
    with pytest.raises(ValidationError) as err:
        parse_manifest(case.manifest)
    assert case.pydantic_error in str(err.value)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(docs) == 1, f"{path.name}: one ModelDeployment per file"
    doc = parse_manifest(docs[0])
    assert doc.metadata.name, path.name
    assert path.read_text().startswith("#"), f"{path.name}: starts with a comment saying what it shows"


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"llama-3.1-8b.yaml", "qwen3-30b-a3b-long-context.yaml", "deepseek-v3.yaml",
            "gpt-oss-120b.yaml"} <= names


def test_examples_use_catalog_models() -> None:
    catalog = REPO / "operator" / "kvcap" / "capacity" / "data" / "models"
    for path in EXAMPLES:
        spec = ModelDeploymentSpec.model_validate(yaml.safe_load(path.read_text())["spec"])
        assert (catalog / (spec.model.name.replace("/", "--") + ".json")).is_file(), path.name


def test_long_context_example_triggers_a_split() -> None:
    """The planner splits when maxContextTokens > 4 x p99 (see WorkloadSpec.longContextThresholdTokens)."""
    doc = yaml.safe_load((REPO / "examples" / "qwen3-30b-a3b-long-context.yaml").read_text())
    workload = ModelDeploymentSpec.model_validate(doc["spec"]).workload
    assert workload.context_percentiles is not None
    assert workload.max_context_tokens > 4 * workload.context_percentiles.p99
