"""The operator's long-lived machinery: shared views of the cluster, the work queue, bounded caches.

Work per reconcile must not grow with the cluster, so nothing here is read per ModelDeployment:

* `NodeView`: one list+watch of the GPU-labelled Nodes (`nvidia.com/gpu.product` present) for the
  whole operator. Each Node is projected onto what the inventory needs (product, allocatable
  extended resources, Ready, cordoned); the inventory is computed once per change of that
  projection and shared by every reconcile. A change of the inventory requeues every object
  (`Schedulable` may change), heartbeats do not.
* `ChildView`: the owned children (Deployments, Services, PodDisruptionBudgets) and their pods, fed
  by kopf watch-streams (`handlers.py`, server-side filtered on `app.kubernetes.io/managed-by`),
  indexed by (namespace, owner label). A change requeues the owner.
* `WorkQueue`: keys (namespace, name) to reconcile, deduplicated (a key queued twice runs once; a
  key changed while it runs runs again after), with delayed retries. A fixed number of workers
  drains it, so a cold start with thousands of objects runs a bounded number of reconciles at once.
* `TtlLru`, `Backoff`: bounded caches for what users can make grow (Hub configs keyed by model
  name) and per-key retry backoff (a failing Hub is asked again after 1, 2, 4, ... minutes).
* `EventPoster`: Kubernetes Events posted off the reconcile's path (as client-go's event
  broadcaster does): a reconcile hands its transition events over once its status is written.
* `phase`, `Sample`, `LatencyWindow`, `LoopLag`: where each reconcile spends its time (queue wait
  apart from the reconcile itself, each phase, each API request, the event loop's own lag) and
  the per-minute `kvcap stats` line.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from kvcap.api import constants as kc
from kvcap.clients.kube import ApiError, Kube, RequestTiming
from kvcap.controller.conditions import Event
from kvcap.controller.decide import gpu_inventory

K = TypeVar("K")
V = TypeVar("V")
Key = tuple[str, str]  # (namespace, name)
Trigger = Literal["change", "resync"]

_logger = logging.getLogger("kvcap.runtime")

# =================================================================================================
# Bounded caches
# =================================================================================================


class TtlLru(Generic[K, V]):
    """At most `maxsize` entries, each valid for its own TTL; the least recently used goes first."""

    def __init__(self, maxsize: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.maxsize = maxsize
        self._clock = clock
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        found = self._items.get(key)
        if found is None:
            return None
        expires, value = found
        if self._clock() >= expires:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V, ttl: float) -> None:
        self._items[key] = (self._clock() + ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class Backoff:
    """Exponential backoff per key: `base`, 2x`base`, ... up to `cap` seconds; bounded in keys."""

    base: float = 60.0
    cap: float = 1800.0
    maxsize: int = 4096
    failures: TtlLru[Any, int] = field(init=False)

    def __post_init__(self) -> None:
        self.failures = TtlLru(self.maxsize)

    def next_delay(self, key: Any) -> float:
        """Record one more failure of `key`; how long to wait before trying it again."""
        count = (self.failures.get(key) or 0) + 1
        self.failures.put(key, count, ttl=self.cap * 2)
        return float(min(self.cap, self.base * 2 ** (count - 1)))

    def reset(self, key: Any) -> None:
        self.failures.pop(key)


# =================================================================================================
# The work queue
# =================================================================================================


class WorkQueue:
    """Deduplicating queue of keys with the strongest trigger per key ("change" beats "resync")."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._pending: dict[Key, Trigger] = {}  # queued, not yet taken
        self._since: dict[Key, float] = {}  # when a pending key was queued
        self._waited: dict[Key, float] = {}  # how long an active key waited in the queue
        self._active: set[Key] = set()
        self._again: dict[Key, Trigger] = {}  # changed while active
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._soon: dict[Key, asyncio.TimerHandle] = {}  # add_soon: due, not yet queued

    def add(self, key: Key, trigger: Trigger = "resync") -> None:
        if key in self._active:
            self._again[key] = _strongest(self._again.get(key), trigger)
        elif key in self._pending:
            self._pending[key] = _strongest(self._pending[key], trigger)
        else:
            self._pending[key] = trigger
            self._since[key] = self._clock()
            self._queue.put_nowait(key)

    def add_after(self, key: Key, delay: float, trigger: Trigger = "resync") -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay, self._fire, key, trigger)

    def _fire(self, key: Key, trigger: Trigger) -> None:
        self._timers.pop(key, None)
        self.add(key, trigger)

    def add_soon(self, key: Key, delay: float, trigger: Trigger = "resync") -> None:
        """Queue `key` in `delay` seconds unless it is queued or due already: a burst of changes
        (a new child's status updates, its pods starting) makes one reconcile, not one each."""
        if key in self._pending or key in self._soon:
            return
        loop = asyncio.get_running_loop()
        self._soon[key] = loop.call_later(delay, self._fire_soon, key, trigger)

    def _fire_soon(self, key: Key, trigger: Trigger) -> None:
        self._soon.pop(key, None)
        self.add(key, trigger)

    async def get(self) -> tuple[Key, Trigger]:
        while True:
            key = await self._queue.get()
            trigger = self._pending.pop(key, None)
            if trigger is not None:
                self._active.add(key)
                self._waited[key] = self._clock() - self._since.pop(key, self._clock())
                return key, trigger

    def waited(self, key: Key) -> float:
        """Seconds the key taken last by `get` waited in the queue (from its `add`)."""
        return self._waited.get(key, 0.0)

    def done(self, key: Key) -> None:
        self._active.discard(key)
        self._waited.pop(key, None)
        again = self._again.pop(key, None)
        if again is not None:
            self.add(key, again)

    def forget(self, key: Key) -> None:
        """The object is gone: drop its pending work and timers."""
        self._pending.pop(key, None)
        self._since.pop(key, None)
        self._again.pop(key, None)
        for timers in (self._timers, self._soon):
            timer = timers.pop(key, None)
            if timer is not None:
                timer.cancel()

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def idle(self) -> bool:
        return not self._pending and not self._active


def _strongest(a: Trigger | None, b: Trigger) -> Trigger:
    return "change" if "change" in (a, b) else "resync"


# =================================================================================================
# Events, off the reconcile's path
# =================================================================================================

PostFn = Callable[[Mapping[str, Any], Event], Awaitable[None]]


class EventPoster:
    """Posts the transition events reconciles hand over, `lanes` requests at a time; the events
    of one object go through one lane, in the order they were handed over. A full backlog drops
    (and logs) new events rather than hold reconciles up: Events are advisory, status is the
    record. `close()` posts what is left (bounded by a timeout) before the process stops."""

    def __init__(self, post: PostFn, *, lanes: int = 4, backlog: int = 10_000) -> None:
        self._post = post
        self._lanes: list[asyncio.Queue[tuple[Mapping[str, Any], Event]]] = [
            asyncio.Queue() for _ in range(lanes)
        ]
        self._backlog = backlog
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0

    def submit(self, key: Key, body: Mapping[str, Any], events: Sequence[Event]) -> None:
        if not events:
            return
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._drain(q)) for q in self._lanes]
        lane = self._lanes[hash(key) % len(self._lanes)]
        for event in events:
            if sum(q.qsize() for q in self._lanes) >= self._backlog:
                self.dropped += 1
                _logger.warning("Event backlog full: dropped %s %s for %s/%s", event.type,
                                event.reason, *key)
                continue
            lane.put_nowait((body, event))

    async def _drain(self, lane: asyncio.Queue[tuple[Mapping[str, Any], Event]]) -> None:
        while True:
            body, event = await lane.get()
            try:
                await self._post(body, event)
            except Exception as err:  # never let one event stop the lane
                _logger.debug("Could not post event %s: %s", event.reason, err)
            finally:
                lane.task_done()

    async def close(self, timeout: float = 10.0) -> None:
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(q.join() for q in self._lanes)), timeout=timeout
                )
        for task in self._tasks:
            await cancel(task)
        self._tasks = []


# =================================================================================================
# Where a reconcile spends its time
# =================================================================================================

_PHASES: ContextVar[dict[str, float] | None] = ContextVar("kvcap_phases", default=None)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the time spent in the block to `name` of the current reconcile's phases (if recorded)."""
    phases = _PHASES.get()
    started = time.monotonic()
    try:
        yield
    finally:
        if phases is not None:
            phases[name] = phases.get(name, 0.0) + time.monotonic() - started


@contextlib.contextmanager
def recording_phases() -> Iterator[dict[str, float]]:
    phases: dict[str, float] = {}
    token = _PHASES.set(phases)
    try:
        yield phases
    finally:
        _PHASES.reset(token)


@dataclass
class Sample:
    """One reconcile taken from the queue. `seconds` runs from the moment a worker took the key to
    the moment it was done with it (lock wait, every read, decide, every write, events, retries of
    a status conflict); `queued` is the time the key waited in the queue before, reported apart."""

    key: Key
    trigger: str
    queued: float
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)
    requests: Sequence[RequestTiming] = ()
    outcome: str = "ok"

    @property
    def wrote(self) -> bool:
        return any(r.verb != "GET" for r in self.requests)

    def describe(self) -> str:
        """'1840 ms ns/name (change): lock 0, act 1500 [PATCH deployments 900, ...], ...'"""
        phases = ", ".join(f"{k} {_ms(v)}" for k, v in self.phases.items())
        calls = ", ".join(
            f"{r.verb} {r.resource} {_ms(r.seconds)}"
            + (f" (pool {_ms(r.queued)})" if r.queued else "")
            + (f" -> {r.status}" if r.status >= 400 or r.status == 0 else "")
            for r in self.requests
        )
        return (
            f"{_ms(self.seconds)} ms {self.key[0]}/{self.key[1]} ({self.trigger}, {self.outcome}; "
            f"queued {_ms(self.queued)} ms before): {phases or '-'}; requests: {calls or 'none'}"
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


# Upper bounds (s) of the latency histogram in the stats line (cumulative over windows, a
# benchmark pools them: the share of reconciles within 1 s is exact, a pooled p99 is a bound).
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
                   1.5, 2.0, 3.0, 5.0, 10.0)


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile of sorted `values` (nearest rank); 0 for none."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(len(values) * q))]


@dataclass
class LatencyWindow:
    """The reconciles of one stats window."""

    samples: list[Sample] = field(default_factory=list)
    maxsize: int = 100_000

    def add(self, sample: Sample) -> None:
        if len(self.samples) < self.maxsize:
            self.samples.append(sample)

    def drain(self) -> list[Sample]:
        samples, self.samples = self.samples, []
        return samples


def histogram(values: Iterable[float]) -> list[int]:
    """Counts per LATENCY_BUCKETS bucket, the last one for everything above the largest bound."""
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    for value in values:
        counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
    return counts


class LoopLag:
    """How late the event loop runs a callback that should run every `period` seconds: a busy loop
    (watch events to decode, JSON, TLS) delays every await of every reconcile by as much."""

    def __init__(self, period: float = 0.1) -> None:
        self.period = period
        self.samples: list[float] = []
        self.gc_pauses: list[float] = []  # full (generation 2) collections, s
        self._gc_started = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif len(self.gc_pauses) < 10_000:
            self.gc_pauses.append(time.perf_counter() - self._gc_started)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        gc.callbacks.append(self._on_gc)
        try:
            while True:
                before = loop.time()
                await asyncio.sleep(self.period)
                if len(self.samples) < 100_000:
                    self.samples.append(max(0.0, loop.time() - before - self.period))
        finally:
            gc.callbacks.remove(self._on_gc)

    def drain(self) -> tuple[list[float], list[float]]:
        """(loop lags, full-collection pauses) since the last drain, sorted."""
        samples, self.samples = sorted(self.samples), []
        pauses, self.gc_pauses = sorted(self.gc_pauses), []
        return samples, pauses


def stats_line(samples: Sequence[Sample], every: float, sent: int, objects: int, queued: int,
               pool_waits: int, peak_in_flight: int, lag: Sequence[float] = (),
               gc_pauses: Sequence[float] = ()) -> str:
    """The per-minute `kvcap stats` line (benchmarks/operator_scale.py parses it)."""
    latencies = sorted(s.seconds for s in samples)
    waits = sorted(s.queued for s in samples)
    writing = sorted(s.seconds for s in samples if s.wrote)
    return (
        f"kvcap stats: {len(latencies)} reconciles in {every:.0f}s, "
        f"p50 {_ms(quantile(latencies, 0.5))} ms, p99 {_ms(quantile(latencies, 0.99))} ms, "
        f"{sent} API requests, {objects} objects, {queued} queued; "
        f"writing {len(writing)} p50 {_ms(quantile(writing, 0.5))} ms "
        f"p99 {_ms(quantile(writing, 0.99))} ms; "
        f"queue wait p50 {_ms(quantile(waits, 0.5))} ms p99 {_ms(quantile(waits, 0.99))} ms; "
        f"pool waits {pool_waits}, peak in flight {peak_in_flight}; "
        f"re-reads {sum(1 for s in samples if 'read' in s.phases)}; "
        f"loop lag p99 {_ms(quantile(lag, 0.99))} ms max {_ms(max(lag, default=0.0))} ms; "
        f"full gc {len(gc_pauses)} max {_ms(max(gc_pauses, default=0.0))} ms; "
        f"histogram {' '.join(map(str, histogram(latencies)))}"
    )


# =================================================================================================
# Shared views
# =================================================================================================


def node_projection(node: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a Node the inventory reads (heartbeats and images are dropped)."""
    meta, spec, status = (
        node.get("metadata") or {},
        node.get("spec") or {},
        node.get("status") or {},
    )
    ready = [c for c in status.get("conditions") or () if c.get("type") == "Ready"]
    return {
        "metadata": {
            "name": meta.get("name"),
            "labels": {kc.GPU_PRODUCT_LABEL: (meta.get("labels") or {}).get(kc.GPU_PRODUCT_LABEL)},
        },
        "spec": {"unschedulable": bool(spec.get("unschedulable"))},
        "status": {
            "allocatable": {
                k: v for k, v in (status.get("allocatable") or {}).items() if "/" in str(k)
            },
            "conditions": [{"type": "Ready", "status": c.get("status")} for c in ready],
        },
    }


class NodeView:
    """The GPU-labelled Nodes, kept current by one list+watch; the inventory computed once per
    change."""

    SELECTOR = kc.GPU_PRODUCT_LABEL  # label present

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.forbidden = False  # no RBAC to list/watch Nodes: no inventory
        self.version = 0
        self._inventories: dict[str, tuple[int, dict[str, list[int]]]] = {}

    def replace(self, nodes: Iterable[Mapping[str, Any]]) -> bool:
        projected = {n["metadata"]["name"]: node_projection(n) for n in nodes}
        changed = projected != self.nodes
        self.nodes = projected
        if changed:
            self.version += 1
        self.synced.set()
        return changed

    def update(self, event_type: str, node: Mapping[str, Any]) -> bool:
        """Apply one watch event; True when the inventory may have changed."""
        name = (node.get("metadata") or {}).get("name")
        if not name:
            return False
        if event_type == "DELETED":
            changed = self.nodes.pop(name, None) is not None
        else:
            projected = node_projection(node)
            changed = self.nodes.get(name) != projected
            self.nodes[name] = projected
        if changed:
            self.version += 1
        return changed

    def inventory(self, resource_name: str) -> dict[str, list[int]]:
        cached = self._inventories.get(resource_name)
        if cached is not None and cached[0] == self.version:
            return cached[1]
        inventory = gpu_inventory(self.nodes.values(), resource_name)
        self._inventories[resource_name] = (self.version, inventory)
        return inventory


async def reflect_nodes(
    kube: Kube, view: NodeView, on_change: Callable[[], None], *, watch_seconds: int = 300
) -> None:
    """List, then watch, the GPU-labelled Nodes forever (relist after 410 Gone or an error)."""
    delay = 1.0
    while True:
        try:
            items, version = await kube.list_with_version("v1", "nodes", None, NodeView.SELECTOR)
            if view.replace(items):
                on_change()
            delay = 1.0
            while True:
                async for event in kube.watch(
                    "v1",
                    "nodes",
                    None,
                    labels=NodeView.SELECTOR,
                    resource_version=version,
                    timeout_seconds=watch_seconds,
                ):
                    obj = event.get("object") or {}
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event.get("type") == "BOOKMARK":
                        continue
                    if view.update(str(event.get("type")), obj):
                        on_change()
        except asyncio.CancelledError:
            raise
        except ApiError as err:
            if err.status == 403:
                _logger.warning("Cannot list/watch Nodes (forbidden): no GPU inventory")
                view.forbidden = True
                view.synced.set()  # observe falls back (and reports InventoryUnavailable)
                await asyncio.sleep(300)
                continue
            if err.status != 410:
                _logger.info("Node watch ended: %s; listing again in %.0fs", err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        except Exception:
            _logger.exception("Node watch failed; listing again in %.0fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


def slim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the view keeps of a watched object: no managedFields (often the largest part); of a
    Pod only its metadata, node and status (what readiness and failure reasons are read from); of
    a Deployment not its pod template (kvcap renders that; whether anyone changed it since kvcap
    applied it shows in metadata.generation). Less to keep is less for every full garbage
    collection to scan, and those stall every reconcile in flight."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    out = {**obj, "metadata": meta}
    if obj.get("kind") == "Pod":
        out["spec"] = {"nodeName": (obj.get("spec") or {}).get("nodeName")}
    elif obj.get("kind") == "Deployment":
        out["spec"] = {k: v for k, v in (obj.get("spec") or {}).items() if k != "template"}
    return out


class ChildView:
    """Owned children and their pods, by (namespace, owner label value), fed by watch events."""

    def __init__(self) -> None:
        self.children: dict[Key, dict[tuple[str, str], Mapping[str, Any]]] = {}
        self.pods: dict[Key, dict[str, Mapping[str, Any]]] = {}

    @staticmethod
    def owner_of(obj: Mapping[str, Any]) -> Key | None:
        meta = obj.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(kc.LABEL_MODEL_DEPLOYMENT)
        namespace = meta.get("namespace")
        return (namespace, owner) if owner and namespace else None

    def update(self, event_type: str | None, obj: Mapping[str, Any]) -> Key | None:
        """Apply one watch event; the owner key whose children changed (None: not ours)."""
        key = self.owner_of(obj)
        if key is None:
            return None
        obj = slim(obj)
        meta = obj["metadata"]
        name = str(meta.get("name"))
        if obj.get("kind") == "Pod":
            pods = self.pods.setdefault(key, {})
            if event_type == "DELETED":
                pods.pop(name, None)
            else:
                pods[name] = obj
            if not pods:
                self.pods.pop(key, None)
        else:
            children = self.children.setdefault(key, {})
            ident = (str(obj.get("kind")), name)
            if event_type == "DELETED":
                children.pop(ident, None)
            else:
                children[ident] = obj
            if not children:
                self.children.pop(key, None)
        return key

    def children_of(self, key: Key) -> list[Mapping[str, Any]]:
        return list((self.children.get(key) or {}).values())

    def pods_of(self, key: Key) -> list[Mapping[str, Any]]:
        return list((self.pods.get(key) or {}).values())

    def forget(self, key: Key) -> None:
        self.children.pop(key, None)
        self.pods.pop(key, None)


async def cancel(task: asyncio.Task[Any] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
