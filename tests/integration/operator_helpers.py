"""Helpers for the operator's integration tests: a tiny admin API client, polling, conditions,
the test CRD, and the operator as a subprocess. Fixtures live in operator_fixtures.py."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import devcluster
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "modeldeployments.kvcap.io.yaml"
OP_PREFIX = "kvop"
KWOK_TOLERATIONS = json.dumps([devcluster.KWOK_TOLERATION])
H100 = "NVIDIA-H100-80GB-HBM3"
L4 = "NVIDIA-L4"
MD_PATH = "/apis/kvcap.io/v1alpha1/namespaces/{ns}/modeldeployments"

#: Environment of every operator the tests start (in-process or subprocess).
OPERATOR_ENV = {
    "KVCAP_RESYNC_SECONDS": "2",
    "KVCAP_RETRY_DELAY_SECONDS": "1",
    "KVCAP_DISCOVERY_TTL_SECONDS": "1",
    "KVCAP_EXTRA_TOLERATIONS": KWOK_TOLERATIONS,
    "KVCAP_HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens: Hub lookups fail fast, offline
    "KVCAP_STARTUP_TIMEOUT_SECONDS": "600",
    # autoscaling: a 1 s tick and a rate() window for the test Prometheus' 1 s scrapes
    "KVCAP_AUTOSCALE_INTERVAL_SECONDS": "1",
    "KVCAP_PROMETHEUS_RATE_WINDOW": "6s",
    "KVCAP_METRICS_PORT": "Disabled",  # several operators per session: no fixed port
}


def report(what: str, seconds: float) -> None:
    """A measured duration, straight to fd 2 (KopfRunner's CliRunner swaps sys.stderr)."""
    os.write(2, f"[kvcap-operator timing] {what}: {seconds:.2f}s\n".encode())


def wait_for(
    what: str, fn: Callable[[], Any], timeout: float = 60.0, interval: float = 0.25
) -> Any:
    """Poll `fn` until it returns something truthy; fail with `what` and the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


class Api:
    """Admin access to the test cluster: JSON in, JSON out, None for 404."""

    def __init__(self, cluster: devcluster.Cluster, token: str | None = None) -> None:
        self.cluster = cluster
        self.token = token

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        return self.cluster.request(method, path, body, token=self.token, **kw)

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            return self.call("GET", path)  # type: ignore[no-any-return]
        except devcluster.ApiError as err:
            if err.status == 404:
                return None
            raise

    def items(self, path: str, selector: str | None = None) -> list[dict[str, Any]]:
        query = f"?labelSelector={selector}" if selector else ""
        return self.call("GET", path + query)["items"]  # type: ignore[no-any-return]

    def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", path, obj)  # type: ignore[no-any-return]

    def merge(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.call(  # type: ignore[no-any-return]
            "PATCH", path, patch, content_type="application/merge-patch+json"
        )

    def apply(self, path: str, obj: dict[str, Any], manager: str = "kvcap-tests") -> dict[str, Any]:
        return self.call(  # type: ignore[no-any-return]
            "PATCH",
            f"{path}?fieldManager={manager}&force=true",
            obj,
            content_type="application/apply-patch+yaml",
        )

    def delete(self, path: str) -> None:
        with contextlib.suppress(devcluster.ApiError):
            self.call("DELETE", path)

    # --- ModelDeployments ---

    def md(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.get(f"{MD_PATH.format(ns=ns)}/{name}")

    def create_md(self, ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.create(MD_PATH.format(ns=ns), model_deployment(name, spec))

    def patch_md(self, ns: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.merge(f"{MD_PATH.format(ns=ns)}/{name}", patch)

    def deployment(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")

    def pods(self, ns: str, selector: str | None = None) -> list[dict[str, Any]]:
        return self.items(f"/api/v1/namespaces/{ns}/pods", selector)


def model_deployment(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kvcap.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or ():
        if cond["type"] == type_:
            return cond  # type: ignore[no-any-return]
    return {}


def is_current(
    obj: dict[str, Any] | None, type_: str, status: str, reason: str | None = None
) -> bool:
    """Condition `type_` has `status` (and `reason`) for the object's current generation."""
    cond = condition(obj, type_)
    return bool(
        obj
        and cond.get("status") == status
        and (reason is None or cond.get("reason") == reason)
        and cond.get("observedGeneration") == obj["metadata"]["generation"]
    )


def small_spec(**workload: Any) -> dict[str, Any]:
    """Llama 3.1 8B on H100s: 2 replicas x 1 GPU on the e2e cluster's fleet."""
    return {
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
        "workload": {"maxContextTokens": 8192, "targetConcurrency": 64, **workload},
        "gpu": {"products": ["H100-80GB"]},
    }


def crd_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def apply_crd(api: Api, crd: dict[str, Any], timeout: float = 30.0) -> None:
    name = crd["metadata"]["name"]
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
    try:
        api.apply(path, crd)
    except devcluster.ApiError as err:
        pytest.fail(f"the API server rejected CRD {name} from {CRD_FILE}: {err}", pytrace=False)

    def established() -> bool:
        got = api.get(path) or {}
        return any(
            c["type"] == "Established" and c["status"] == "True"
            for c in (got.get("status") or {}).get("conditions") or ()
        )

    wait_for(f"CRD {name} Established", established, timeout)


def delete_namespace(api: Api, ns: str, timeout: float = 90.0) -> None:
    """Delete `ns` and wait until its pods are gone (they hold the fake GPUs the next test needs);
    the namespace object itself finishes terminating in the background."""
    api.delete(f"/api/v1/namespaces/{ns}")
    # A terminating namespace takes no new pods, so removing the current ones at once is final.
    api.delete(f"/api/v1/namespaces/{ns}/pods?gracePeriodSeconds=0")
    wait_for(f"the pods of namespace {ns} to go", lambda: not api.pods(ns), timeout, interval=0.5)


class OperatorProcess:
    """`python -m kvcap run` as a subprocess (so it can be SIGKILLed or run as a ServiceAccount)."""

    def __init__(
        self,
        kubeconfig: Path,
        namespaces: list[str],
        log: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces
        self.log = log
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {
            **os.environ,
            **OPERATOR_ENV,
            **self.extra_env,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": str(REPO / "operator"),
        }
        args = [sys.executable, "-m", "kvcap", "run"]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no finalizer handling — as a node failure would."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
