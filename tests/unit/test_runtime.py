"""kvcap.controller.runtime (bounded caches, the work queue, the shared views) and the Lease elector
(kvcap.controller.leader) against an in-memory Lease store."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from kvcap.api import constants as kc
from kvcap.clients.kube import ApiError
from kvcap.controller.leader import LeaseElector
from kvcap.controller.runtime import Backoff, ChildView, NodeView, TtlLru, WorkQueue

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
                                              "labels": labels}}
    pod = {"kind": "Pod", "metadata": {"name": "llama-default-x", "namespace": "ns",
                                       "labels": labels, "managedFields": [{"big": "x" * 1000}]},
           "spec": {"nodeName": "gpu-0", "containers": [{"name": "vllm"}]},
           "status": {"phase": "Running"}}
    assert view.update(None, dep) == ("ns", "llama")
    assert view.update("ADDED", pod) == ("ns", "llama")
    assert view.update("ADDED", {"kind": "Pod", "metadata": {"name": "x", "namespace": "ns"}}) is None
    assert view.children_of(("ns", "llama")) == [dep]
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
