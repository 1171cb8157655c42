"""kvcap.controller.runtime (bounded caches, the work queue, the shared views) and the Lease elector
(kvcap.controller.leader) against an in-memory Lease store."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import pytest

from kvcap.api import constants as kc
from kvcap.clients.kube import ApiError, RequestTiming, resource_of
from kvcap.controller.conditions import Event
from kvcap.controller.leader import LeaseElector
from kvcap.controller.runtime import (
    LATENCY_BUCKETS,
    Backoff,
    ChildView,
    EventPoster,
    NodeView,
    Sample,
    TtlLru,
    WorkQueue,
    histogram,
    stats_line,
)

H100 = "NVIDIA-H100-80GB-HBM3"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ttl_lru_is_bounded_and_expires() -> None:
    clock = Clock()
    cache: TtlLru[str, int] = TtlLru(2, clock)
    cache.put("a", 1, ttl=10)
    cache.put("b", 2, ttl=10)
    assert cache.get("a") == 1  # "a" is now the most recently used
    cache.put("c", 3, ttl=10)  # evicts "b", the least recently used
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert len(cache) == 2
    clock.now = 10.0
    assert cache.get("a") is None and len(cache) == 1  # expired entries go on read


@pytest.mark.parametrize(("failures", "delay"), [(1, 60.0), (2, 120.0), (3, 240.0), (10, 1800.0)])
def test_backoff_doubles_up_to_the_cap(failures: int, delay: float) -> None:
    backoff = Backoff(base=60.0, cap=1800.0)
    delays = [backoff.next_delay("k") for _ in range(failures)]
    assert delays[-1] == delay
    backoff.reset("k")
    assert backoff.next_delay("k") == 60.0


async def test_work_queue_dedups_and_reruns_keys_changed_while_active() -> None:
    queue = WorkQueue()
    queue.add(("ns", "a"))
    queue.add(("ns", "a"), "change")  # queued twice: runs once, with the stronger trigger
    queue.add(("ns", "b"))
    assert len(queue) == 2
    key, trigger = await queue.get()
    assert (key, trigger) == (("ns", "a"), "change")
    queue.add(("ns", "a"))  # changed while it runs: runs again after
    assert len(queue) == 1
    queue.done(("ns", "a"))
    assert len(queue) == 2
    assert (await queue.get())[0] == ("ns", "b")
    queue.done(("ns", "b"))
    assert (await queue.get())[0] == ("ns", "a")
    queue.done(("ns", "a"))
    assert queue.idle
    queue.add_after(("ns", "c"), 0.01)
    queue.forget(("ns", "c"))  # deleted before the retry: never runs
    await asyncio.sleep(0.03)
    assert queue.idle


def gpu_node(name: str, *, ready: bool = True, cordoned: bool = False, heartbeat: str = "t0",
             gpus: str = "8") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {kc.GPU_PRODUCT_LABEL: H100, "other": "x"}},
        "spec": {"unschedulable": True} if cordoned else {},
        "status": {
            "allocatable": {"cpu": "32", "nvidia.com/gpu": gpus},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                            "lastHeartbeatTime": heartbeat}],
            "images": [{"names": ["big"], "sizeBytes": 1}],
        },
    }


def test_node_view_recomputes_the_inventory_only_when_it_can_change() -> None:
    view = NodeView()
    assert view.replace([gpu_node("a"), gpu_node("b")])
    assert view.inventory("nvidia.com/gpu") == {H100: [8, 8]}
    version = view.version
    assert not view.update("MODIFIED", gpu_node("a", heartbeat="t1"))  # a heartbeat: no change
    assert view.version == version
    assert view.update("MODIFIED", gpu_node("a", cordoned=True))
    assert view.inventory("nvidia.com/gpu") == {H100: [8]}
    assert view.update("DELETED", gpu_node("b"))
    assert view.inventory("nvidia.com/gpu") == {}
    assert view.synced.is_set()


def test_child_view_indexes_children_and_pods_by_owner_label() -> None:
    view = ChildView()
    labels = {kc.LABEL_MODEL_DEPLOYMENT: "llama"}
    dep = {"kind": "Deployment", "metadata": {"name": "llama-default", "namespace": "ns",
                                              "labels": labels},
           "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "vllm"}]}}}}
    pod = {"kind": "Pod", "metadata": {"name": "llama-default-x", "namespace": "ns",
                                       "labels": labels, "managedFields": [{"big": "x" * 1000}]},
           "spec": {"nodeName": "gpu-0", "containers": [{"name": "vllm"}]},
           "status": {"phase": "Running"}}
    assert view.update(None, dep) == ("ns", "llama")
    assert view.update("ADDED", pod) == ("ns", "llama")
    assert view.update("ADDED", {"kind": "Pod", "metadata": {"name": "x", "namespace": "ns"}}) is None
    # a Deployment without its pod template (kvcap renders it; edits show in its generation)
    assert view.children_of(("ns", "llama")) == [{**dep, "spec": {"replicas": 2}}]
    (kept,) = view.pods_of(("ns", "llama"))  # slimmed: no managedFields, of the spec the node
    assert kept == {"kind": "Pod", "metadata": {"name": "llama-default-x", "namespace": "ns",
                                                "labels": labels},
                    "spec": {"nodeName": "gpu-0"}, "status": {"phase": "Running"}}
    view.update("DELETED", dep)
    assert view.children_of(("ns", "llama")) == []
    view.forget(("ns", "llama"))
    assert view.pods_of(("ns", "llama")) == []


# --- the Lease elector -------------------------------------------------------------------------------


class LeaseStore:
    """Just the Lease calls of kvcap.clients.kube.Kube, with resourceVersion preconditions."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ApiError(0, "ConnectionFailed", "the API server is unreachable")

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(self.lease)

    async def create_lease(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        self._check()
        if self.lease is not None:
            raise ApiError(409, "AlreadyExists", name)
        self.version += 1
        self.lease = {"metadata": {"name": name, "namespace": namespace,
                                   "resourceVersion": str(self.version)}, "spec": dict(spec)}
        return copy.deepcopy(self.lease)

    async def patch_lease(self, lease: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        self._check()
        assert self.lease is not None
        if lease["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "modified")
        self.version += 1
        merged = {**self.lease["spec"], **spec}
        self.lease = {**self.lease, "spec": {k: v for k, v in merged.items() if v is not None},
                      "metadata": {**self.lease["metadata"], "resourceVersion": str(self.version)}}
        return copy.deepcopy(self.lease)


def elector(store: LeaseStore, identity: str, clock: Clock) -> LeaseElector:
    return LeaseElector(store, "kvcap-system", "kvcap-operator", identity,  # type: ignore[arg-type]
                        lease_seconds=15, renew_deadline=10, retry=2, clock=clock)


async def test_one_leader_and_a_standby_that_takes_over_after_expiry() -> None:
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()  # held, not expired
    clock.now = 10.0
    assert await a.try_acquire_or_renew()  # the leader renews
    clock.now = 20.0
    assert not await b.try_acquire_or_renew()  # renewed at 10 (as b saw it change): not expired
    clock.now = 36.0  # a stopped renewing (crashed) 26 s ago, b saw the last change at 20
    assert await b.try_acquire_or_renew()
    assert store.lease is not None and store.lease["spec"]["holderIdentity"] == "b"
    assert store.lease["spec"]["leaseTransitions"] == 1
    assert not await a.try_acquire_or_renew()  # the old leader cannot come back while b renews


async def test_release_lets_the_standby_in_at_once() -> None:
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    await a.acquire()
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert store.lease is not None and "holderIdentity" not in store.lease["spec"]
    assert await b.try_acquire_or_renew()


async def test_a_leader_that_cannot_renew_steps_down_before_the_lease_expires() -> None:
    store = LeaseStore()
    a = LeaseElector(store, "ns", "l", "a", lease_seconds=3, renew_deadline=0.2,  # type: ignore[arg-type]
                     retry=0.05)
    await a.acquire()
    lost: list[bool] = []
    store.down = True
    await asyncio.wait_for(a.hold(on_lost=lambda: lost.append(True)), timeout=2)
    assert lost == [True] and a.lost and not a.leader


# =================================================================================================
# Where a reconcile spends its time, and what it sends (issue 10: the scale benchmark's p99)
# =================================================================================================


async def test_work_queue_reports_how_long_a_key_waited() -> None:
    clock = Clock()
    queue = WorkQueue(clock)
    queue.add(("ns", "a"))
    clock.now = 2.5
    queue.add(("ns", "a"))  # already queued: the wait runs from the first add
    key, _ = await queue.get()
    clock.now = 9.0  # the reconcile itself does not count as queue wait
    assert queue.waited(key) == 2.5
    queue.done(key)
    assert queue.waited(key) == 0.0


async def test_add_soon_makes_one_reconcile_of_a_burst() -> None:
    queue = WorkQueue()
    for _ in range(5):  # a pod's status updates in a row
        queue.add_soon(("ns", "a"), 0.01)
    assert len(queue) == 0  # not yet
    await asyncio.sleep(0.05)
    assert len(queue) == 1
    queue.add_soon(("ns", "a"), 0.01)  # queued already: nothing more
    await asyncio.sleep(0.05)
    assert len(queue) == 1
    queue.add_soon(("ns", "b"), 0.01)
    queue.forget(("ns", "b"))  # deleted meanwhile: never queued
    await asyncio.sleep(0.05)
    assert len(queue) == 1


@pytest.mark.parametrize(
    ("path", "resource"),
    [
        ("/apis/kvcap.io/v1alpha1/namespaces/ns/modeldeployments/x/status",
         "modeldeployments/status"),
        ("/apis/apps/v1/namespaces/ns/deployments/x", "deployments"),
        ("/api/v1/namespaces/ns/events", "events"),
        ("/api/v1/nodes", "nodes"),
        ("/apis/leaderworkerset.x-k8s.io/v1", "discovery"),
    ],
)
def test_resource_of_names_what_a_request_is_about(path: str, resource: str) -> None:
    assert resource_of(path) == resource


@pytest.mark.parametrize(
    ("values", "counts_within_1s", "above_10s"),
    [([], 0, 0), ([0.01, 0.3, 0.99, 1.0], 4, 0), ([1.01, 2.0, 11.0], 0, 1)],
)
def test_histogram_buckets(values: list[float], counts_within_1s: int, above_10s: int) -> None:
    counts = histogram(values)
    assert len(counts) == len(LATENCY_BUCKETS) + 1 and sum(counts) == len(values)
    within = sum(c for c, b in zip(counts, LATENCY_BUCKETS, strict=False) if b <= 1.0)
    assert within == counts_within_1s and counts[-1] == above_10s


def timing(verb: str, resource: str, seconds: float, status: int = 200) -> RequestTiming:
    return RequestTiming(verb, resource, seconds, 0.0, status)


def test_stats_line_separates_queue_wait_and_writing_reconciles() -> None:
    samples = [
        Sample(("ns", f"md-{i}"), "resync", queued=5.0, seconds=0.002) for i in range(98)
    ] + [
        Sample(("ns", "new-1"), "change", queued=30.0, seconds=0.8,
               phases={"act": 0.6, "status": 0.2},
               requests=(timing("GET", "services", 0.1, 404), timing("PATCH", "services", 0.5),
                         timing("PATCH", "modeldeployments/status", 0.2))),
        Sample(("ns", "new-2"), "change", queued=31.0, seconds=1.2,
               requests=(timing("PATCH", "deployments", 1.1),)),
    ]
    line = stats_line(samples, 60, sent=4, objects=100, queued=0, pool_waits=0,
                      peak_in_flight=3, lag=[0.001, 0.002])
    assert line.startswith("kvcap stats: 100 reconciles in 60s, p50 2 ms, p99 1200 ms, ")
    assert "writing 2 p50 1200 ms p99 1200 ms;" in line
    assert "queue wait p50 5000 ms p99 31000 ms;" in line
    assert line.endswith("histogram 98 0 0 0 0 0 0 0 0 1 0 0 1 0 0 0 0 0")  # 0.8, 1.2 s
    text = samples[98].describe()
    assert text.startswith("800 ms ns/new-1 (change, ok; queued 30000 ms before): act 600,")
    assert "GET services 100 -> 404, PATCH services 500" in text


async def test_event_poster_keeps_each_objects_order_and_flushes_on_close() -> None:
    posted: list[tuple[str, str]] = []
    started = asyncio.Event()

    async def post(body: Any, event: Event) -> None:
        started.set()
        await asyncio.sleep(0)
        if event.reason == "Boom":
            raise ApiError(503, "ServiceUnavailable", "busy")
        posted.append((body["metadata"]["name"], event.reason))

    poster = EventPoster(post, lanes=2)
    for name in ("a", "b"):
        poster.submit(("ns", name), {"metadata": {"name": name}},
                      [Event("Normal", "PlanChanged", "x"), Event("Warning", "Boom", "y"),
                       Event("Normal", "Ready", "z")])
    await poster.close()
    assert started.is_set()
    for name in ("a", "b"):  # in order, and a failed post does not stop the others
        assert [r for n, r in posted if n == name] == ["PlanChanged", "Ready"]


class GatedKube:
    """Children's requests wait until all three are in flight: only concurrent applies finish."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.all_in = asyncio.Event()
        self.calls: list[str] = []

    async def _gate(self, call: str) -> None:
        self.calls.append(call)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.in_flight == 3:
            self.all_in.set()
        await asyncio.wait_for(self.all_in.wait(), timeout=30)
        self.in_flight -= 1

    async def get(self, *args: Any) -> None:
        await self._gate(f"get {args[1]}")
        return None

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        await self._gate(f"apply {obj['kind']}")
        return {**obj, "metadata": {**obj["metadata"], "resourceVersion": "1", "uid": obj["kind"]}}


async def test_a_new_objects_children_are_looked_up_and_applied_at_once() -> None:
    from operator_factories import OWNER, make_plan, make_pool, make_spec

    from kvcap.controller.reconcile import sync_children
    from kvcap.controller.render import RenderOptions, render_children

    desired = render_children(OWNER, make_spec(), make_plan(make_pool()), RenderOptions())
    assert len(desired) == 3
    kube = GatedKube()
    result = await sync_children(kube, OWNER, desired, [], logging.getLogger("test"))  # type: ignore[arg-type]
    assert kube.peak == 3  # three lookups in flight together, then three applies
    assert sorted(kube.calls[:3]) == ["get deployments", "get poddisruptionbudgets",
                                      "get services"]
    assert result.check.reason == kc.APPLIED
    assert [o["kind"] for o in result.objects] == [o["kind"] for o in desired]  # desired order


async def test_discovery_sends_one_request_however_many_ask_at_once() -> None:
    from kubernetes import client as k8s_client

    from kvcap.clients.kube import Kube

    cfg = k8s_client.Configuration()
    cfg.host = "https://127.0.0.1:1"
    kube = Kube(cfg, discovery_ttl=60.0)
    sent: list[str] = []
    release = asyncio.Event()

    async def request(method: str, path: str, **_: Any) -> dict[str, Any]:
        sent.append(path)
        await release.wait()
        return {"resources": [{"name": "leaderworkersets"}, {"name": "leaderworkersets/status"}]}

    kube._request = request  # type: ignore[method-assign]
    asks = [asyncio.create_task(kube.has_resource("leaderworkerset.x-k8s.io", "v1",
                                                  "leaderworkersets")) for _ in range(4)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*asks) == [True] * 4
    assert sent == ["/apis/leaderworkerset.x-k8s.io/v1"]
    assert await kube.has_resource("leaderworkerset.x-k8s.io", "v1", "leaderworkersets")
    assert len(sent) == 1  # cached


async def test_objects_with_the_same_inputs_are_planned_once_even_at_once() -> None:
    import threading

    from kvcap.api.models import ModelDeploymentSpec
    from kvcap.controller.reconcile import OperatorContext
    from kvcap.controller.settings import Settings

    calls: list[int] = []
    gate = threading.Event()

    def plan_fn(spec: Any, *, config: Any = None, cluster_gpus: Any = None) -> Any:
        calls.append(1)
        gate.wait(30)
        return "the plan"

    ctx = OperatorContext(kube=None, settings=Settings(), plan_fn=plan_fn)  # type: ignore[arg-type]
    plan = ctx.cached_planner()
    spec = ModelDeploymentSpec.model_validate(
        {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
         "workload": {"maxContextTokens": 8192, "targetConcurrency": 16}})
    runs = [asyncio.create_task(asyncio.to_thread(plan, spec)) for _ in range(3)]
    for _ in range(200):  # until one thread plans (the others wait for it)
        if calls:
            break
        await asyncio.sleep(0.01)
    gate.set()
    assert await asyncio.gather(*runs) == ["the plan"] * 3
    assert calls == [1]


def test_a_tracked_object_is_kept_without_managed_fields_and_never_older() -> None:
    from kvcap.controller.reconcile import Tracked

    tracked = Tracked("uid-1", ("uid-1", 2, None))
    new = {"metadata": {"name": "a", "generation": 2, "resourceVersion": "9",
                        "managedFields": [{"manager": "kvcap"}]}, "spec": {}}
    tracked.remember(new)
    assert tracked.body == {"metadata": {"name": "a", "generation": 2, "resourceVersion": "9"},
                            "spec": {}}
    assert "managedFields" in new["metadata"]  # the caller's object is left as it was
    tracked.remember({"metadata": {"name": "a", "generation": 1, "resourceVersion": "3"}})
    assert tracked.body is not None and tracked.body["metadata"]["resourceVersion"] == "9"


def test_the_scale_benchmark_reads_the_stats_line_the_operator_writes() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "operator_scale.py"
    spec = importlib.util.spec_from_file_location("operator_scale_under_test", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    samples = [Sample(("ns", f"md-{i}"), "resync", queued=0.5, seconds=0.01) for i in range(97)]
    samples += [Sample(("ns", "slow"), "change", queued=9.0, seconds=s,
                       requests=(timing("PATCH", "services", s),)) for s in (0.9, 1.2, 2.5)]
    line = stats_line(samples, 60, sent=7, objects=100, queued=3, pool_waits=1,
                      peak_in_flight=12, lag=[0.02, 0.05], gc_pauses=[0.3])
    match = bench.STATS.search(f"[2026-01-01 00:00:00,000] kvcap.reconcile [INFO] {line}")
    assert match is not None
    stats = bench.Stats(match)
    assert (stats.n, stats.p99, stats.requests, stats.writing) == (100, 2500, 7, 3)
    assert (stats.wait_p99, stats.pool_waits, stats.peak_in_flight) == (9000, 1, 12)
    assert (stats.lag_max, stats.gcs, stats.gc_max) == (50, 1, 300)
    total, within, bucket = bench.pooled([stats, stats])
    assert (total, within, bucket) == (200, 0.98, "1000 ms-1500 ms")  # the 198th of 200: 1.2 s
