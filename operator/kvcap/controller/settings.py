"""Operator settings, read once from the environment (the Helm chart sets them).

`parse_settings(env)` is pure so tests can build settings from a dict; `load_settings()` reads
`os.environ`. Every variable starts with `KVCAP_`:

| variable | default | meaning |
|---|---|---|
| KVCAP_NAMESPACES | "" (cluster-wide) | comma-separated namespaces (kopf globs allowed) to watch |
| KVCAP_LIVENESS_ENDPOINT | "" (off) | e.g. `http://0.0.0.0:8080/healthz` |
| KVCAP_PROMETHEUS_URL | http://prometheus-operated.monitoring.svc:9090 | default Prometheus |
| KVCAP_PROMETHEUS_*, KVCAP_AUTOSCALE_* | | autoscaling (token, CA, URL allowlist, tick, ...) |
| KVCAP_METRICS_PORT | 8090 | the operator's metrics; all these in `kvcap.controller.autoscaler` |
| KVCAP_RESYNC_SECONDS | 300 | interval of the level-based resync of every ModelDeployment |
| KVCAP_WORKERS | 4 | reconciles running at once (a cold start queues the rest) |
| KVCAP_REQUEST_TIMEOUT_SECONDS | 30 | connect and read timeout of each API request |
| KVCAP_LEADER_ELECTION | Disabled | 'Enabled': only the holder of a Lease reconciles |
| KVCAP_LEADER_ELECTION_NAMESPACE | the pod's | namespace of that Lease |
| KVCAP_LEADER_ELECTION_NAME | kvcap-operator | name of that Lease |
| KVCAP_LEADER_ELECTION_LEASE_SECONDS | 15 | a standby takes over this long after a crash |
| KVCAP_RETRY_DELAY_SECONDS | 15 | delay of kopf.TemporaryError on transient API errors |
| KVCAP_DISCOVERY_TTL_SECONDS | 60 | how long optional-CRD discovery results are cached |
| KVCAP_EXTRA_TOLERATIONS | [] | JSON list of extra pod tolerations for every vLLM pod |
| KVCAP_NODE_INVENTORY | Enabled | 'Disabled' skips reading Nodes (no cluster-aware planning) |
| KVCAP_STARTUP_TIMEOUT_SECONDS | 1800 | how long a vLLM pod may take to load its model |
| KVCAP_EPP_SERVICE_SUFFIX | -epp | InferencePool `endpointPickerRef` = `<name><suffix>` |
| KVCAP_EPP_PORT | 9002 | port of that endpoint picker Service (GIE default ext-proc port) |
| KVCAP_HF_ENDPOINT | "" | Hugging Face Hub endpoint for config.json fetches (mirror) |
| KVCAP_CALIBRATION_CONFIGMAP | "" (off) | `namespace/name` of a calibration ConfigMap (below) |
| KVCAP_CALIBRATION_KEY | calibrations.yaml | the key of that ConfigMap |

The calibration ConfigMap holds `kvcap calibrate --write-override` output; the planner applies the
entry for each model, GPU product and vLLM version (a team's own measured corrections).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class SettingsError(ValueError):
    """An environment variable has a value the operator cannot use."""


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    liveness_endpoint: str | None = None
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    resync_seconds: float = 300.0
    workers: int = 4
    request_timeout_seconds: float = 30.0
    leader_election: bool = False
    leader_election_namespace: str | None = None
    leader_election_name: str = "kvcap-operator"
    lease_seconds: float = 15.0
    retry_delay_seconds: float = 15.0
    discovery_ttl_seconds: float = 60.0
    extra_tolerations: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    node_inventory: bool = True
    startup_timeout_seconds: int = 1800
    epp_service_suffix: str = "-epp"
    epp_port: int = 9002
    hf_endpoint: str | None = None
    calibration_configmap: tuple[str, str] | None = None  # (namespace, name)
    calibration_key: str = "calibrations.yaml"


def _number(env: Mapping[str, str], key: str, default: float, *, minimum: float,
            error: type[ValueError] = SettingsError) -> float:
    """A number setting: `default` when unset; `error` says which variable and what it got."""
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise error(f"{key} must be a number, got '{raw}'") from None
    if value < minimum:
        raise error(f"{key} must be at least {minimum:g}, got '{raw}'")
    return value


def _tolerations(raw: str) -> tuple[dict[str, Any], ...]:
    if not raw.strip():
        return ()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise SettingsError(f"KVCAP_EXTRA_TOLERATIONS must be a JSON list: {err}") from None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise SettingsError("KVCAP_EXTRA_TOLERATIONS must be a JSON list of toleration objects")
    allowed = {"key", "operator", "value", "effect", "tolerationSeconds"}
    for tol in value:
        unknown = set(tol) - allowed
        if unknown:
            raise SettingsError(
                f"KVCAP_EXTRA_TOLERATIONS has unknown toleration field(s) {sorted(unknown)}"
            )
    return tuple(value)


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def _configmap_ref(raw: str) -> tuple[str, str] | None:
    raw = raw.strip()
    if not raw:
        return None
    namespace, _, name = raw.partition("/")
    if not (_DNS_LABEL.match(namespace) and len(namespace) <= 63
            and _DNS_SUBDOMAIN.match(name) and len(name) <= 253):
        raise SettingsError(
            f"KVCAP_CALIBRATION_CONFIGMAP must be 'namespace/name' of a ConfigMap, got '{raw}'"
        )
    return namespace, name


def _switch(env: Mapping[str, str], key: str, default: str) -> str:
    value = env.get(key, default).strip() or default
    if value not in ("Enabled", "Disabled"):
        raise SettingsError(f"{key} must be 'Enabled' or 'Disabled', got '{value}'")
    return value


def parse_settings(env: Mapping[str, str]) -> Settings:
    """Build Settings from environment variables (pure)."""
    namespaces = tuple(
        ns.strip() for ns in env.get("KVCAP_NAMESPACES", "").split(",") if ns.strip()
    )
    inventory = _switch(env, "KVCAP_NODE_INVENTORY", "Enabled")
    election = _switch(env, "KVCAP_LEADER_ELECTION", "Disabled")
    return Settings(
        namespaces=namespaces,
        liveness_endpoint=env.get("KVCAP_LIVENESS_ENDPOINT", "").strip() or None,
        prometheus_url=env.get("KVCAP_PROMETHEUS_URL", "").strip() or Settings.prometheus_url,
        resync_seconds=_number(env, "KVCAP_RESYNC_SECONDS", 300.0, minimum=1.0),
        workers=int(_number(env, "KVCAP_WORKERS", 4, minimum=1)),
        request_timeout_seconds=_number(env, "KVCAP_REQUEST_TIMEOUT_SECONDS", 30.0, minimum=1.0),
        leader_election=election == "Enabled",
        leader_election_namespace=env.get("KVCAP_LEADER_ELECTION_NAMESPACE", "").strip() or None,
        leader_election_name=env.get("KVCAP_LEADER_ELECTION_NAME", "").strip() or "kvcap-operator",
        lease_seconds=_number(env, "KVCAP_LEADER_ELECTION_LEASE_SECONDS", 15.0, minimum=2.0),
        retry_delay_seconds=_number(env, "KVCAP_RETRY_DELAY_SECONDS", 15.0, minimum=0.1),
        discovery_ttl_seconds=_number(env, "KVCAP_DISCOVERY_TTL_SECONDS", 60.0, minimum=0.0),
        extra_tolerations=_tolerations(env.get("KVCAP_EXTRA_TOLERATIONS", "")),
        node_inventory=inventory == "Enabled",
        startup_timeout_seconds=int(
            _number(env, "KVCAP_STARTUP_TIMEOUT_SECONDS", 1800, minimum=10)
        ),
        epp_service_suffix=env.get("KVCAP_EPP_SERVICE_SUFFIX", "").strip() or "-epp",
        epp_port=int(_number(env, "KVCAP_EPP_PORT", 9002, minimum=1)),
        hf_endpoint=env.get("KVCAP_HF_ENDPOINT", "").strip() or None,
        calibration_configmap=_configmap_ref(env.get("KVCAP_CALIBRATION_CONFIGMAP", "")),
        calibration_key=env.get("KVCAP_CALIBRATION_KEY", "").strip() or "calibrations.yaml",
    )


def load_settings() -> Settings:
    """Settings from `os.environ`."""
    return parse_settings(os.environ)
