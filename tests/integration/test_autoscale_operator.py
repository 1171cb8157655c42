# ruff: noqa: RUF001  (the policy's messages use the multiplication sign on purpose)
"""KV-headroom autoscaling end to end: the real control plane (kwok GPU nodes), the operator, a real
Prometheus, and one vLLM metrics emulator per pod (`kvcap emulate-vllm follow`'s PodFollower).

The fake pods have no network: each emulated server listens on its own loopback port and the
fixture's file-based service discovery attaches the pod's `namespace` and `pod` labels. Objects
point `spec.autoscaling.prometheusUrl` at the test Prometheus (loopback is allowed by default);
the shared operator ticks every second (OPERATOR_ENV).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import devcluster
import pytest
from operator_helpers import L4, Api, condition, report, small_spec, wait_for

from kvcap.api import constants as kc
from kvcap.autoscale.emulator import Levels, ServerConfig
from kvcap.autoscale.policy import format_tokens
from kvcap.commands.emulate import PodFollower

pytest_plugins = ["operator_fixtures", "prometheus_fixture"]
pytestmark = [pytest.mark.integration, pytest.mark.e2e]

IDLE = Levels(kv_usage=0.02, running=1)
BUSY = Levels(kv_usage=0.6, running=20)
SATURATED = Levels(kv_usage=0.97, running=60, waiting_capacity=12, preemptions_per_second=0.5)
DELAY = 8  # scaleDownDelaySeconds
TIMEOUT = 120.0


class Fleet:
    """Emulated servers following the pods of one namespace; levels set per pool."""

    def __init__(self, api: Api, prometheus: Any, ns: str, capacity_factor: float = 1.0) -> None:
        self.api, self.ns, self.factor = api, ns, capacity_factor
        self.levels: dict[str, Levels] = {}
        self.follower = PodFollower(
            list_pods=lambda: api.pods(ns, f"{kc.LABEL_ROLE}={kc.ROLE_SERVER}"),
            on_add=prometheus.add_target,
            on_remove=prometheus.remove_target,
            config_for=self.config_for,
            levels_for=lambda key: self.levels.get(key[2]),
        )
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.follower.run, args=(self.stop_event, 0.3), daemon=True)

    def config_for(self, pod: dict[str, Any]) -> ServerConfig:
        """The pod's server reports the plan's KV capacity (x factor). A pod can appear before the
        operator has written the plan into status (it applies the Deployment first): wait for it."""
        labels = pod["metadata"]["labels"]
        deadline = time.monotonic() + 10
        while True:
            md = self.api.md(self.ns, labels[kc.LABEL_MODEL_DEPLOYMENT]) or {}
            for entry in ((md.get("status") or {}).get("plan") or {}).get("pools") or ():
                if entry["name"] == labels[kc.LABEL_POOL]:
                    tokens = int(entry["kvTokensPerReplica"] * self.factor)
                    return ServerConfig(kv_cache_size_tokens=tokens, num_gpu_blocks=tokens // 16)
            if time.monotonic() > deadline:
                return ServerConfig()
            time.sleep(0.1)

    def __enter__(self) -> Fleet:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)
        self.follower.stop()


def autoscaled(prometheus_url: str, policy: str = "KVHeadroom", **auto: Any) -> dict[str, Any]:
    spec = small_spec()
    spec["autoscaling"] = {
        "policy": policy,
        "minReplicas": 1,
        "maxReplicas": 3,
        "targetKvUtilizationPercent": 75,
        "scaleDownDelaySeconds": DELAY,
        "prometheusUrl": prometheus_url,
        **auto,
    }
    return spec


def replicas(api: Api, ns: str, name: str = "llama-default") -> int | None:
    dep = api.deployment(ns, name)
    return None if dep is None else dep["spec"].get("replicas")


def wait_replicas(api: Api, ns: str, n: int, timeout: float = TIMEOUT) -> float:
    t0 = time.monotonic()
    wait_for(f"Deployment llama-default at {n} replicas", lambda: replicas(api, ns) == n, timeout)
    return time.monotonic() - t0


def wait_condition(api: Api, ns: str, type_: str, status: str, reason: str | None = None,
                   timeout: float = TIMEOUT) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        cond = condition(api.md(ns, "llama"), type_)
        ok = cond.get("status") == status and (reason is None or cond.get("reason") == reason)
        return cond if ok else None

    return wait_for(f"{type_}={status} ({reason})", check, timeout)  # type: ignore[no-any-return]


def pool_status(api: Api, ns: str) -> dict[str, Any]:
    """The autoscaler's entry of the default pool: `status.pools[0]`."""
    md = api.md(ns, "llama") or {}
    return ((md.get("status") or {}).get("pools") or [{}])[0]  # type: ignore[no-any-return]


def plan_pool(api: Api, ns: str) -> dict[str, Any]:
    """The default pool's pinned shape: `status.plan.pools[0]`."""
    md = api.md(ns, "llama") or {}
    return ((md.get("status") or {}).get("plan") or {}).get("pools", [{}])[0]  # type: ignore[no-any-return]


def events(api: Api, ns: str, reason: str) -> list[str]:
    return [e["message"] for e in api.items(f"/api/v1/namespaces/{ns}/events") if e.get("reason") == reason]


@pytest.fixture
def fleet(kvcap_api: Api, prometheus: Any, op_namespace: str) -> Iterator[Fleet]:
    with Fleet(kvcap_api, prometheus, op_namespace) as f:
        yield f


def test_idle_saturated_idle_scales_up_holds_and_scales_down_after_the_window(
    kvcap_api: Api, prometheus: Any, op_namespace: str, fleet: Fleet
) -> None:
    api, ns = kvcap_api, op_namespace
    fleet.levels["default"] = IDLE
    api.create_md(ns, "llama", autoscaled(prometheus.url))
    wait_replicas(api, ns, 2)  # the plan's 2 replicas to start with
    metrics_ok = time.monotonic()
    wait_condition(api, ns, kc.METRICS_AVAILABLE, "True", kc.METRICS_CURRENT)
    # idle: one step down, and only after the delay window
    waited = wait_replicas(api, ns, 1)
    assert time.monotonic() - metrics_ok >= DELAY - 1, "scaled down before the window"
    report("idle: metrics current -> 2 to 1 replica", waited)

    fleet.levels["default"] = SATURATED
    t0 = time.monotonic()
    wait_replicas(api, ns, 3)
    report("saturated: KV pressure -> 3 replicas (patched)", time.monotonic() - t0)
    status = pool_status(api, ns)
    assert status["capacityWaiting"] >= 12
    assert status["preemptionRate"] > 0
    assert status["decision"]
    ups = events(api, ns, kc.EVENT_SCALED_UP)
    assert any(m.startswith("Pool 'default' 1 -> ") and ": KV demand " in m for m in ups), ups

    # hold at maxReplicas while saturated
    time.sleep(DELAY + 2)
    assert replicas(api, ns) == 3
    assert "maxReplicas" in pool_status(api, ns)["decision"]

    fleet.levels["default"] = IDLE
    t0 = time.monotonic()
    wait_replicas(api, ns, 2)
    first = time.monotonic() - t0
    wait_replicas(api, ns, 1)
    second = time.monotonic() - t0
    report("idle again: 3 -> 2 -> 1 replicas", second)
    assert first >= DELAY - 1 and second - first >= DELAY - 1, (first, second)
    downs = events(api, ns, kc.EVENT_SCALED_DOWN)
    # halfway to the need of 1 per window: 3 -> 2 (excess 2, halved), then 2 -> 1
    assert any("2 replicas (halfway down from 3)" in m for m in downs), downs
    md = api.md(ns, "llama") or {}
    assert md["status"]["replicas"] == 1


def test_prometheus_stopped_holds_replicas_and_raises_metrics_available_false(
    kvcap_api: Api, prometheus: Any, op_namespace: str, fleet: Fleet
) -> None:
    api, ns = kvcap_api, op_namespace
    fleet.levels["default"] = BUSY
    api.create_md(ns, "llama", autoscaled(prometheus.url))
    wait_condition(api, ns, kc.METRICS_AVAILABLE, "True", kc.METRICS_CURRENT)
    before = replicas(api, ns)
    assert before == 2
    prometheus.stop()
    t0 = time.monotonic()
    cond = wait_condition(api, ns, kc.METRICS_AVAILABLE, "False", kc.PROMETHEUS_UNAVAILABLE)
    report("Prometheus stopped -> MetricsAvailable=False", time.monotonic() - t0)
    assert "Prometheus" in cond["message"]
    fleet.levels["default"] = IDLE  # would scale down, if anyone could see it
    time.sleep(DELAY * 2)
    assert replicas(api, ns) == before
    assert "Prometheus unavailable" in pool_status(api, ns)["decision"]
    assert events(api, ns, kc.EVENT_METRICS_UNAVAILABLE)
    prometheus.start()
    wait_condition(api, ns, kc.METRICS_AVAILABLE, "True", kc.METRICS_CURRENT)


def test_fewer_kv_tokens_than_planned_raises_capacity_verified_false(
    kvcap_api: Api, prometheus: Any, op_namespace: str
) -> None:
    api, ns = kvcap_api, op_namespace
    with Fleet(api, prometheus, ns, capacity_factor=0.5) as fleet:
        fleet.levels["default"] = BUSY
        api.create_md(ns, "llama", autoscaled(prometheus.url))
        cond = wait_condition(api, ns, kc.CAPACITY_VERIFIED, "False", kc.PLAN_MISMATCH)
        status = wait_for("observed tokens in status", lambda: pool_status(api, ns).get("observedKvTokensPerReplica"))
        planned = plan_pool(api, ns)["kvTokensPerReplica"]
        assert pool_status(api, ns)["plannedKvTokensPerReplica"] == planned
        observed = pool_status(api, ns)["observedKvTokensPerReplica"]
        assert observed == int(planned * 0.5) and status == observed
        assert str(planned) in cond["message"] and str(observed) in cond["message"]
        # the autoscaler's arithmetic uses the reported figure
        wait_for("decision on the observed capacity",
                 lambda: f"× {format_tokens(observed)}" in pool_status(api, ns).get("decision", ""), 30)
        assert pool_status(api, ns)["kvTokensCapacity"] == observed * replicas(api, ns)  # type: ignore[operator]
        assert events(api, ns, kc.EVENT_PLAN_MISMATCH)


def test_external_leaves_a_hand_set_replica_count_alone(
    kvcap_api: Api, prometheus: Any, op_namespace: str, fleet: Fleet
) -> None:
    api, ns = kvcap_api, op_namespace
    fleet.levels["default"] = IDLE
    api.create_md(ns, "llama", autoscaled(prometheus.url, policy="External"))
    wait_for("Deployment llama-default", lambda: api.deployment(ns, "llama-default"), TIMEOUT)
    # `kubectl scale` writes the scale subresource with its own field manager
    api.call(
        "PATCH",
        f"/apis/apps/v1/namespaces/{ns}/deployments/llama-default/scale?fieldManager=kubectl-scale",
        {"spec": {"replicas": 3}},
        content_type="application/merge-patch+json",
    )
    wait_condition(api, ns, kc.METRICS_AVAILABLE, "True", kc.METRICS_CURRENT)
    md_before = api.md(ns, "llama") or {}
    time.sleep(DELAY + 4)  # many ticks and resyncs; IDLE would scale a KVHeadroom pool down
    assert replicas(api, ns) == 3
    dep = api.deployment(ns, "llama-default") or {}
    kvcap_fields = [m for m in dep["metadata"]["managedFields"] if m["manager"] == kc.FIELD_MANAGER]
    assert all("f:replicas" not in str(m.get("fieldsV1", {}).get("f:spec", {})) for m in kvcap_fields)
    status = pool_status(api, ns)
    assert plan_pool(api, ns)["replicas"] == 3 and status["currentReplicas"] == 3
    assert "fits 1 replica" in status["decision"]  # what KVHeadroom would act on, reported only
    assert (api.md(ns, "llama") or {})["metadata"]["generation"] == md_before["metadata"]["generation"]


ZERO = Levels(kv_usage=0.0, running=0)  # nothing running, nothing cached: demand is zero
FLOOD = Levels(kv_usage=0.97, running=20, waiting_capacity=200, preemptions_per_second=1.0)


def scale_by_hand(api: Api, ns: str, n: int) -> None:
    """What `kubectl scale` does: the scale subresource, with its own field manager."""
    api.call(
        "PATCH",
        f"/apis/apps/v1/namespaces/{ns}/deployments/llama-default/scale?fieldManager=kubectl-scale",
        {"spec": {"replicas": n}},
        content_type="application/merge-patch+json",
    )


def test_min_replicas_zero_scales_an_idle_pool_to_zero_and_a_hand_scale_wakes_it(
    kvcap_api: Api, prometheus: Any, op_namespace: str, fleet: Fleet
) -> None:
    api, ns = kvcap_api, op_namespace
    fleet.levels["default"] = ZERO
    api.create_md(ns, "llama", autoscaled(prometheus.url, minReplicas=0))
    wait_replicas(api, ns, 2)
    wait_replicas(api, ns, 1)
    t0 = time.monotonic()
    wait_replicas(api, ns, 0)  # one step per window, down to zero
    assert time.monotonic() - t0 >= DELAY - 1
    status = wait_decision(api, ns, "no KV or queue signal")
    assert status["desiredReplicas"] == status["currentReplicas"] == 0
    md = api.md(ns, "llama") or {}
    assert md["status"]["replicas"] == 0 and md["status"]["totalGpus"] == 0
    # scale from zero: with no server there is no signal; a hand scale wakes the pool, and kvcap
    # keeps the woken replica for the low-demand window before it steps down again
    scale_by_hand(api, ns, 1)
    time.sleep(DELAY - 2)
    assert replicas(api, ns) == 1
    wait_replicas(api, ns, 0)


def test_status_is_written_when_it_matters_not_every_tick(
    kvcap_api: Api, prometheus: Any, op_namespace: str, fleet: Fleet
) -> None:
    """A 1 s tick under a load that moves every half second but keeps 2 replicas: the figures
    are refreshed at most once a minute, so the object is (almost) not written at all."""
    api, ns = kvcap_api, op_namespace
    fleet.levels["default"] = BUSY
    api.create_md(ns, "llama", autoscaled(prometheus.url))
    wait_condition(api, ns, kc.METRICS_AVAILABLE, "True", kc.METRICS_CURRENT)
    wait_for("a decision in status.pools", lambda: pool_status(api, ns).get("decision"), 30)
    time.sleep(3)  # the first figures and the capacity check settle
    versions: list[str] = []
    seconds, i = 15.0, 0
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        fleet.levels["default"] = Levels(kv_usage=0.5 + 0.05 * (i % 3), running=16 + i % 5)
        version = (api.md(ns, "llama") or {})["metadata"]["resourceVersion"]
        if not versions or versions[-1] != version:
            versions.append(version)
        i += 1
        time.sleep(0.5)
    writes = len(versions) - 1
    report(f"status writes in {seconds:.0f} s of a moving load at a 1 s tick: {writes}", seconds)
    assert replicas(api, ns) == 2
    assert writes <= 1, f"{writes} writes of the ModelDeployment in {seconds:.0f} s"


def blocker_pod(gpus: int) -> dict[str, Any]:
    """A pod that holds `gpus` L4 GPUs: the cluster's only L4 node allocates 4."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gpu-blocker"},
        "spec": {
            "nodeSelector": {devcluster.LABEL_PRODUCT: L4},
            "tolerations": [devcluster.KWOK_TOLERATION],
            "containers": [{"name": "hold", "image": "registry.k8s.io/pause:3.10",
                            "resources": {"limits": {devcluster.GPU_RESOURCE: str(gpus)}}}],
        },
    }


def test_scale_up_stops_at_what_the_gpu_inventory_can_schedule(
    kvcap_api: Api, prometheus: Any, op_namespace: str, fleet: Fleet
) -> None:
    """Llama 3.1 8B plans as 1 x TP 2 on L4; the L4 node has 4 GPUs, 2 held by another pod. Under a
    flood the pool grows to 2 replicas (what the inventory holds), the second stays Pending, and
    kvcap adds nothing more (maxReplicas is 4) and says why; when the GPUs come free the pending
    replica runs, and the inventory still caps the pool at 2."""
    api, ns = kvcap_api, op_namespace
    pods = f"/api/v1/namespaces/{ns}/pods"
    api.create(pods, blocker_pod(2))
    wait_for("the blocker on the L4 node",
             lambda: ((api.get(f"{pods}/gpu-blocker") or {}).get("spec") or {}).get("nodeName"), 60)
    fleet.levels["default"] = FLOOD
    spec = autoscaled(prometheus.url, maxReplicas=4)
    spec["gpu"] = {"products": ["L4"]}
    spec["workload"]["targetConcurrency"] = 8
    api.create_md(ns, "llama", spec)
    assert plan_pool_wait(api, ns)["gpusPerReplica"] == 2
    wait_replicas(api, ns, 2)
    status = wait_decision(api, ns, "cannot be scheduled")
    assert "1 replica cannot be scheduled" in status["decision"], status["decision"]
    time.sleep(5)
    assert replicas(api, ns) == 2, "scaled up past what the nodes can schedule"
    api.call("DELETE", f"{pods}/gpu-blocker?gracePeriodSeconds=0")
    status = wait_decision(api, ns, "node inventory")  # both replicas Ready, the cap stays
    assert "4 x NVIDIA-L4 allocatable on Ready nodes) holds 2 replicas" in status["decision"]
    assert replicas(api, ns) == 2


def wait_decision(api: Api, ns: str, fragment: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status = pool_status(api, ns)
        return status if fragment in status.get("decision", "") else None

    return wait_for(f"a decision with '{fragment}'", check, TIMEOUT)  # type: ignore[no-any-return]


def plan_pool_wait(api: Api, ns: str) -> dict[str, Any]:
    return wait_for("a plan", lambda: plan_pool(api, ns).get("gpusPerReplica") and plan_pool(api, ns), 60)  # type: ignore[no-any-return]
