"""`kvcap export keda -f FILE.yaml`: KEDA ScaledObjects for a ModelDeployment's planned pools.

Plans the manifest offline (as `kvcap plan -f`), names each pool's workload as the operator does
(`controller.render.child_name`; a LeaderWorkerSet when a replica spans nodes) and prints one
`ScaledObject` per pool (`kvcap.autoscale.keda`). Apply them with the ModelDeployment's
`spec.autoscaling.policy: External`, so kvcap leaves `replicas` to the HPA KEDA creates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kvcap.api import constants as kc
from kvcap.api.errors import InvalidArgument
from kvcap.api.models import parse_manifest
from kvcap.autoscale.keda import scaled_objects
from kvcap.capacity.configs import read_config_file
from kvcap.capacity.planner import plan_deployment
from kvcap.controller.render import child_name, is_multi_node

DEFAULT_URL = "http://prometheus-operated.monitoring.svc:9090"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="export_command", required=True, metavar="FORMAT")
    keda = sub.add_parser(
        "keda",
        help="one KEDA ScaledObject per pool (an approximation of the built-in loop)",
        description="Print one KEDA ScaledObject per planned pool whose Prometheus trigger "
        "encodes kvcap's KV-headroom rule (docs/autoscaling.md lists how it differs from the "
        "built-in loop). Set the ModelDeployment's `spec.autoscaling.policy` to 'External'.",
    )
    keda.add_argument("-f", "--filename", required=True, help="ModelDeployment YAML ('-' stdin)")
    keda.add_argument("--namespace", "-n", help="default: metadata.namespace, else 'default'")
    keda.add_argument(
        "--prometheus-url",
        help="Prometheus KEDA queries; default: spec.autoscaling.prometheusUrl, else "
        + DEFAULT_URL,
    )
    keda.add_argument("--config", help="config.json to use instead of the catalog")


def export_keda(
    doc: dict[str, Any],
    *,
    namespace: str | None = None,
    prometheus_url: str | None = None,
    config: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The ScaledObjects for one ModelDeployment manifest (raises InvalidArgument)."""
    try:
        manifest = parse_manifest(doc)
    except ValidationError as err:
        raise InvalidArgument(f"the manifest is not a valid ModelDeployment: {err}") from None
    spec = manifest.spec
    plan = plan_deployment(spec, config=config)
    if not plan.feasible:
        raise InvalidArgument(f"no feasible plan, so no pools to scale: {plan.message}")
    name = manifest.metadata.name
    ns = namespace or manifest.metadata.namespace or "default"
    workloads = {
        p.name: (
            child_name(name, p.name),
            kc.LEADER_WORKER_SET_API[3] if is_multi_node(p, spec.gpu.per_node) else "Deployment",
        )
        for p in plan.pools
    }
    url = prometheus_url or spec.autoscaling.prometheus_url or DEFAULT_URL
    return scaled_objects(
        name=name, namespace=ns, spec=spec, plan=plan, workloads=workloads, prometheus_url=url
    )


def run(ns: argparse.Namespace) -> int:
    text = sys.stdin.read() if ns.filename == "-" else Path(ns.filename).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise InvalidArgument(f"'{ns.filename}' must hold exactly one ModelDeployment")
    config = read_config_file(Path(ns.config)) if ns.config else None
    objects = export_keda(
        docs[0], namespace=ns.namespace, prometheus_url=ns.prometheus_url, config=config
    )
    print(yaml.safe_dump_all(objects, sort_keys=False), end="")
    return 0


__all__ = ["add_arguments", "export_keda", "run"]
