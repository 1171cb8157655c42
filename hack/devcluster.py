#!/usr/bin/env python3
"""A real Kubernetes control plane on loopback, for integration tests and the sandbox.

No mocks: etcd, kube-apiserver and (tier "e2e") kube-controller-manager, kube-scheduler and kwok
with fake GPU nodes, all built from Go modules by ``hack/build-k8s.sh``. Pure stdlib + pyyaml.

Tiers:
  envtest  etcd + kube-apiserver (RBAC on). CRDs, CEL, SSA, RBAC, admission; no controllers.
  e2e      envtest + controller-manager + scheduler + kwok and fake GPU Nodes. Deployments roll out,
           the scheduler places pods by ``nvidia.com/gpu``, kwok marks them Ready, the garbage
           collector deletes children.

Python::

    from devcluster import Cluster, GpuNodePool
    c = Cluster.start(tier="e2e", nodes="H100:2,L4:1x4", workdir=None)  # or [GpuNodePool]
    c.kubeconfig, c.server, c.token, c.ca_file
    sa_kubeconfig = c.service_account_kubeconfig("kvcap-system", "kvcap")  # token via TokenRequest
    c.request("GET", "/api/v1/nodes")                 # admin JSON call; raises ApiError
    c.write_kubeconfig("kc", insecure=True)           # insecure-skip-tls-verify variant
    c.stop()

CLI::

    python hack/devcluster.py up   --dir .sandbox --tier e2e --nodes H100:2,L4:1x4
    python hack/devcluster.py status --dir .sandbox
    python hack/devcluster.py sa-kubeconfig --dir .sandbox -n kvcap-system --name kvcap -o sa.kc
    python hack/devcluster.py down --dir .sandbox

Binaries come from ``--bin-dir``, else ``$KVCAP_K8S_BIN``, else
``${KVCAP_K8S_CACHE:-~/.cache/kvcap/k8s}/<version>/bin`` (version: build-k8s.sh default).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("kvcap.devcluster")

HACK_DIR = Path(__file__).resolve().parent
BUILD_SCRIPT = HACK_DIR / "build-k8s.sh"
BUILD_HINT = (
    f"run `{BUILD_SCRIPT}` (or `hack/build-k8s.sh` from the repo root), or set KVCAP_K8S_BIN"
)

ENVTEST_BINARIES = ("etcd", "kube-apiserver")
E2E_BINARIES = (*ENVTEST_BINARIES, "kube-controller-manager", "kube-scheduler", "kwok")
TIERS = ("envtest", "e2e")
STATE_FILE = "devcluster.json"

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_TAINT = {"key": KWOK_ANNOTATION, "value": "fake", "effect": "NoSchedule"}
#: What a pod needs to land on a fake node (besides requests/nodeSelector).
KWOK_TOLERATION = {"key": KWOK_ANNOTATION, "operator": "Exists", "effect": "NoSchedule"}
GPU_RESOURCE = "nvidia.com/gpu"
LABEL_PRODUCT = "nvidia.com/gpu.product"
LABEL_COUNT = "nvidia.com/gpu.count"
LABEL_MEMORY = "nvidia.com/gpu.memory"


class ClusterError(RuntimeError):
    """The control plane could not be started, reached or stopped."""


class MissingBinaryError(ClusterError):
    """A control-plane binary is not built yet."""


class ApiError(ClusterError):
    """The apiserver answered with an unexpected HTTP status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:2000]}")
        self.status = status
        self.body = body


# --------------------------------------------------------------------------- binaries


def default_k8s_version() -> str:
    """The release hack/build-k8s.sh builds by default (one source of truth) unless overridden."""
    if os.environ.get("KVCAP_K8S_VERSION"):
        return os.environ["KVCAP_K8S_VERSION"]
    m = re.search(r"KVCAP_K8S_VERSION:-(v[0-9.]+)\}", BUILD_SCRIPT.read_text())
    if not m:
        raise ClusterError(f"cannot find the default K8S_VERSION in {BUILD_SCRIPT}")
    return m.group(1)


def default_bin_dir() -> Path:
    if os.environ.get("KVCAP_K8S_BIN"):
        return Path(os.environ["KVCAP_K8S_BIN"]).expanduser()
    root = Path(os.environ.get("KVCAP_K8S_CACHE") or Path.home() / ".cache/kvcap/k8s").expanduser()
    return root / default_k8s_version() / "bin"


def check_binaries(bin_dir: Path, tier: str) -> None:
    """Raise MissingBinaryError (with the build hint) unless every binary of `tier` is present."""
    names = E2E_BINARIES if tier == "e2e" else ENVTEST_BINARIES
    missing = [n for n in names if not os.access(bin_dir / n, os.X_OK)]
    if missing:
        raise MissingBinaryError(
            f"missing Kubernetes binaries {', '.join(missing)} in {bin_dir}: {BUILD_HINT}"
        )
    if tier == "e2e" and stages_file(bin_dir) is None:
        raise MissingBinaryError(f"missing kwok stages.yaml next to {bin_dir}: {BUILD_HINT}")


def stages_file(bin_dir: Path) -> Path | None:
    for p in (bin_dir.parent / "stages.yaml", bin_dir / "stages.yaml"):
        if p.is_file():
            return p
    return None


# --------------------------------------------------------------------------- fake GPU nodes


@dataclasses.dataclass(frozen=True)
class GpuModel:
    product: str  # the `nvidia.com/gpu.product` label GPU Feature Discovery sets
    memory_mib: int  # the `nvidia.com/gpu.memory` label (MiB, as GFD reports it)
    cpu: str  # node capacity per 8 GPUs, roughly the cloud instance it usually comes in
    memory: str


#: Short names accepted by `--nodes`. Any other name is taken as a literal product label.
GPU_MODELS: dict[str, GpuModel] = {
    "H100": GpuModel("NVIDIA-H100-80GB-HBM3", 81559, "192", "2Ti"),
    "H200": GpuModel("NVIDIA-H200", 143771, "192", "2Ti"),
    "A100": GpuModel("NVIDIA-A100-SXM4-80GB", 81920, "96", "1152Gi"),
    "A100-40GB": GpuModel("NVIDIA-A100-SXM4-40GB", 40960, "96", "1152Gi"),
    "L40S": GpuModel("NVIDIA-L40S", 46068, "192", "1536Gi"),
    "L4": GpuModel("NVIDIA-L4", 23034, "96", "384Gi"),
    "A10G": GpuModel("NVIDIA-A10G", 23028, "192", "768Gi"),
}


@dataclasses.dataclass(frozen=True)
class GpuNodePool:
    """`count` identical fake nodes with `gpus` GPUs each."""

    product: str = GPU_MODELS["H100"].product
    count: int = 1
    gpus: int = 8
    memory_mib: int = GPU_MODELS["H100"].memory_mib
    cpu: str = "192"
    memory: str = "2Ti"
    pods: str = "110"
    name: str | None = None  # node name prefix; default derived from the product
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, model: str, count: int = 1, gpus: int = 8, **kw: Any) -> GpuNodePool:
        """A pool of a known model (`H100`, `L4`, ... see GPU_MODELS)."""
        m = GPU_MODELS.get(model) or GPU_MODELS.get(model.upper())
        if m is None:
            raise ValueError(f"unknown GPU model {model!r}; known: {', '.join(GPU_MODELS)}")
        kw.setdefault("name", f"gpu-{model.lower()}")
        return cls(
            product=m.product,
            count=count,
            gpus=gpus,
            memory_mib=m.memory_mib,
            cpu=m.cpu,
            memory=m.memory,
            **kw,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GpuNodePool:
        d = dict(d)
        if "model" in d:
            return cls.of(d.pop("model"), **d)
        if isinstance(d.get("labels"), dict):
            d["labels"] = tuple(sorted(d["labels"].items()))
        return cls(**d)

    def prefix(self) -> str:
        if self.name:
            return self.name
        slug = re.sub(r"[^a-z0-9]+", "-", self.product.lower().removeprefix("nvidia-")).strip("-")
        return f"gpu-{slug}"


def parse_nodes(spec: str | Sequence[GpuNodePool | dict[str, Any]] | None) -> list[GpuNodePool]:
    """`"H100:2,L4:1x4"` -> two 8-GPU H100 nodes and one 4-GPU L4 node (`MODEL[:NODES[xGPUS]]`).

    Also accepts a list of GpuNodePool or of dicts (`{"model": "L4", "count": 1, "gpus": 4}` or the
    GpuNodePool fields, e.g. `{"product": "NVIDIA-B200", "memory_mib": 183359, "count": 1}`).
    """
    if spec is None or spec == "":
        return []
    if not isinstance(spec, str):
        return [p if isinstance(p, GpuNodePool) else GpuNodePool.from_dict(p) for p in spec]
    pools = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        m = re.fullmatch(r"([A-Za-z0-9._-]+)(?::(\d+)(?:x(\d+))?)?", item)
        if not m:
            raise ValueError(f"bad node spec {item!r}; want MODEL[:NODES[xGPUS]], e.g. H100:2x8")
        model, count, gpus = m.group(1), int(m.group(2) or 1), int(m.group(3) or 8)
        pools.append(GpuNodePool.of(model, count=count, gpus=gpus))
    return pools


def node_manifests(pools: Iterable[GpuNodePool]) -> list[dict[str, Any]]:
    """Node objects as GPU Feature Discovery and the device plugin leave them, managed by kwok."""
    nodes, seen = [], set()
    for pool in pools:
        for i in range(pool.count):
            name = f"{pool.prefix()}-{i}"
            while name in seen:
                name += "x"
            seen.add(name)
            resources = {
                "cpu": pool.cpu,
                "memory": pool.memory,
                "pods": pool.pods,
                "ephemeral-storage": "1Ti",
                GPU_RESOURCE: str(pool.gpus),
            }
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "annotations": {
                            KWOK_ANNOTATION: "fake",
                            "node.alpha.kubernetes.io/ttl": "0",
                        },
                        "labels": {
                            "kubernetes.io/hostname": name,
                            "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64",
                            "type": "kwok",
                            "nvidia.com/gpu.present": "true",
                            LABEL_PRODUCT: pool.product,
                            LABEL_COUNT: str(pool.gpus),
                            LABEL_MEMORY: str(pool.memory_mib),
                            **dict(pool.labels),
                        },
                    },
                    "spec": {"taints": [dict(KWOK_TAINT)]},
                    # Nodes may carry status on create; kwok's node-initialize keeps these.
                    "status": {"capacity": dict(resources), "allocatable": dict(resources)},
                }
            )
    return nodes


# --------------------------------------------------------------------------- node health


@dataclasses.dataclass(frozen=True)
class NodeHealth:
    """How long a fake node may go quiet before the control plane gives up on it.

    kwok renews each node's Lease (kube-node-lease) every quarter of `lease_seconds`; the node
    lifecycle controller marks a node Unknown, its pods NotReady and taints it `unreachable` once no
    renewal was seen for `grace_seconds`. On a shared 2-core machine kwok can stall for tens of
    seconds; the upstream defaults (40 s lease, 50 s grace) then flip healthy nodes, so the grace is
    generous here. Whatever still flips recovers: see `KVCAP_KWOK_STAGES` (pods become Ready again
    once their node is back, as a kubelet would report them).
    Sources: kube-controller-manager reference, `--node-monitor-grace-period` (default 50s) and
    `--node-monitor-period` (5s),
    https://kubernetes.io/docs/reference/command-line-tools-reference/kube-controller-manager/ ;
    kwok `--node-lease-duration-seconds` (default 40), renewed at a quarter of it
    (sigs.k8s.io/kwok pkg/kwok/cmd/root.go, pkg/kwok/controllers/node_lease_controller.go).
    """

    lease_seconds: int = 40
    grace_seconds: int = 180
    monitor_seconds: int = 5

    def __post_init__(self) -> None:
        if self.grace_seconds < self.lease_seconds or self.monitor_seconds >= self.grace_seconds:
            raise ValueError(
                f"node grace period {self.grace_seconds}s must be at least the lease duration "
                f"{self.lease_seconds}s and longer than the monitor period {self.monitor_seconds}s"
            )


#: jq query (kwok selector key): true for each container whose image is on a registry under the
#: reserved `.invalid` TLD (RFC 2606), which no kubelet can ever pull.
UNPULLABLE_IMAGE_QUERY = '.spec.containers.[] | .image | test("^[^/]*[.]invalid(:[0-9]+)?/")'
UNPULLABLE_REGISTRY = "registry.invalid"  # e.g. `registry.invalid/vllm/vllm-openai:v0.11.0`

_READY_AGAIN_TEMPLATE = """{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: ContainersReady
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Ready
"""

_IMAGE_PULL_BACKOFF_TEMPLATE = """{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: PodScheduled
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  type: ContainersReady
  reason: ContainersNotReady
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  type: Ready
  reason: ContainersNotReady
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  imageID: ""
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    waiting:
      reason: ImagePullBackOff
      message: {{ printf "Back-off pulling image %q" .image | Quote }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
phase: Pending
startTime: {{ $now | Quote }}
"""


def _stage(
    name: str, exprs: list[dict[str, Any]], template: str, delay_ms: int = 0
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
        "selector": {"matchExpressions": exprs},
        "next": {"statusTemplate": template},
    }
    if delay_ms:
        spec["delay"] = {"durationMilliseconds": delay_ms}
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": spec,
    }


#: Stages kvcap adds to kwok's defaults (their templates are ours; kwok's Stage API:
#: https://kwok.sigs.k8s.io/docs/user/stages-configuration/).
KVCAP_KWOK_STAGES: tuple[dict[str, Any], ...] = (
    # A kubelet reports a running pod Ready again once its node is back; kwok's `pod-ready` fires
    # only before a pod has an IP, so pods the node lifecycle controller marked NotReady while kwok
    # missed heartbeats stayed NotReady for good. The delay keeps it from racing that controller
    # while the node is still Unknown (it re-marks the pod, and this stage tries again).
    _stage(
        "kvcap-pod-ready-again",
        [
            {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
            {"key": ".status.podIP", "operator": "Exists"},
            {"key": ".status.phase", "operator": "In", "values": ["Running"]},
            {
                "key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
                "operator": "NotIn",
                "values": ["True"],
            },
        ],
        _READY_AGAIN_TEMPLATE,
        delay_ms=2000,
    ),
    # What a kubelet reports for an image it cannot pull: Pending, waiting in ImagePullBackOff.
    _stage(
        "kvcap-pod-image-pull-backoff",
        [
            {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
            {"key": ".status.hostIP", "operator": "DoesNotExist"},
            {"key": UNPULLABLE_IMAGE_QUERY, "operator": "In", "values": ["true"]},
        ],
        _IMAGE_PULL_BACKOFF_TEMPLATE,
        delay_ms=500,
    ),
)


def kwok_stages(upstream: str) -> list[dict[str, Any]]:
    """kwok's default stages (from build-k8s.sh), amended, plus KVCAP_KWOK_STAGES.

    Amendment: kwok's `pod-ready` must not fire for unpullable images (kwok picks one stage at
    random when several match: sigs.k8s.io/kwok pkg/kwok/controllers/lifecycle.go `Match`).
    """
    stages = [d for d in yaml.safe_load_all(upstream) if d]
    names = {s.get("metadata", {}).get("name") for s in stages}
    if "pod-ready" not in names:
        raise ClusterError("kwok's stages.yaml has no 'pod-ready' stage; rebuild: " + BUILD_HINT)
    for s in stages:
        if s["metadata"]["name"] == "pod-ready":
            s["spec"]["selector"].setdefault("matchExpressions", []).append(
                {"key": UNPULLABLE_IMAGE_QUERY, "operator": "NotIn", "values": ["true"]}
            )
    return [*stages, *(json.loads(json.dumps(s)) for s in KVCAP_KWOK_STAGES)]


# --------------------------------------------------------------------------- processes


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _proc_start_time(pid: int) -> str | None:
    """Start time of `pid` (field 22 of /proc/PID/stat); None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return fields[19]


_libc: Any = None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # PR_SET_PDEATHSIG. SIGKILL, not SIGTERM: all processes get it at once, and an apiserver whose
    # etcd went first hangs in graceful shutdown for a minute or more. The data is disposable.
    _libc.prctl(1, signal.SIGKILL)


@dataclasses.dataclass
class Proc:
    name: str
    pid: int
    start_time: str | None
    log: str
    cmd: list[str]
    popen: subprocess.Popen[bytes] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        st = _proc_start_time(self.pid)
        return st is not None and st == self.start_time

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = Path(self.log).read_text(errors="replace").splitlines()
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(text[-lines:])

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "start_time": self.start_time,
            "log": self.log,
            "cmd": self.cmd,
        }


def _stop_procs(procs: Sequence[Proc], grace: float) -> None:
    """SIGTERM all of `procs` together, wait up to `grace` seconds, then SIGKILL the rest."""
    procs = [p for p in procs if p.alive()]
    for p in procs:
        log.debug("Stopping %s (pid %d)", p.name, p.pid)
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(p.alive() for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in procs:
        if p.alive():
            log.warning(
                "Killed %s (pid %d): still running %.0fs after SIGTERM", p.name, p.pid, grace
            )
            p.signal(signal.SIGKILL)
    for p in procs:
        if p.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=5)
        else:
            end = time.monotonic() + 5
            while p.alive() and time.monotonic() < end:
                time.sleep(0.05)


#: Stop order (reverse dependency): clients first, then the apiserver, etcd last.
STOP_GROUPS = (
    ("kwok", "kube-scheduler", "kube-controller-manager"),
    ("kube-apiserver",),
    ("etcd",),
)


def stop_processes(procs: Sequence[Proc], grace: float = 10.0) -> None:
    by_name = {p.name: p for p in procs}
    for group in STOP_GROUPS:
        _stop_procs([by_name[n] for n in group if n in by_name], grace)
    leftovers = [p for p in procs if p.name not in {n for g in STOP_GROUPS for n in g}]
    _stop_procs(leftovers, grace)


# --------------------------------------------------------------------------- the cluster


class Cluster:
    """A running control plane. Create with `Cluster.start(...)` or `Cluster.attach(workdir)`."""

    def __init__(self, workdir: Path, tier: str, bin_dir: Path) -> None:
        self.workdir = workdir
        self.tier = tier
        self.bin_dir = bin_dir
        self.procs: list[Proc] = []
        self.token = ""
        self.server = ""
        self.kubeconfig = workdir / "kubeconfig"
        self.ca_file = workdir / "pki" / "ca.crt"
        self.nodes: list[str] = []
        self.timings: dict[str, float] = {}
        self.ports: dict[str, int] = {}
        self._remove_workdir = False
        self._die_with_parent = True
        self._ssl: ssl.SSLContext = _no_verify_ctx()  # until the CA is known
        self.node_health = NodeHealth()

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def start(
        cls,
        tier: str = "envtest",
        nodes: str | Sequence[GpuNodePool | dict[str, Any]] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        *,
        kubeconfig: str | os.PathLike[str] | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
        timeout: float = 120.0,
        die_with_parent: bool = True,
        node_health: NodeHealth | None = None,
    ) -> Cluster:
        """Start a control plane and wait until it is usable.

        `tier`: "envtest" (etcd + apiserver) or "e2e" (+ controller-manager, scheduler, kwok).
        `workdir`: data, logs, certs and state; a fresh temp dir (removed by stop()) if None.
        `die_with_parent`: processes get SIGKILL if this process dies (off for a sandbox).
        `node_health`: lease and grace periods of the fake nodes (default NodeHealth()).
        """
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
        bdir = Path(bin_dir).expanduser() if bin_dir else default_bin_dir()
        check_binaries(bdir, tier)
        pools = parse_nodes(nodes)
        if pools and tier != "e2e":
            raise ValueError("fake nodes need tier='e2e' (kwok and the scheduler)")
        if workdir is None:
            wd = Path(tempfile.mkdtemp(prefix="kvcap-k8s-"))
            remove = True
        else:
            wd = Path(workdir).resolve()
            wd.mkdir(parents=True, exist_ok=True)
            remove = False
            existing = _read_state(wd)
            if existing and any(Proc(**p).alive() for p in existing["processes"]):
                raise ClusterError(
                    f"a cluster from {wd} is still running; "
                    f"run `{sys.executable} {__file__} down --dir {wd}` first"
                )
        for attempt in range(1, 4):
            c = cls(wd, tier, bdir)
            c._remove_workdir = remove
            c.node_health = node_health or NodeHealth()
            if kubeconfig is not None:
                c.kubeconfig = Path(kubeconfig).resolve()
            try:
                c._start(node_manifests(pools), timeout, die_with_parent)
                return c
            except ClusterError as e:
                c.stop(remove_workdir=False)
                # Free ports are picked, then bound by the child: another process may win the race.
                if "address already in use" not in str(e) or attempt == 3:
                    raise
                log.warning("A port was taken meanwhile; starting again with other ports")
            except BaseException:
                c.stop(remove_workdir=False)
                raise
        raise AssertionError("unreachable")

    @classmethod
    def attach(cls, workdir: str | os.PathLike[str]) -> Cluster:
        """A handle on a cluster started by another process (from its state file)."""
        wd = Path(workdir).resolve()
        st = _read_state(wd)
        if not st:
            raise ClusterError(f"no cluster state in {wd / STATE_FILE}")
        c = cls(wd, st["tier"], Path(st["bin_dir"]))
        c.procs = [Proc(**p) for p in st["processes"]]
        c.token, c.server = st["token"], st["server"]
        c.kubeconfig, c.ca_file = Path(st["kubeconfig"]), Path(st["ca_file"])
        c.nodes, c.ports = st["nodes"], st["ports"]
        c._ssl = ssl.create_default_context(cafile=str(c.ca_file))
        return c

    def stop(self, grace: float = 10.0, remove_workdir: bool | None = None) -> None:
        """Stop every process this cluster started, each by its own PID; etcd last."""
        t0 = time.monotonic()
        stop_processes(self.procs, grace)
        self.timings["teardown"] = time.monotonic() - t0
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / STATE_FILE).unlink()
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
        if self._remove_workdir if remove_workdir is None else remove_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self, nodes: list[dict[str, Any]], timeout: float, die_with_parent: bool) -> None:
        global _libc
        if die_with_parent and _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        self._die_with_parent = die_with_parent
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        wd = self.workdir
        for sub in ("etcd", "pki"):
            shutil.rmtree(wd / sub, ignore_errors=True)
        (wd / "logs").mkdir(exist_ok=True)
        (wd / "pki").mkdir(mode=0o700)

        names = ["etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler"]
        self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
        self.token = secrets.token_hex(24)
        self.server = f"https://127.0.0.1:{self.ports['apiserver']}"

        # Credentials: an admin token (system:masters) and a service-account signing key.
        tokens = wd / "pki" / "tokens.csv"
        tokens.write_text(f"{self.token},kvcap-admin,kvcap-admin-uid,system:masters\n")
        tokens.chmod(0o600)
        sa_key, sa_pub = wd / "pki" / "sa.key", wd / "pki" / "sa.pub"
        _make_signing_key(sa_key, sa_pub)

        # etcd
        etcd_url = f"http://127.0.0.1:{self.ports['etcd']}"
        peer_url = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        self._spawn(
            "etcd",
            [
                "--name=kvcap",
                f"--data-dir={wd / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=kvcap={peer_url}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait("etcd", deadline, lambda: _http_ok(f"{etcd_url}/health", None))
        self.timings["etcd_ready"] = time.monotonic() - t0

        # kube-apiserver
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.ports['apiserver']}",
                f"--cert-dir={wd / 'pki' / 'apiserver'}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )
        ctx = _no_verify_ctx()
        self._wait(
            "kube-apiserver",
            deadline,
            lambda: _http_ok(f"{self.server}/readyz", ctx, self.token),
            lambda: _http_text(f"{self.server}/readyz?verbose", ctx, self.token),
        )
        self.timings["apiserver_ready"] = time.monotonic() - t0
        self._trust_serving_ca()
        self.write_kubeconfig(self.kubeconfig)
        self._wait("kube-apiserver", deadline, lambda: self._exists("/api/v1/namespaces/default"))

        if self.tier == "e2e":
            self._start_e2e(nodes, deadline, t0)
        self._save_state()
        self.timings["total"] = time.monotonic() - t0
        log.info(
            "Started %s control plane at %s in %.1fs (kubeconfig %s)",
            self.tier,
            self.server,
            self.timings["total"],
            self.kubeconfig,
        )

    def _start_e2e(self, nodes: list[dict[str, Any]], deadline: float, t0: float) -> None:
        wd, kc = self.workdir, str(self.kubeconfig)
        ctx = _no_verify_ctx()
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kc}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports['controller-manager']}",
                f"--cert-dir={wd / 'pki' / 'controller-manager'}",
                f"--service-account-private-key-file={wd / 'pki' / 'sa.key'}",
                f"--root-ca-file={self.ca_file}",
                "--use-service-account-credentials=false",
                "--controllers=*,-nodeipam",
                # See NodeHealth: how long a quiet kwok may go before its nodes count as lost.
                f"--node-monitor-grace-period={self.node_health.grace_seconds}s",
                f"--node-monitor-period={self.node_health.monitor_seconds}s",
                # v1.36's stale-cache guard (KEP-5647, beta) requeues the ReplicaSet controller
                # whenever its informer lags a write; on a loaded 2-core CI machine that left
                # ReplicaSet status stale for up to 60 s ("read version X is not as new as written
                # version Y") and made rollout waits flaky. The controllers are otherwise unchanged.
                "--feature-gates=StaleControllerConsistencyReplicaSet=false",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={kc}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports['scheduler']}",
                f"--cert-dir={wd / 'pki' / 'scheduler'}",
            ],
        )
        kwok_home = wd / "kwok-home"  # keeps a user's ~/.kwok/kwok.yaml out of the picture
        kwok_home.mkdir(exist_ok=True)
        upstream = stages_file(self.bin_dir)
        if upstream is None:
            raise MissingBinaryError(
                f"missing kwok stages.yaml next to {self.bin_dir}: {BUILD_HINT}"
            )
        stages = wd / "kwok-stages.yaml"
        stages.write_text(yaml.safe_dump_all(kwok_stages(upstream.read_text()), sort_keys=False))
        self._spawn(
            "kwok",
            [
                f"--kubeconfig={kc}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                "--cidr=192.0.2.0/24",
                "--node-ip=192.0.2.1",
                f"--config={stages}",
                f"--node-lease-duration-seconds={self.node_health.lease_seconds}",
            ],
            env={"HOME": str(kwok_home)},
        )

        for node in nodes:
            self.request("POST", "/api/v1/nodes", node)
            self.nodes.append(node["metadata"]["name"])
        self._wait(
            "kube-controller-manager",
            deadline,
            lambda: _http_ok(f"https://127.0.0.1:{self.ports['controller-manager']}/healthz", ctx),
        )
        self._wait(
            "kube-scheduler",
            deadline,
            lambda: _http_ok(f"https://127.0.0.1:{self.ports['scheduler']}/healthz", ctx),
        )
        self.timings["controllers_ready"] = time.monotonic() - t0
        # Pods need the namespace's `default` ServiceAccount (the controller-manager creates it).
        self._wait(
            "kube-controller-manager",
            deadline,
            lambda: self._exists("/api/v1/namespaces/default/serviceaccounts/default"),
        )
        self._wait("kwok", deadline, self._nodes_ready, self._nodes_summary)
        self.timings["nodes_ready"] = time.monotonic() - t0

    # ----------------------------------------------------------------- helpers

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        logf = self.workdir / "logs" / f"{name}.log"
        full_env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        full_env.update(env or {})
        cmd = [str(self.bin_dir / name), *args]
        with open(logf, "ab") as out:
            out.write(f"\n### {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
            out.flush()
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=full_env,
                start_new_session=True,
                preexec_fn=_die_with_parent if self._die_with_parent else None,
            )
        p = Proc(name, popen.pid, _proc_start_time(popen.pid), str(logf), cmd, popen)
        self.procs.append(p)
        self._save_state()  # so `down` can clean up even if we die half-way through start
        log.debug("Started %s (pid %d), log %s", name, p.pid, logf)
        return p

    def _wait(self, name: str, deadline: float, ready: Any, diagnose: Any = None) -> None:
        """Poll `ready()` until true; fail loudly (log tail) if a process exits or on timeout."""
        proc = next((p for p in self.procs if p.name == name), None)
        while True:
            for p in self.procs:
                if not p.alive():
                    raise ClusterError(
                        f"{p.name} exited (code {p.exit_code()}) while waiting for {name}; "
                        f"last lines of {p.log}:\n{p.log_tail()}"
                    )
            try:
                if ready():
                    return
            except (OSError, ApiError, ValueError):
                pass
            if time.monotonic() > deadline:
                extra = ""
                if diagnose is not None:
                    with contextlib.suppress(Exception):
                        extra = f"\n{diagnose()}"
                tail = f"; last lines of {proc.log}:\n{proc.log_tail()}" if proc else ""
                raise ClusterError(f"timed out waiting for {name} to become ready{extra}{tail}")
            time.sleep(0.1)

    def _trust_serving_ca(self) -> None:
        """The apiserver's --cert-dir cert is signed by a CA it puts in the same file: trust it."""
        crt = (self.workdir / "pki" / "apiserver" / "apiserver.crt").read_text()
        pems = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", crt, re.S)
        if len(pems) < 2:
            raise ClusterError("kube-apiserver's self-signed cert has no CA in its chain")
        self.ca_file.write_text(pems[-1])
        self._ssl = ssl.create_default_context(cafile=str(self.ca_file))

    def _save_state(self) -> None:
        st = {
            "tier": self.tier,
            "server": self.server,
            "token": self.token,
            "kubeconfig": str(self.kubeconfig),
            "ca_file": str(self.ca_file),
            "bin_dir": str(self.bin_dir),
            "nodes": self.nodes,
            "ports": self.ports,
            "processes": [p.to_json() for p in self.procs],
        }
        path = self.workdir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(st, indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)

    def _exists(self, path: str) -> bool:
        try:
            self.request("GET", path)
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise

    def _nodes_ready(self) -> bool:
        items = self.request("GET", "/api/v1/nodes")["items"]
        ready = {n["metadata"]["name"] for n in items if _node_ready(n)}
        return set(self.nodes) <= ready

    def _nodes_summary(self) -> str:
        items = self.request("GET", "/api/v1/nodes")["items"]
        return "nodes: " + ", ".join(f"{n['metadata']['name']}={_node_ready(n)}" for n in items)

    def wait_nodes_ready(self, timeout: float = 60.0) -> None:
        self._wait("kwok", time.monotonic() + timeout, self._nodes_ready, self._nodes_summary)

    # ----------------------------------------------------------------- API access

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Any:
        """One API call as admin (or with `token`); returns the decoded JSON; raises ApiError."""
        data = (
            None
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        req = urllib.request.Request(f"{self.server}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise ApiError(method, path, e.code, e.read().decode(errors="replace")) from None
        return json.loads(raw) if raw else None

    def version(self) -> dict[str, Any]:
        return self.request("GET", "/version")  # type: ignore[no-any-return]

    def ensure_namespace(self, name: str) -> None:
        try:
            self.request(
                "POST",
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            )
        except ApiError as e:
            if e.status != 409:
                raise

    def ensure_service_account(self, namespace: str, name: str) -> None:
        self.ensure_namespace(namespace)
        try:
            self.request(
                "POST",
                f"/api/v1/namespaces/{namespace}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
            )
        except ApiError as e:
            if e.status != 409:
                raise

    def service_account_token(
        self,
        namespace: str,
        name: str,
        expiration_seconds: int = 3600,
        audiences: Sequence[str] | None = None,
    ) -> str:
        """A bound token for the ServiceAccount, from the TokenRequest API."""
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        if audiences:
            spec["audiences"] = list(audiences)
        resp = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return resp["status"]["token"]  # type: ignore[no-any-return]

    def service_account_kubeconfig(
        self,
        namespace: str,
        name: str,
        path: str | os.PathLike[str] | None = None,
        *,
        create: bool = True,
        expiration_seconds: int = 3600,
    ) -> Path:
        """Write a kubeconfig that authenticates as system:serviceaccount:NAMESPACE:NAME.

        RBAC is enforced for it: bind roles to the ServiceAccount to grant anything. With `create`,
        the namespace and ServiceAccount are created when missing.
        """
        if create:
            self.ensure_service_account(namespace, name)
        token = self.service_account_token(namespace, name, expiration_seconds)
        out = Path(path) if path else self.workdir / f"kubeconfig-sa-{namespace}-{name}"
        self.write_kubeconfig(
            out, token, f"system:serviceaccount:{namespace}:{name}", namespace=namespace
        )
        return out

    def write_kubeconfig(
        self,
        path: str | os.PathLike[str],
        token: str | None = None,
        user: str = "kvcap-admin",
        namespace: str = "default",
        *,
        insecure: bool = False,
    ) -> Path:
        """Write a kubeconfig for `token` (default: the admin token) and return its path.

        By default it trusts the apiserver's self-signed CA; `insecure=True` writes
        `insecure-skip-tls-verify` instead (the Python client then warns on every request).
        """
        path = Path(path)
        tls: dict[str, Any] = {"insecure-skip-tls-verify": True}
        if not insecure:
            tls = {
                "certificate-authority-data": base64.b64encode(self.ca_file.read_bytes()).decode()
            }
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kvcap-dev", "cluster": {"server": self.server, **tls}}],
            "users": [{"name": user, "user": {"token": token or self.token}}],
            "contexts": [
                {
                    "name": "kvcap-dev",
                    "context": {"cluster": "kvcap-dev", "user": user, "namespace": namespace},
                }
            ],
            "current-context": "kvcap-dev",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
        tmp.chmod(0o600)
        tmp.replace(path)
        return path

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}

    @contextlib.contextmanager
    def suspended(self, name: str) -> Iterator[Proc]:
        """SIGSTOP process `name` for the block, SIGCONT after: e.g. kwok, whose nodes then stop
        renewing their Leases as if the machine were starved of CPU."""
        proc = next((p for p in self.procs if p.name == name), None)
        if proc is None or not proc.alive():
            raise ClusterError(f"no running process {name!r} in this cluster")
        proc.signal(signal.SIGSTOP)
        try:
            yield proc
        finally:
            proc.signal(signal.SIGCONT)

    def status(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "processes": {
                p.name: {"pid": p.pid, "alive": p.alive(), "log": p.log} for p in self.procs
            },
            "nodes": self.nodes,
        }


def _node_ready(node: dict[str, Any]) -> bool:
    conds = node.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def _read_state(workdir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((workdir / STATE_FILE).read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None


def _no_verify_ctx() -> ssl.SSLContext:
    """For probing self-signed endpoints (apiserver before its CA is read, controller /healthz)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _http_text(url: str, ctx: ssl.SSLContext | None, token: str | None = None) -> str:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return resp.read().decode(errors="replace")  # type: ignore[no-any-return]
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}: {e.read().decode(errors='replace')}"


def _http_ok(url: str, ctx: ssl.SSLContext | None, token: str | None = None) -> bool:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError:
        return False


def _make_signing_key(key: Path, pub: Path) -> None:
    """An ECDSA P-256 key pair (PEM) for ServiceAccount tokens (ES256; RSA would take ~0.4s)."""
    openssl = shutil.which("openssl")
    if not openssl:
        raise ClusterError(
            "openssl is needed to generate the service-account key (apt-get install openssl)"
        )
    for args in (
        ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
        ["pkey", "-in", str(key), "-pubout", "-out", str(pub)],
    ):
        subprocess.run([openssl, *args], check=True, capture_output=True)
    key.chmod(0o600)


def down(workdir: str | os.PathLike[str], grace: float = 10.0) -> bool:
    """Stop the cluster recorded in WORKDIR's state file, from any process. False if none was."""
    wd = Path(workdir).resolve()
    st = _read_state(wd)
    if not st:
        return False
    stop_processes([Proc(**p) for p in st["processes"]], grace)
    (wd / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(wd / "etcd", ignore_errors=True)
    return True


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="devcluster.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a control plane and leave it running")
    up.add_argument(
        "--dir", default=".sandbox", help="work dir: data, logs, state (default .sandbox)"
    )
    up.add_argument("--tier", choices=TIERS, default="e2e")
    up.add_argument(
        "--nodes",
        default="H100:2,L4:1x4",
        help=f"fake GPU nodes, MODEL[:NODES[xGPUS]],... (models: {', '.join(GPU_MODELS)})",
    )
    up.add_argument(
        "--kubeconfig", help="where to write the admin kubeconfig (default DIR/kubeconfig)"
    )
    up.add_argument("--bin-dir", help="binaries (default $KVCAP_K8S_BIN or the build-k8s.sh cache)")
    up.add_argument("--timeout", type=float, default=120.0)
    up.add_argument(
        "--node-grace-seconds",
        type=int,
        default=NodeHealth.grace_seconds,
        help="seconds without a kwok heartbeat before a node counts as lost (see NodeHealth)",
    )
    up.add_argument(
        "--foreground", action="store_true", help="stay attached; Ctrl-C stops the cluster"
    )
    dn = sub.add_parser("down", help="stop the control plane started from --dir")
    dn.add_argument("--dir", default=".sandbox")
    dn.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    stp = sub.add_parser("status", help="show processes and nodes of the cluster in --dir")
    stp.add_argument("--dir", default=".sandbox")
    sak = sub.add_parser(
        "sa-kubeconfig", help="write a ServiceAccount token kubeconfig (RBAC applies)"
    )
    sak.add_argument("--dir", default=".sandbox")
    sak.add_argument("-n", "--namespace", required=True)
    sak.add_argument("--name", required=True)
    sak.add_argument("-o", "--out", required=True)
    sak.add_argument("--expiration-seconds", type=int, default=86400)
    sub.add_parser("bin-dir", help="print where the binaries are expected")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[devcluster] %(message)s", stream=sys.stderr)

    try:
        if args.cmd == "up":
            c = Cluster.start(
                args.tier,
                args.nodes if args.tier == "e2e" else None,
                args.dir,
                kubeconfig=args.kubeconfig,
                bin_dir=args.bin_dir,
                timeout=args.timeout,
                die_with_parent=args.foreground,
                node_health=NodeHealth(grace_seconds=args.node_grace_seconds),
            )
            t = c.timings
            print(
                f"control plane ({c.tier}) up at {c.server}: "
                f"apiserver ready {t['apiserver_ready']:.1f}s"
                + (f", nodes ready {t['nodes_ready']:.1f}s" if "nodes_ready" in t else ""),
                file=sys.stderr,
            )
            print(f"kubeconfig: {c.kubeconfig}")
            if args.foreground:
                print("Ctrl-C stops it", file=sys.stderr)
                with contextlib.suppress(KeyboardInterrupt):
                    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
                    while all(p.alive() for p in c.procs):
                        time.sleep(1)
                c.stop()
        elif args.cmd == "down":
            t0 = time.monotonic()
            if down(args.dir, args.grace):
                print(
                    f"stopped the cluster in {args.dir} in {time.monotonic() - t0:.1f}s",
                    file=sys.stderr,
                )
            else:
                print(f"no cluster recorded in {args.dir}", file=sys.stderr)
        elif args.cmd == "status":
            c = Cluster.attach(args.dir)
            st = c.status()
            with contextlib.suppress(OSError, ClusterError):
                st["nodes"] = {
                    n["metadata"]["name"]: _node_ready(n)
                    for n in c.request("GET", "/api/v1/nodes", timeout=5)["items"]
                }
            print(json.dumps(st, indent=2))
            return 0 if all(p["alive"] for p in st["processes"].values()) else 1
        elif args.cmd == "sa-kubeconfig":
            c = Cluster.attach(args.dir)
            print(
                c.service_account_kubeconfig(
                    args.namespace, args.name, args.out, expiration_seconds=args.expiration_seconds
                )
            )
        elif args.cmd == "bin-dir":
            print(default_bin_dir())
    except ClusterError as e:
        print(f"devcluster: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
