"""The pure decisions of kvcap.controller.reconcile, plus the whole pipeline against an in-memory API (no network)."""

from __future__ import annotations

import copy
import json
from typing import Any

import kopf
import pytest
from operator_factories import MODEL, make_plan, make_pool, make_spec
from pydantic import ValidationError

from kvcap.api import constants as kc
from kvcap.api.errors import ModelNotFound
from kvcap.api.models import ModelDeploymentSpec
from kvcap.capacity.plan_types import CapacityPlan
from kvcap.clients.kube import ApiError
from kvcap.controller.conditions import Check, get_condition
from kvcap.controller.reconcile import (
    OperatorContext,
    check_multi_node,
    check_schedulable,
    cluster_gpus,
    diff_children,
    format_validation_error,
    gpu_inventory,
    observe_workloads,
    parse_model_config,
    reconcile,
    skip_resync,
    unschedulable_pods,
)
from kvcap.controller.render import Features
from kvcap.controller.settings import Settings, SettingsError, parse_settings

H100 = "NVIDIA-H100-80GB-HBM3"


def node(name: str, product: str | None, gpus: str | None, *, ready: bool = True,
         unschedulable: bool = False) -> dict[str, Any]:
    labels = {kc.GPU_PRODUCT_LABEL: product} if product else {}
    allocatable = {"cpu": "32"} | ({"nvidia.com/gpu": gpus} if gpus is not None else {})
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": True} if unschedulable else {},
        "status": {"allocatable": allocatable,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


NODES = [
    node("h1", H100, "8"), node("h2", H100, "8"), node("l1", "NVIDIA-L4", "4"),
    node("down", H100, "8", ready=False), node("cordoned", H100, "8", unschedulable=True),
    node("cpu", None, None), node("zero", H100, "0"), node("junk", H100, "lots"),
]


def test_gpu_inventory_counts_ready_schedulable_nodes_per_product() -> None:
    inventory = gpu_inventory(NODES, "nvidia.com/gpu")
    assert inventory == {H100: [8, 8], "NVIDIA-L4": [4]}
    assert cluster_gpus(inventory) == {"NVIDIA-L4": 4, H100: 16}
    assert cluster_gpus({}) is None and cluster_gpus(None) is None
    assert gpu_inventory(NODES, "amd.com/gpu") == {}


@pytest.mark.parametrize(("pools", "per_node", "inventory", "pending", "expected"), [
    ([make_pool()], 8, {H100: [8, 8]}, [],
     ("True", "GpusAvailable", f"needs 2 x {H100}, 16 allocatable")),
    ([make_pool(replicas=3, gpus_per_replica=8, tensor_parallel_size=8)], 8, {H100: [8, 8]}, [],
     ("False", "InsufficientGpus", f"needs 24 x {H100}, 16 allocatable on Ready nodes")),
    ([make_pool(), make_pool(name="long", replicas=2, gpus_per_replica=8)], 8, {H100: [8, 8]}, [],
     ("False", "InsufficientGpus", f"needs 18 x {H100}, 16 allocatable on Ready nodes")),
    ([make_pool(gpus_per_replica=8, replicas=1, gpu_labels=("NVIDIA-L4",))], 8,
     {"NVIDIA-L4": [4, 4]}, [],
     ("False", "NoNodeFitsReplica",
      "pool 'default' needs 8 x NVIDIA-L4 on one node, the largest node allocates 4")),
    ([make_pool()], 8, {}, [], ("False", "InsufficientGpus", f"needs 2 x {H100}, 0 allocatable on Ready nodes")),
    ([make_pool(gpu_labels=())], 8, {}, [],
     ("False", "InsufficientGpus", "needs 2 x H100-80GB, 0 allocatable on Ready nodes")),
    ([make_pool()], 8, None, [], ("Unknown", "InventoryUnavailable",
                                  "node inventory is disabled or Nodes cannot be read")),
    ([make_pool()], 8, {H100: [8]}, [("llama-default-x", "0/3 nodes are available")],
     ("False", "PodUnschedulable", "pod 'llama-default-x': 0/3 nodes are available")),
    ([make_pool(gpus_per_replica=16, replicas=1)], 8, {H100: [8, 8]}, [],
     ("True", "GpusAvailable", f"needs 16 x {H100}, 16 allocatable")),
])
def test_check_schedulable(pools: list[Any], per_node: int, inventory: Any, pending: Any,
                           expected: tuple[str, str, str]) -> None:
    spec = make_spec(gpu={"perNode": per_node})
    check = check_schedulable(spec, make_plan(*pools), inventory, pending)
    assert (check.status, check.reason, check.message) == expected


def test_check_schedulable_without_plan() -> None:
    assert check_schedulable(make_spec(), None, {}).reason == "NotPlanned"


@pytest.mark.parametrize(("gpus", "per_node", "lws", "expected_reason"), [
    (8, 8, False, None),
    (16, 8, True, None),
    (16, 8, False, "NeedsMultiNode"),
    (9, 8, True, None),  # 3 nodes x 3 GPUs
])
def test_check_multi_node(gpus: int, per_node: int, lws: bool, expected_reason: str | None) -> None:
    plan = make_plan(make_pool(gpus_per_replica=gpus, tensor_parallel_size=gpus, replicas=1))
    check = check_multi_node(make_spec(gpu={"perNode": per_node}), plan,
                             Features(leader_worker_set=lws))
    assert (check.reason if check else None) == expected_reason
    if check is not None:
        assert check.status == "False"
        assert "'leaderworkerset.x-k8s.io/v1' API is not installed" in check.message
        assert "`spec.gpu.perNode` is 8" in check.message


def obj(kind: str, name: str, uid: str | None = "uid-1", controller: bool = True) -> dict[str, Any]:
    refs = [{"uid": uid, "controller": controller, "kind": "ModelDeployment"}] if uid else []
    return {"apiVersion": "v1", "kind": kind,
            "metadata": {"name": name, "ownerReferences": refs, "uid": f"{name}-uid"}}


def test_diff_children() -> None:
    desired = [obj("Deployment", "a-default"), obj("Service", "a-default"), obj("Service", "a-new")]
    listed = [
        obj("Deployment", "a-default"),  # ours: apply
        obj("Service", "a-default", uid="someone-else"),  # labelled like ours, not ours: conflict
        obj("Deployment", "a-long"),  # ours, no longer wanted: delete
        obj("Service", "a-long", uid="uid-1", controller=False),  # not controller: leave alone
        obj("Service", "stranger", uid=None),  # no owner: leave alone
    ]
    diff = diff_children(desired, listed, "uid-1")
    assert [o["metadata"]["name"] for o in diff.apply] == ["a-default"]
    assert [o["metadata"]["name"] for o in diff.lookup] == ["a-new"]
    assert diff.conflicts == ("Service 'a-default'",)
    assert [(o["kind"], o["metadata"]["name"]) for o in diff.delete] == [("Deployment", "a-long")]


def test_unschedulable_pods() -> None:
    def pod(name: str, phase: str, reason: str | None, deleting: bool = False) -> dict[str, Any]:
        conds = [{"type": "PodScheduled", "status": "False", "reason": reason,
                  "message": f"{name}: Insufficient nvidia.com/gpu"}] if reason else []
        meta: dict[str, Any] = {"name": name}
        if deleting:
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        return {"metadata": meta, "status": {"phase": phase, "conditions": conds}}

    pods = [pod("b", "Pending", "Unschedulable"), pod("a", "Pending", "Unschedulable"),
            pod("c", "Pending", "SchedulingGated"), pod("d", "Running", None),
            pod("e", "Pending", "Unschedulable", deleting=True)]
    assert unschedulable_pods(pods) == [("a", "a: Insufficient nvidia.com/gpu"),
                                        ("b", "b: Insufficient nvidia.com/gpu")]


def test_observe_workloads() -> None:
    dep = {"kind": "Deployment",
           "metadata": {"name": "x-default", "generation": 3, "labels": {kc.LABEL_POOL: "default"}},
           "spec": {"replicas": 2},
           "status": {"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 2}}
    svc = {"kind": "Service", "metadata": {"name": "x-default", "labels": {kc.LABEL_POOL: "default"}}}
    seen = observe_workloads([dep, svc])
    assert list(seen) == ["default"]
    assert (seen["default"].ready_replicas, seen["default"].current) == (2, False)


def test_skip_resync_only_for_invalid_current_generation() -> None:
    body = {"metadata": {"generation": 2}, "status": {
        "observedGeneration": 2,
        "conditions": [{"type": "CapacityPlanned", "status": "False", "reason": "InvalidSpec"}]}}
    assert skip_resync(body)
    assert not skip_resync({**body, "metadata": {"generation": 3}})
    assert not skip_resync({"metadata": {"generation": 1}, "status": {}})


def test_format_validation_error_is_one_line_with_paths() -> None:
    with pytest.raises(ValidationError) as info:
        ModelDeploymentSpec.model_validate({"model": {}, "workload": {"maxContextTokens": 0,
                                                                     "targetConcurrency": 1}})
    message = format_validation_error(info.value)
    assert "\n" not in message
    assert "`spec.model.name`" in message and "`spec.workload.maxContextTokens`" in message


@pytest.mark.parametrize(("text", "error"), [
    (None, "ConfigMap 'c' key 'k' does not exist"),
    ("{", "ConfigMap 'c' key 'k' is not valid JSON (line 1, column 2: Expecting property name"),
    ("[1]", "ConfigMap 'c' key 'k' must hold a JSON object"),
])
def test_parse_model_config_errors(text: str | None, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        parse_model_config(text, "ConfigMap 'c' key 'k'")
    assert parse_model_config('{"a": 1}', "x") == {"a": 1}


def test_parse_settings() -> None:
    s = parse_settings({
        "KVCAP_NAMESPACES": "a, b,,", "KVCAP_RESYNC_SECONDS": "5",
        "KVCAP_EXTRA_TOLERATIONS": json.dumps([{"key": "k", "operator": "Exists"}]),
        "KVCAP_NODE_INVENTORY": "Disabled", "KVCAP_LIVENESS_ENDPOINT": "http://0.0.0.0:8080/healthz",
    })
    assert s.namespaces == ("a", "b") and s.resync_seconds == 5.0 and not s.node_inventory
    assert s.extra_tolerations == ({"key": "k", "operator": "Exists"},)
    assert parse_settings({}) == Settings()
    for bad in ({"KVCAP_RESYNC_SECONDS": "0"}, {"KVCAP_RESYNC_SECONDS": "x"},
                {"KVCAP_EXTRA_TOLERATIONS": "{"}, {"KVCAP_EXTRA_TOLERATIONS": '[{"keys": 1}]'},
                {"KVCAP_NODE_INVENTORY": "yes"}):
        with pytest.raises(SettingsError):
            parse_settings(bad)


# --- the whole pipeline against an in-memory API server ---------------------------------------------


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the API server applies application/merge-patch+json."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = value
    return out


class FakeKube:
    """Just enough of kvcap.clients.kube.Kube: objects keyed by (plural, namespace, name), SSA as replace."""

    def __init__(self, nodes: list[dict[str, Any]] | None = None,
                 apis: set[tuple[str, str, str]] | None = None) -> None:
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.nodes = nodes if nodes is not None else NODES[:3]
        self.apis = apis or set()
        self.calls: list[str] = []
        self.status_patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.fail: ApiError | None = None
        self.version = 100

    async def post_event(self, obj: dict[str, Any], *, type: str, reason: str, message: str
                         ) -> None:
        self.events.append((type, reason, message))

    async def list_nodes(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self.nodes)

    async def has_resource(self, group: str, version: str, plural: str) -> bool:
        return (group, version, plural) in self.apis

    async def list_objects(self, api_version: str, plural: str, namespace: str | None,
                   labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        self.calls.append(f"list {plural}")
        if self.fail is not None:
            raise self.fail
        return [copy.deepcopy(o) for (p, ns, _), o in sorted(self.objects.items())
                if p == plural and ns == namespace
                and all(o["metadata"].get("labels", {}).get(k) == v for k, v in (labels or {}).items())]

    async def get(self, api_version: str, plural: str, namespace: str | None, name: str
                  ) -> dict[str, Any] | None:
        self.calls.append(f"get {plural} {name}")
        found = self.objects.get((plural, namespace, name))
        return copy.deepcopy(found) if found else None

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        from kvcap.clients.kube import plural_for

        plural = plural_for(obj["apiVersion"], obj["kind"])
        key = (plural, obj["metadata"]["namespace"], obj["metadata"]["name"])
        self.calls.append(f"apply {obj['kind']} {obj['metadata']['name']}")
        old = self.objects.get(key)
        new = copy.deepcopy(obj)
        new["metadata"]["uid"] = old["metadata"]["uid"] if old else f"{key[2]}-{plural}"
        new["metadata"]["generation"] = 1
        new["metadata"]["resourceVersion"] = "1"
        self.objects[key] = new
        return copy.deepcopy(new)

    async def delete(self, api_version: str, plural: str, namespace: str, name: str, *, uid: str
                     ) -> bool:
        self.calls.append(f"delete {plural} {name}")
        return self.objects.pop((plural, namespace, name), None) is not None

    async def patch_status(self, api_version: str, plural: str, namespace: str, name: str,
                           status: dict[str, Any], *, resource_version: str | None = None
                           ) -> dict[str, Any]:
        stored = self.objects.get(("modeldeployments", namespace, name))
        if stored is None:
            raise ApiError(404, "NotFound", name)
        if resource_version and stored["metadata"].get("resourceVersion") != resource_version:
            raise ApiError(409, "Conflict", "the object has been modified")
        self.status_patches.append(status)
        stored["status"] = merge_patch(stored.get("status", {}), copy.deepcopy(status))
        self.bump(stored)
        return copy.deepcopy(stored)

    def bump(self, obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)

    def store(self, body: dict[str, Any]) -> None:
        """Put (or replace) a ModelDeployment, as a user's write would."""
        raw = copy.deepcopy(dict(body))
        self.bump(raw)
        self.objects[("modeldeployments", raw["metadata"]["namespace"], raw["metadata"]["name"])] = raw

    async def read_key(self, kind: str, namespace: str, name: str, key: str) -> str | None:
        found = self.objects.get((kind.lower() + "s", namespace, name))
        return None if found is None else found.get("data", {}).get(key)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, spec: ModelDeploymentSpec, *, config: Any = None,
                 cluster_gpus: Any = None) -> CapacityPlan:
        self.calls.append({"config": config, "cluster_gpus": cluster_gpus})
        pools = [make_pool(vllm_args=(spec.model.name, "--max-model-len",
                                      str(spec.workload.max_context_tokens)),
                           max_model_len=spec.workload.max_context_tokens)]
        if spec.workload.long_context_policy == "Required":
            pools.append(make_pool(name="long", replicas=1, min_context_tokens=8193,
                                   max_model_len=131072))
        return make_plan(*pools)


def body_for(spec: dict[str, Any], *, generation: int = 1, status: dict[str, Any] | None = None
             ) -> kopf.Body:
    raw = {"apiVersion": "kvcap.io/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": "llama", "namespace": "team-a", "uid": "uid-1",
                        "generation": generation},
           "spec": spec, "status": status or {}}
    return kopf.Body(raw)


SPEC = {"model": {"name": MODEL}, "workload": {"maxContextTokens": 8192, "targetConcurrency": 64}}


async def run(kube: FakeKube, planner: Any, spec: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """Store the ModelDeployment as given, reconcile it; the status written (merged), or {}."""
    ctx = OperatorContext(kube=kube, settings=Settings(), plan_fn=planner)  # type: ignore[arg-type]
    return await run_with(ctx, body_for(spec, **kw))


async def run_with(ctx: OperatorContext, body: Any, trigger: Any = "change") -> dict[str, Any]:
    kube = ctx.kube
    kube.store(body)  # type: ignore[attr-defined]
    before = len(kube.status_patches)  # type: ignore[attr-defined]
    try:
        await reconcile(body, logger=_logger(), ctx=ctx, trigger=trigger)
    finally:
        written = kube.status_patches[before:]  # type: ignore[attr-defined]
        merged: dict[str, Any] = {}
        for patch in written:
            merged.update(patch)
        run_with.last = merged  # type: ignore[attr-defined]
    return merged


def _logger() -> Any:
    import logging

    return logging.getLogger("test")


async def test_pipeline_creates_children_and_reports_status() -> None:
    kube, planner = FakeKube(), Recorder()
    status = await run(kube, planner, SPEC)
    assert len(kube.status_patches) == 1  # one status write for a new object
    assert planner.calls == [{"config": None, "cluster_gpus": {"NVIDIA-L4": 4, H100: 16}}]
    assert [c for c in kube.calls if c.startswith("apply")] == [
        "apply Deployment llama-default", "apply Service llama-default",
        "apply PodDisruptionBudget llama-default",
    ]
    assert get_condition(status, "CapacityPlanned")["reason"] == "PlanFits"  # type: ignore[index]
    assert get_condition(status, "ChildrenSynced")["status"] == "True"  # type: ignore[index]
    assert get_condition(status, "Ready")["reason"] == "ReplicasNotReady"  # type: ignore[index]
    assert status["plan"]["pools"][0]["deploymentName"] == "llama-default"
    assert [(t, r) for t, r, _ in kube.events] == [("Normal", "PlanChanged")]


async def test_pipeline_deletes_the_long_pool_when_the_plan_stops_splitting() -> None:
    kube, planner = FakeKube(), Recorder()
    split = copy.deepcopy(SPEC)
    split["workload"]["longContextPolicy"] = "Required"
    split["workload"]["longContextThresholdTokens"] = 4096
    await run(kube, planner, split)
    assert ("deployments", "team-a", "llama-long") in kube.objects
    # someone else's same-named object must survive; ours must go
    await run(kube, planner, SPEC, generation=2)
    assert ("deployments", "team-a", "llama-long") not in kube.objects
    assert ("Normal", "PoolDeleted", "Deleted Deployment 'llama-long': the plan no longer has "
            "that pool") in kube.events
    assert ("services", "team-a", "llama-long") not in kube.objects
    assert ("deployments", "team-a", "llama-default") in kube.objects


async def test_pipeline_reports_conflicts_and_leaves_foreign_objects_alone() -> None:
    kube, planner = FakeKube(), Recorder()
    foreign = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "llama-default", "namespace": "team-a", "uid": "x",
                            "labels": {"app": "theirs"}}}
    kube.objects[("services", "team-a", "llama-default")] = foreign
    status = await run(kube, planner, SPEC)
    cond = get_condition(status, "ChildrenSynced")
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "Conflict")
    assert "Service 'llama-default'" in cond["message"]
    assert kube.objects[("services", "team-a", "llama-default")] == foreign
    assert get_condition(status, "Ready")["reason"] == "Conflict"  # type: ignore[index]


async def test_pipeline_invalid_spec_is_permanent_and_touches_nothing() -> None:
    kube, planner = FakeKube(), Recorder()
    body = body_for({"model": {"name": MODEL}, "workload": {"maxContextTokens": -1}})
    ctx = OperatorContext(kube=kube, settings=Settings(), plan_fn=planner)  # type: ignore[arg-type]
    with pytest.raises(kopf.PermanentError, match="maxContextTokens"):
        await run_with(ctx, body)
    status = run_with.last  # type: ignore[attr-defined]
    assert get_condition(status, "CapacityPlanned")["reason"] == "InvalidSpec"  # type: ignore[index]
    assert get_condition(status, "Ready")["status"] == "False"  # type: ignore[index]
    assert planner.calls == [] and not [c for c in kube.calls if c.startswith("apply")]
    # the resync timer would not retry it
    assert skip_resync({"metadata": {"generation": 1}, "status": status})


async def test_pipeline_planner_errors_and_infeasible_plans() -> None:
    def unknown(spec: Any, **_: Any) -> CapacityPlan:
        raise ModelNotFound("model 'x' is not in the kvcap catalog")

    def infeasible(spec: Any, **_: Any) -> CapacityPlan:
        return CapacityPlan(feasible=False, reason="InsufficientGpuMemory", message="too big",
                            model=MODEL)

    def crash(spec: Any, **_: Any) -> CapacityPlan:
        raise ZeroDivisionError("bug")

    for planner, reason, error in ((unknown, "ModelNotFound", None),
                                   (infeasible, "Infeasible", kopf.PermanentError),
                                   (crash, "PlannerError", kopf.PermanentError)):
        kube = FakeKube()
        if error is None:
            status = await run(kube, planner, SPEC)
        else:
            with pytest.raises(error):
                await run(kube, planner, SPEC)
            continue
        assert get_condition(status, "CapacityPlanned")["reason"] == reason  # type: ignore[index]
        assert not [c for c in kube.calls if c.startswith("apply")]


async def test_pipeline_paused_applies_nothing_but_reports() -> None:
    kube, planner = FakeKube(), Recorder()
    status = await run(kube, planner, {**SPEC, "paused": True})
    assert not [c for c in kube.calls if c.startswith("apply")]
    assert get_condition(status, "ChildrenSynced")["reason"] == "Paused"  # type: ignore[index]
    assert get_condition(status, "Progressing")["reason"] == "Paused"  # type: ignore[index]


async def test_pipeline_config_map_config_is_passed_to_the_planner() -> None:
    kube, planner = FakeKube(), Recorder()
    kube.objects[("configmaps", "team-a", "cfg")] = {"data": {"config.json": '{"model_type": "x"}'}}
    spec = copy.deepcopy(SPEC)
    spec["model"]["configMapRef"] = {"name": "cfg", "key": "config.json"}
    await run(kube, planner, spec)
    assert planner.calls[0]["config"] == {"model_type": "x"}
    spec["model"]["configMapRef"] = {"name": "missing", "key": "config.json"}
    with pytest.raises(kopf.PermanentError, match="InvalidModelConfig"):
        await run(kube, planner, spec)


async def test_pipeline_multi_node_without_lws_creates_no_deployment() -> None:
    kube = FakeKube()

    def big(spec: Any, **_: Any) -> CapacityPlan:
        return make_plan(make_pool(gpus_per_replica=16, tensor_parallel_size=16, replicas=1))

    with pytest.raises(kopf.PermanentError, match="NeedsMultiNode"):
        await run(kube, big, SPEC)
    assert not [c for c in kube.calls if c.startswith("apply")]
    kube = FakeKube(apis={("leaderworkerset.x-k8s.io", "v1", "leaderworkersets")})
    status = await run(kube, big, SPEC)
    assert "apply LeaderWorkerSet llama-default" in kube.calls
    assert get_condition(status, "CapacityPlanned")["reason"] == "PlanFits"  # type: ignore[index]


async def test_pipeline_transient_api_errors_become_temporary_errors() -> None:
    kube = FakeKube()
    kube.fail = ApiError(503, "ServiceUnavailable", "etcd is down")
    with pytest.raises(kopf.TemporaryError):
        await run(kube, Recorder(), SPEC)
    # kstatus: the first visit still leaves a status for the generation, every condition Unknown
    (initial,) = kube.status_patches
    assert initial["observedGeneration"] == 1
    assert {c["reason"] for c in initial["conditions"]} == {"Reconciling"}


def children_of(kube: FakeKube) -> dict[Any, Any]:
    return {k: v for k, v in kube.objects.items() if k[0] != "modeldeployments"}


async def test_pipeline_is_idempotent_and_skips_unchanged_children() -> None:
    kube, planner = FakeKube(), Recorder()
    ctx = OperatorContext(kube=kube, settings=Settings(), plan_fn=planner)  # type: ignore[arg-type]
    first = await run_with(ctx, body_for(SPEC))
    snapshot = copy.deepcopy(children_of(kube))
    applies = len([c for c in kube.calls if c.startswith("apply")])
    second = await run_with(ctx, body_for(SPEC, status=first))
    assert children_of(kube) == snapshot
    assert second == {}  # nothing changed: no status patch at all
    # the same process skips children whose applied-hash and generation are as it left them
    assert len([c for c in kube.calls if c.startswith("apply")]) == applies
    # someone else changed a child (its generation moved): applied again
    kube.objects[("deployments", "team-a", "llama-default")]["metadata"]["generation"] = 2
    await run_with(ctx, body_for(SPEC, status=first))
    assert kube.calls[-3:].count("apply Deployment llama-default") == 1
    # a new process (no memory of its applies) applies once
    await run(kube, planner, SPEC, status=first)
    assert len([c for c in kube.calls if c.startswith("apply")]) == applies + 1 + 3


def test_check_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Check("True", "A", "b").status = "False"  # type: ignore[misc]


async def test_resync_reads_the_object_itself_and_skips_what_it_should() -> None:
    from kvcap.controller.reconcile import reconcile_key

    kube, planner = FakeKube(), Recorder()
    ctx = OperatorContext(kube=kube, settings=Settings(), plan_fn=planner)  # type: ignore[arg-type]

    async def resync() -> None:
        await reconcile_key(ctx, "team-a", "llama", trigger="resync", logger=_logger())

    await resync()  # gone: nothing happens
    assert kube.status_patches == []
    kube.store(body_for(SPEC))
    await resync()
    assert "apply Deployment llama-default" in kube.calls
    final = kube.status_patches[-1]
    assert get_condition(final, "CapacityPlanned")["reason"] == "PlanFits"  # type: ignore[index]
    # an infeasible plan does not raise out of the resync, and its status is still written
    def infeasible(spec: Any, **_: Any) -> CapacityPlan:
        return CapacityPlan(feasible=False, reason="InsufficientGpuMemory", message="too big",
                            model=MODEL)
    ctx.plan_fn = infeasible
    # the plan is pinned to its generation: only a spec change (a new generation) re-plans
    count = len(kube.status_patches)
    await resync()
    assert len(kube.status_patches) == count  # nothing changed: nothing written
    stored = kube.objects[("modeldeployments", "team-a", "llama")]
    stored["metadata"]["generation"] = 2
    await resync()
    assert get_condition(kube.status_patches[-1], "CapacityPlanned")["reason"] == "Infeasible"  # type: ignore[index]
    # being deleted: left to garbage collection
    count = len(kube.status_patches)
    stored["metadata"]["generation"] = 3
    stored["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    await resync()
    assert len(kube.status_patches) == count


def ctx_digest(token: str = "") -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()[:16]


async def test_hub_config_for_models_outside_the_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    import kvcap.controller.reconcile as rec
    from kvcap.api.errors import HubError

    calls: list[dict[str, Any]] = []
    answers: dict[str, Any] = {"org/private": {"model_type": "llama"}}

    def fake_fetch(model_id: str, **kw: Any) -> dict[str, Any]:
        calls.append({"model": model_id, **kw})
        answer = answers[model_id]
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)

    monkeypatch.setattr(rec, "fetch_config", fake_fetch)
    kube, planner = FakeKube(), Recorder()
    kube.objects[("secrets", "team-a", "hf")] = {"data": {"token": " hf_secret\n"}}
    spec = copy.deepcopy(SPEC)
    spec["model"] = {"name": "org/private", "revision": "v1",
                     "hfTokenSecretRef": {"name": "hf", "key": "token"}}
    ctx = OperatorContext(kube=kube, settings=Settings(hf_endpoint="http://mirror"),  # type: ignore[arg-type]
                          plan_fn=planner)
    for _ in range(2):
        await run_with(ctx, body_for(spec))
    assert calls == [{"model": "org/private", "token": "hf_secret", "revision": "v1",
                      "endpoint": "http://mirror"}]  # fetched once, then cached
    assert planner.calls[-1]["config"] == {"model_type": "llama"}
    dep = kube.objects[("deployments", "team-a", "llama-default")]
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in env

    # a 404 is remembered for a while; an unreachable Hub is retried (TemporaryError)
    answers["org/missing"] = ModelNotFound("model 'org/missing' has no config.json")
    spec["model"] = {"name": "org/missing"}
    for _ in range(2):
        status = await run_with(ctx, body_for(spec))
        assert get_condition(status, "CapacityPlanned")["reason"] == "ModelNotFound"  # type: ignore[index]
    assert [c["model"] for c in calls].count("org/missing") == 1
    answers["org/down"] = HubError("could not reach the Hub")
    spec["model"] = {"name": "org/down"}
    with pytest.raises(kopf.TemporaryError):
        await run_with(ctx, body_for(spec))
    assert get_condition(run_with.last, "CapacityPlanned")["reason"] == "HubUnavailable"  # type: ignore[attr-defined]
    # an unreachable Hub is not asked again on every reconcile: backed off (1, 2, 4... min)
    with pytest.raises(kopf.TemporaryError):
        await run_with(ctx, body_for(spec))
    assert [c["model"] for c in calls].count("org/down") == 1
    assert ctx.hub_backoff.next_delay(("org/down", None, ctx_digest())) == 120.0
    # a token Secret that does not exist
    spec["model"] = {"name": "org/private", "hfTokenSecretRef": {"name": "nope", "key": "token"}}
    with pytest.raises(kopf.TemporaryError):
        await run_with(ctx, body_for(spec))
    cond = get_condition(run_with.last, "CapacityPlanned")  # type: ignore[attr-defined]
    assert cond is not None and cond["reason"] == "ModelConfigUnavailable"
    assert "Secret 'nope' key 'token'" in cond["message"]


def test_hub_reason_matches_the_hub_error() -> None:
    from kvcap.api.errors import HubError

    assert HubError.reason == kc.HUB_UNAVAILABLE


# --- races: read, decide and write under the lock, never a status older than the stored one ---------


def spec_with(tokens: int) -> dict[str, Any]:
    return {**SPEC, "workload": {**SPEC["workload"], "maxContextTokens": tokens}}


def max_model_len(kube: FakeKube) -> str:
    args = kube.objects[("deployments", "team-a", "llama-default")]["spec"]["template"]["spec"][
        "containers"][0]["args"]
    return str(args[args.index("--max-model-len") + 1])


async def test_a_stale_body_never_rolls_back_children_or_status() -> None:
    """kopf (or a resync) hands over generation 1 while generation 2 is stored: what is applied
    and reported is generation 2 (the old code applied and wrote generation 1)."""
    kube, planner = FakeKube(), Recorder()
    ctx = OperatorContext(kube=kube, settings=Settings(), plan_fn=planner)  # type: ignore[arg-type]
    await run_with(ctx, body_for(spec_with(16384), generation=2))
    assert max_model_len(kube) == "16384"
    stale = body_for(spec_with(8192), generation=1)
    await reconcile(stale, logger=_logger(), ctx=ctx, trigger="resync")
    assert max_model_len(kube) == "16384"
    stored = kube.objects[("modeldeployments", "team-a", "llama")]
    assert stored["status"]["observedGeneration"] == 2
    assert all(p["observedGeneration"] >= 2 for p in kube.status_patches[1:])


async def test_a_spec_change_during_a_reconcile_is_not_overwritten_by_the_older_status() -> None:
    """The spec moves to generation 2 while generation 1 is being applied: the status write of
    generation 1 is refused (resourceVersion precondition) and the reconcile runs again."""
    kube, planner = FakeKube(), Recorder()
    ctx = OperatorContext(kube=kube, settings=Settings(), plan_fn=planner)  # type: ignore[arg-type]
    original_apply = kube.apply
    edited = False

    async def apply_and_edit(obj: dict[str, Any]) -> dict[str, Any]:
        nonlocal edited
        result = await original_apply(obj)
        if not edited:  # the user edits the spec while we apply generation 1
            edited = True
            stored = kube.objects[("modeldeployments", "team-a", "llama")]
            stored["spec"] = spec_with(16384)
            stored["metadata"]["generation"] = 2
            kube.bump(stored)
        return result

    kube.apply = apply_and_edit  # type: ignore[method-assign]
    await run_with(ctx, body_for(spec_with(8192)))
    stored = kube.objects[("modeldeployments", "team-a", "llama")]
    assert stored["status"]["observedGeneration"] == 2
    assert max_model_len(kube) == "16384"
    landed = [p["observedGeneration"] for p in kube.status_patches]
    assert landed == sorted(landed) and landed[-1] == 2
    assert get_condition(stored["status"], "CapacityPlanned")["observedGeneration"] == 2  # type: ignore[index]


async def test_the_planner_runs_once_for_objects_with_the_same_inputs() -> None:
    kube, planner = FakeKube(), Recorder()
    ctx = OperatorContext(kube=kube, settings=Settings(), plan_fn=planner)  # type: ignore[arg-type]
    for name in ("a", "b"):
        body = body_for(SPEC)
        body["metadata"]["name"] = name
        body["metadata"]["uid"] = f"uid-{name}"
        await run_with(ctx, body)
    assert len(planner.calls) == 1
    await run_with(ctx, body_for(spec_with(16384)))  # another input: planned
    assert len(planner.calls) == 2


def test_new_settings() -> None:
    s = parse_settings({"KVCAP_WORKERS": "8", "KVCAP_LEADER_ELECTION": "Enabled",
                        "KVCAP_LEADER_ELECTION_NAMESPACE": "kvcap-system",
                        "KVCAP_LEADER_ELECTION_LEASE_SECONDS": "4",
                        "KVCAP_REQUEST_TIMEOUT_SECONDS": "10"})
    assert (s.workers, s.leader_election, s.leader_election_namespace, s.lease_seconds,
            s.request_timeout_seconds) == (8, True, "kvcap-system", 4.0, 10.0)
    assert Settings().resync_seconds == 300.0 and not Settings().leader_election
    for bad in ({"KVCAP_LEADER_ELECTION": "yes"}, {"KVCAP_WORKERS": "0"},
                {"KVCAP_LEADER_ELECTION_LEASE_SECONDS": "1"}):
        with pytest.raises(SettingsError):
            parse_settings(bad)


async def test_the_watched_body_saves_the_read_and_a_stale_one_is_caught() -> None:
    from kvcap.controller.reconcile import reconcile_key, track

    kube, planner = FakeKube(), Recorder()
    ctx = OperatorContext(kube=kube, settings=Settings(), plan_fn=planner)  # type: ignore[arg-type]
    kube.store(body_for(SPEC))
    stored = kube.objects[("modeldeployments", "team-a", "llama")]
    track(ctx, None, copy.deepcopy(stored))  # the watch delivered it
    assert list(ctx.queue._pending) == [("team-a", "llama")]
    await reconcile_key(ctx, "team-a", "llama", trigger="change", logger=_logger())
    assert "get modeldeployments llama" not in kube.calls  # read from the watch, not the API
    assert stored["status"]["observedGeneration"] == 1
    # the user edits the spec; the watch has not delivered it yet: the cached body is stale
    stored["spec"] = spec_with(16384)
    stored["metadata"]["generation"] = 2
    kube.bump(stored)
    await reconcile_key(ctx, "team-a", "llama", trigger="resync", logger=_logger())
    # nothing changed by the stale view, or the write was refused and the object read again:
    # either way nothing older than generation 2 is stored, and a change event reconciles it
    assert stored["status"]["observedGeneration"] in (1, 2)
    track(ctx, "MODIFIED", copy.deepcopy(stored))
    await reconcile_key(ctx, "team-a", "llama", trigger="change", logger=_logger())
    assert stored["status"]["observedGeneration"] == 2 and max_model_len(kube) == "16384"
    track(ctx, "DELETED", stored)  # forgotten: no lock, no state left behind
    assert ("team-a", "llama") not in ctx.tracked and ("team-a", "llama") not in ctx.locks


async def test_workers_drain_the_queue_and_retry_temporary_failures() -> None:
    import asyncio

    from kvcap.controller.reconcile import track, work

    kube, planner = FakeKube(), Recorder()
    ctx = OperatorContext(kube=kube, settings=Settings(retry_delay_seconds=0.1),  # type: ignore[arg-type]
                          plan_fn=planner)
    kube.store(body_for(SPEC))
    stored = kube.objects[("modeldeployments", "team-a", "llama")]
    kube.fail = ApiError(503, "ServiceUnavailable", "etcd is down")  # the first attempt fails
    track(ctx, None, copy.deepcopy(stored))
    worker = asyncio.create_task(work(ctx))
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if kube.fail is not None and kube.calls:
                kube.fail = None  # the API server is back: the retry (after 0.1 s) succeeds
            if stored.get("status", {}).get("observedGeneration") == 1 and ctx.queue.idle:
                break
        assert stored["status"]["observedGeneration"] == 1 and ctx.queue.idle
        track(ctx, "DELETED", stored)
        assert not ctx.tracked and not ctx.locks
    finally:
        worker.cancel()
