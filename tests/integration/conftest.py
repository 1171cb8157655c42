"""Session fixtures: a real control plane (etcd + kube-apiserver [+ scheduler, controller-manager, kwok]).

Fixtures
  envtest_cluster   etcd + kube-apiserver with RBAC. If any collected test also uses `e2e_cluster`
                    (or KVCAP_K8S_TIER=e2e), this is the same e2e cluster: one control plane per session.
  e2e_cluster       + controller-manager, scheduler, kwok and fake GPU nodes:
                    2 x 8 NVIDIA-H100-80GB-HBM3 (gpu-h100-0/1) and 1 x 4 NVIDIA-L4 (gpu-l4-0).
  envtest_client / e2e_client   a `kubernetes.client.ApiClient` for the admin kubeconfig.
  k8s_namespace                  a fresh namespace for one test; deleted (without waiting) after it,
                                 which frees the fake GPUs its pods held for the next tests.
  k8s_namespace_factory          (session scope) `make("prefix")` -> a fresh namespace; deleted at
                                 session end.

Both cluster fixtures yield a `devcluster.Cluster` (`.kubeconfig`, `.server`, `.token`, `.request()`,
`.service_account_kubeconfig(ns, sa)`). Binaries come from $KVCAP_K8S_BIN or the hack/build-k8s.sh cache;
when they are missing the fixture FAILS with the hint to run hack/build-k8s.sh (never skips).

Environment
  KVCAP_K8S_BIN        bin dir with etcd, kube-apiserver, ... (default: the build-k8s.sh cache)
  KVCAP_K8S_TIER=e2e   always start the full cluster, even if only envtest tests were collected
  KVCAP_K8S_ATTACH=DIR reuse a running `hack/devcluster.py up --dir DIR` cluster (never stopped here)
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack"))

import devcluster  # noqa: E402

#: The fake GPU fleet of the e2e cluster. Tests may rely on these names and sizes.
E2E_NODES = [
    devcluster.GpuNodePool.of("H100", count=2, gpus=8),
    devcluster.GpuNodePool.of("L4", count=1, gpus=4),
]
START_TIMEOUT = float(os.environ.get("KVCAP_K8S_START_TIMEOUT", "180"))


class _Clusters:
    """At most one cluster per tier per session; e2e serves envtest users when both are wanted."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.by_tier: dict[str, devcluster.Cluster] = {}
        self.owned: list[devcluster.Cluster] = []
        self.failed: dict[str, str] = {}

    def get(self, tier: str) -> devcluster.Cluster:
        if tier in self.by_tier:
            return self.by_tier[tier]
        if tier in self.failed:  # fail every test that needs it fast, with the same message
            pytest.fail(self.failed[tier], pytrace=False)
        if os.environ.get("KVCAP_K8S_ATTACH"):
            c = devcluster.Cluster.attach(os.environ["KVCAP_K8S_ATTACH"])
            if tier == "e2e" and c.tier != "e2e":
                pytest.fail(
                    f"KVCAP_K8S_ATTACH cluster is tier {c.tier!r}; e2e tests need tier 'e2e'"
                )
        else:
            error = None
            try:
                c = devcluster.Cluster.start(
                    tier=tier,
                    nodes=E2E_NODES if tier == "e2e" else None,
                    workdir=self.factory.mktemp(f"k8s-{tier}"),  # logs survive for post-mortems
                    timeout=START_TIMEOUT,
                )
            except devcluster.ClusterError as e:
                error = str(e)
            if error is not None:  # fail (never skip) outside the except: no chained traceback
                self.failed[tier] = f"could not start the {tier} control plane: {error}"
                pytest.fail(self.failed[tier], pytrace=False)
            self.owned.append(c)
        self.by_tier[tier] = c
        return c

    def close(self) -> None:
        for c in reversed(self.owned):
            c.stop()
            print(
                f"\n[devcluster] {c.tier} timings (s): "
                + ", ".join(f"{k}={v:.2f}" for k, v in c.timings.items()),
                file=sys.stderr,
            )


@pytest.fixture(scope="session")
def _k8s_clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Clusters]:
    clusters = _Clusters(tmp_path_factory)
    yield clusters
    clusters.close()


def _session_wants_e2e(session: pytest.Session) -> bool:
    if os.environ.get("KVCAP_K8S_TIER") == "e2e":
        return True
    return any("e2e_cluster" in getattr(item, "fixturenames", ()) for item in session.items)


@pytest.fixture(scope="session")
def e2e_cluster(_k8s_clusters: _Clusters) -> devcluster.Cluster:
    return _k8s_clusters.get("e2e")


@pytest.fixture(scope="session")
def envtest_cluster(request: pytest.FixtureRequest, _k8s_clusters: _Clusters) -> devcluster.Cluster:
    if "e2e" in _k8s_clusters.by_tier or _session_wants_e2e(request.session):
        return _k8s_clusters.get("e2e")
    return _k8s_clusters.get("envtest")


def _api_client(cluster: devcluster.Cluster) -> Iterator[object]:
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def envtest_client(envtest_cluster: devcluster.Cluster) -> Iterator[object]:
    yield from _api_client(envtest_cluster)


@pytest.fixture(scope="session")
def e2e_client(e2e_cluster: devcluster.Cluster) -> Iterator[object]:
    yield from _api_client(e2e_cluster)


@pytest.fixture(scope="session")
def k8s_namespace_factory(envtest_cluster: devcluster.Cluster) -> Iterator[Callable[[str], str]]:
    """`make("gc")` -> a new namespace like `gc-1a2b3c`; all are deleted when the session ends."""
    made: list[str] = []

    def make(prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        envtest_cluster.ensure_namespace(name)
        made.append(name)
        return name

    yield make
    for name in made:
        with contextlib.suppress(devcluster.ClusterError, OSError):
            envtest_cluster.request("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture
def k8s_namespace(
    request: pytest.FixtureRequest, envtest_cluster: devcluster.Cluster
) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))[:40]
    name = f"{base.strip('-')}-{uuid.uuid4().hex[:6]}"
    envtest_cluster.ensure_namespace(name)
    yield name
    with contextlib.suppress(devcluster.ClusterError, OSError):
        envtest_cluster.request("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture(autouse=True)
def _fake_nodes_ready(request: pytest.FixtureRequest) -> None:
    """Every e2e test starts on Ready fake nodes: a test that stalled kwok (or a machine that did)
    must not leave the next one scheduling onto NotReady nodes. Costs one GET when all is well."""
    if "e2e_cluster" not in request.fixturenames:
        return
    cluster: devcluster.Cluster = request.getfixturevalue("e2e_cluster")
    cluster.wait_nodes_ready(timeout=devcluster.NodeHealth().grace_seconds)
