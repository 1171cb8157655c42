"""A real Prometheus server on loopback scraping vLLM metrics emulators (load with `pytest_plugins`).

The fake GPU nodes' pods have no network, so each emulated vLLM server listens on its own loopback
port and Prometheus finds it through file-based service discovery: the fixture writes one target
group per pod with the `namespace` and `pod` labels, exactly what a PodMonitor or a
`kubernetes_sd_configs` relabeling would attach in a cluster.

Fixtures
  prometheus        a running `PrometheusServer` (session scope; restarted if a test stopped it,
                    targets cleared before each test).
  emulators         `make(namespace, pod, **ServerConfig fields)` -> a started `EmulatedServer`
                    registered as a target; all stopped and unregistered after the test.

The binary is /usr/bin/prometheus (Debian's `prometheus` package, 2.42; `.ci/run` installs it) or
$KVCAP_PROMETHEUS_BIN. A missing binary FAILS with the install hint (never skips).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvcap.autoscale.emulator import EmulatedServer, Levels, Scenario, ServerConfig

SCRAPE_INTERVAL = "1s"

CONFIG = """\
global:
  scrape_interval: {interval}
  evaluation_interval: {interval}
scrape_configs:
  - job_name: vllm
    metrics_path: /metrics
    file_sd_configs:
      - files: [{targets}]
        refresh_interval: 1s
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_binary() -> str:
    path = os.environ.get("KVCAP_PROMETHEUS_BIN") or shutil.which("prometheus") or "/usr/bin/prometheus"
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"Prometheus not found at '{path}': install it with `apt-get install -y prometheus` "
            "(the tests start their own server; do not run the Debian service) or set "
            "KVCAP_PROMETHEUS_BIN",
            pytrace=False,
        )
    return path


class PrometheusServer:
    """`prometheus` on 127.0.0.1:<port> with a file_sd target file the test controls."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.targets_file = workdir / "targets.json"
        self.config_file = workdir / "prometheus.yml"
        self.log_file = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.targets: dict[tuple[str, str], int] = {}  # (namespace, pod) -> port
        self.write_targets()
        self.config_file.write_text(
            CONFIG.format(interval=SCRAPE_INTERVAL, targets=json.dumps(str(self.targets_file)))
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        if self.running:
            return self
        with self.log_file.open("ab") as log:  # the child keeps its own descriptor
            self.proc = self._popen(log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"Prometheus exited with {self.proc.returncode}; log: "
                    f"{self.log_file.read_text()[-2000:]}",
                    pytrace=False,
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"Prometheus did not become ready in {timeout:.0f}s", pytrace=False)

    def _popen(self, log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    # --- targets ---

    def write_targets(self) -> None:
        groups = [
            {"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": ns, "pod": pod}}
            for (ns, pod), port in sorted(self.targets.items())
        ]
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.targets_file)  # atomic: file_sd never reads half a file

    def add_target(self, namespace: str, pod: str, port: int) -> None:
        self.targets[(namespace, pod)] = port
        self.write_targets()

    def remove_target(self, namespace: str, pod: str) -> None:
        self.targets.pop((namespace, pod), None)
        self.write_targets()

    def clear_targets(self) -> None:
        self.targets.clear()
        self.write_targets()

    # --- queries ---

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(
        self, promql: str, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """Poll `promql` until `predicate(result)`; the first scrape lands seconds after start."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if predicate(result):
                return result
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting on {promql!r}: {result}")

    def wait_scraped(self, namespace: str, pod: str, timeout: float = 30.0) -> None:
        self.wait_for(
            f'up{{namespace="{namespace}",pod="{pod}"}} == 1', lambda r: len(r) == 1, timeout
        )


@pytest.fixture(scope="session")
def _prometheus_session() -> Iterator[PrometheusServer]:
    workdir = Path(tempfile.mkdtemp(prefix="kvcap-prom-"))
    server = PrometheusServer(workdir).start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def prometheus(_prometheus_session: PrometheusServer) -> Iterator[PrometheusServer]:
    server = _prometheus_session
    server.clear_targets()
    server.start()  # a previous test may have stopped it
    yield server
    server.clear_targets()
    server.start()


@pytest.fixture
def emulators(prometheus: PrometheusServer) -> Iterator[Callable[..., EmulatedServer]]:
    started: list[tuple[str, str, EmulatedServer]] = []

    def make(
        namespace: str,
        pod: str,
        levels: Levels | None = None,
        scenario: Scenario | None = None,
        **config: Any,
    ) -> EmulatedServer:
        if scenario is None:
            scenario = Scenario.constant(levels or Levels())
        server = EmulatedServer(ServerConfig(**config), scenario).start()
        prometheus.add_target(namespace, pod, server.port)
        started.append((namespace, pod, server))
        return server

    yield make
    for namespace, pod, server in started:
        prometheus.remove_target(namespace, pod)
        server.stop()
