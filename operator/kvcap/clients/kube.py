"""A thin async Kubernetes REST client: server-side apply, get/list/delete, discovery, nodes.

Credentials come from the `kubernetes` package's config loaders (in-cluster service account, else
$KUBECONFIG / ~/.kube/config), the same way kopf logs in; requests go through aiohttp (a kopf
dependency), so nothing here blocks the event loop. Only the handful of calls the operator makes are
here — no generated client, no informers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from kvcap.api import constants as kc

# (apiVersion, kind) -> plural, for every kind the operator touches.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Node"): "nodes",
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Secret"): "secrets",
    ("apps/v1", "Deployment"): "deployments",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("coordination.k8s.io/v1", "Lease"): "leases",
}
for _api in (
    kc.SERVICE_MONITOR_API,
    kc.LEADER_WORKER_SET_API,
    kc.INFERENCE_POOL_API_V1,
    kc.INFERENCE_POOL_API_V1ALPHA2,
):
    PLURALS[(f"{_api[0]}/{_api[1]}", _api[3])] = _api[2]

C_COMPONENT = "kvcap"  # Event source / reporting component
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass
class RequestTiming:
    """One request as the caller saw it: verb, resource, seconds from send to the whole answer read,
    of which `queued` waiting for a pooled connection; `status` 0 when no answer came."""

    verb: str
    resource: str
    seconds: float
    queued: float
    status: int


_RECORDING: ContextVar[list[RequestTiming] | None] = ContextVar("kvcap_kube_requests", default=None)


@contextlib.contextmanager
def recording() -> Iterator[list[RequestTiming]]:
    """Collect the timing of every request sent from this context (tasks it starts included:
    they copy the context, and with it the same list)."""
    timings: list[RequestTiming] = []
    token = _RECORDING.set(timings)
    try:
        yield timings
    finally:
        _RECORDING.reset(token)


def resource_of(path: str) -> str:
    """The resource a request path names ('deployments', 'modeldeployments/status', 'discovery')."""
    parts = [p for p in path.split("/") if p]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]  # after /api/v1 or /apis/g/v
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    if not rest:
        return "discovery"
    return f"{rest[0]}/{rest[2]}" if len(rest) > 2 else rest[0]


async def _on_queued_start(_: Any, ctx: SimpleNamespace, __: Any) -> None:
    ctx.queued_at = time.monotonic()


async def _on_queued_end(_: Any, ctx: SimpleNamespace, __: Any) -> None:
    box = ctx.trace_request_ctx
    if isinstance(box, dict):
        box["queued"] = box.get("queued", 0.0) + time.monotonic() - ctx.queued_at


class ApiError(Exception):
    """A non-2xx answer (or a connection failure, status 0) from the API server."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else message)
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth retrying unchanged: throttling, conflicts, server errors, network failures."""
        return self.status == 0 or self.status in TRANSIENT_STATUSES


def plural_for(api_version: str, kind: str) -> str:
    try:
        return PLURALS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"kvcap does not know the resource of {api_version} {kind}") from None


def resource_path(
    api_version: str,
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    parts = [base]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def label_selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _load_configuration() -> k8s_client.Configuration:
    cfg = k8s_client.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        # $KUBECONFIG is read now: the kubernetes package reads it once, at import time.
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=os.environ.get("KUBECONFIG") or None, client_configuration=cfg
        )
    return cfg


def _ssl_context(cfg: k8s_client.Configuration) -> ssl.SSLContext | bool:
    if not cfg.verify_ssl:
        return False
    context = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
    if cfg.cert_file:
        context.load_cert_chain(cfg.cert_file, cfg.key_file)
    return context


def _watch_event(line: bytes) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(line)
    if event.get("type") == "ERROR":
        status = event.get("object") or {}
        raise ApiError(
            int(status.get("code") or 500),
            str(status.get("reason") or "Error"),
            str(status.get("message") or ""),
        )
    return event


def _utf8(data: bytes, kind: str, name: str, key: str) -> str:
    """`data` as text; a ValueError that names the key but never quotes the bytes (a Secret's value
    must not reach status, events or logs, not even the one byte a UnicodeDecodeError shows)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{kind} '{name}' key '{key}' is not UTF-8 text") from None


class Kube:
    """One aiohttp session against one API server."""

    def __init__(
        self,
        cfg: k8s_client.Configuration,
        *,
        discovery_ttl: float = 60.0,
        timeout: float = 30.0,
        connections: int = 32,
    ) -> None:
        self._cfg = cfg
        self._host = cfg.host.rstrip("/")
        self._discovery_ttl = discovery_ttl
        # No total timeout: under load a request may wait for a pooled connection (the callers
        # bound their concurrency); connecting and each read get `timeout`.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=min(10.0, timeout), sock_read=timeout
        )
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._discovery: dict[str, tuple[float, frozenset[str] | None]] = {}
        self._discovering: dict[str, asyncio.Task[frozenset[str] | None]] = {}
        self.requests = 0  # requests sent (the scale benchmark reads it)
        self.in_flight = 0  # requests sent and not yet answered (watches not counted)
        self.peak_in_flight = 0
        self.pool_waits = 0  # requests that waited for a free pooled connection

    @classmethod
    def from_environment(cls, *, discovery_ttl: float = 60.0, timeout: float = 30.0) -> Kube:
        return cls(_load_configuration(), discovery_ttl=discovery_ttl, timeout=timeout)

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
            # aiohttp closes TLS transports a moment after close() returns; let them go before
            # the loop does (else: "unclosed transport" ResourceWarnings at interpreter exit).
            await asyncio.sleep(0.25)

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=_ssl_context(self._cfg), limit=self._connections)
            tracing = aiohttp.TraceConfig()
            tracing.on_connection_queued_start.append(_on_queued_start)
            tracing.on_connection_queued_end.append(_on_queued_end)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, trace_configs=[tracing]
            )
        return self._session

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "kvcap-operator"}
        token = self._cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            headers["Authorization"] = token if " " in token else f"Bearer {token}"
        return headers

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        session = self._ensure_session()
        self.requests += 1
        headers = self._headers()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        box: dict[str, float] = {}
        status = 0
        started = time.monotonic()
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            async with session.request(
                method,
                self._host + path,
                params=params,
                data=data,
                headers=headers,
                trace_request_ctx=box,
            ) as response:
                status = response.status
                text = await response.text()
                if response.status >= 400:
                    try:
                        payload = json.loads(text)
                    except ValueError:
                        payload = {}
                    raise ApiError(
                        response.status,
                        str(payload.get("reason") or response.reason),
                        str(payload.get("message") or text[:500]),
                    )
                return json.loads(text) if text else {}
        except (aiohttp.ClientError, TimeoutError) as err:
            raise ApiError(0, "ConnectionFailed", f"{method} {path}: {err!r}") from err
        finally:
            self.in_flight -= 1
            queued = box.get("queued", 0.0)
            if queued:
                self.pool_waits += 1
            timings = _RECORDING.get()
            if timings is not None:
                timings.append(
                    RequestTiming(
                        method, resource_of(path), time.monotonic() - started, queued, status
                    )
                )

    # --- objects ---

    async def get(
        self, api_version: str, plural: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        try:
            return await self._request("GET", resource_path(api_version, plural, namespace, name))
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def list_objects(
        self,
        api_version: str,
        plural: str,
        namespace: str | None,
        labels: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        items, _ = await self.list_with_version(api_version, plural, namespace, labels)
        return items

    async def list_with_version(
        self,
        api_version: str,
        plural: str,
        namespace: str | None,
        labels: Mapping[str, str] | str | None = None,
        *,
        page: int = 500,
        fields: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        """Every item, fetched in pages of `page` (continue tokens), and the list's
        resourceVersion (to watch from)."""
        params: dict[str, str] = {"limit": str(page)}
        if labels:
            params["labelSelector"] = labels if isinstance(labels, str) else label_selector(labels)
        if fields:
            params["fieldSelector"] = fields
        items: list[dict[str, Any]] = []
        while True:
            result = await self._request(
                "GET", resource_path(api_version, plural, namespace), params=params
            )
            chunk: list[dict[str, Any]] = result.get("items") or []
            kind = result.get("kind", "").removesuffix("List")
            for item in chunk:  # list items lack apiVersion/kind
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
            items.extend(chunk)
            meta = result.get("metadata") or {}
            if not meta.get("continue"):
                return items, str(meta.get("resourceVersion") or "")
            params["continue"] = meta["continue"]

    async def watch(
        self,
        api_version: str,
        plural: str,
        namespace: str | None,
        *,
        labels: str | None,
        resource_version: str,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events ({"type": ..., "object": ...}) from `resource_version` until the server
        ends the stream (after about `timeout_seconds`). Bookmarks are asked for and yielded. A
        410 Gone (too old a resourceVersion) raises ApiError(410): list again."""
        params = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if labels:
            params["labelSelector"] = labels
        session = self._ensure_session()
        self.requests += 1
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=10.0, sock_read=timeout_seconds + 30.0
        )
        path = resource_path(api_version, plural, namespace)
        try:
            async with session.get(
                self._host + path, params=params, headers=self._headers(), timeout=timeout
            ) as response:
                if response.status >= 400:
                    text = await response.text()
                    raise ApiError(response.status, response.reason or "", text[:500])
                buffer = b""
                async for chunk in response.content.iter_any():  # lines may be long (Nodes)
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield _watch_event(line)
        except (aiohttp.ClientError, TimeoutError) as err:
            raise ApiError(0, "ConnectionFailed", f"watch {path}: {err!r}") from err

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply with field manager 'kvcap', force=true."""
        meta = obj["metadata"]
        path = resource_path(
            obj["apiVersion"],
            plural_for(obj["apiVersion"], obj["kind"]),
            meta.get("namespace"),
            meta["name"],
        )
        return await self._request(
            "PATCH",
            path,
            params={"fieldManager": kc.FIELD_MANAGER, "force": "true"},
            body=obj,
            content_type="application/apply-patch+yaml",
        )

    async def delete(
        self, api_version: str, plural: str, namespace: str, name: str, *, uid: str
    ) -> bool:
        """Delete `name` only if it still has `uid` (so a re-created object is never hit)."""
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
            "preconditions": {"uid": uid},
        }
        try:
            await self._request(
                "DELETE", resource_path(api_version, plural, namespace, name), body=body
            )
        except ApiError as err:
            if err.status in (404, 409):  # gone, or replaced by another object of that name
                return False
            raise
        return True

    async def patch_status(
        self,
        api_version: str,
        plural: str,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        *,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch the status subresource. With `resource_version`, the write is conditional:
        the API server answers 409 Conflict when the object changed since it was read."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self._request(
            "PATCH",
            resource_path(api_version, plural, namespace, name, "status"),
            body=body,
            content_type="application/merge-patch+json",
        )

    async def read_key(self, kind: str, namespace: str, name: str, key: str) -> str | None:
        """A ConfigMap's or Secret's key as text; None when the object or the key is missing."""
        obj = await self.get("v1", plural_for("v1", kind), namespace, name)
        if obj is None:
            return None
        if kind == "Secret":
            raw = (obj.get("data") or {}).get(key)
            return None if raw is None else _utf8(base64.b64decode(raw), kind, name, key)
        value = (obj.get("data") or {}).get(key)
        if value is None and key in (obj.get("binaryData") or {}):
            value = _utf8(base64.b64decode(obj["binaryData"][key]), kind, name, key)
        return value

    async def post_event(
        self, obj: Mapping[str, Any], *, type: str, reason: str, message: str
    ) -> None:
        """A core/v1 Event about `obj` (single line, as `kubectl describe` shows it)."""
        meta = obj["metadata"]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": C_COMPONENT},
            "reportingComponent": C_COMPONENT,
            "reportingInstance": C_COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self._request("POST", resource_path("v1", "events", meta["namespace"]), body=event)

    # --- discovery ---

    async def api_resources(self, group: str, version: str) -> frozenset[str] | None:
        """Plurals served by `group/version` (None when the group version is not served), cached."""
        key = f"{group}/{version}"
        cached = self._discovery.get(key)
        if cached is not None and time.monotonic() - cached[0] < self._discovery_ttl:
            return cached[1]
        # one request per group version however many reconciles ask at once (the TTL expires
        # for every worker at the same moment)
        task = self._discovering.get(key)
        if task is None:
            task = self._discovering[key] = asyncio.ensure_future(self._discover(key))
            task.add_done_callback(lambda _: self._discovering.pop(key, None))
        return await asyncio.shield(task)

    async def _discover(self, key: str) -> frozenset[str] | None:
        try:
            result = await self._request("GET", f"/apis/{key}")
            plurals: frozenset[str] | None = frozenset(
                r["name"] for r in result.get("resources") or () if "/" not in r["name"]
            )
        except ApiError as err:
            if err.status not in (403, 404, 503):
                raise
            plurals = None
        self._discovery[key] = (time.monotonic(), plurals)
        return plurals

    async def has_resource(self, group: str, version: str, plural: str) -> bool:
        plurals = await self.api_resources(group, version)
        return plurals is not None and plural in plurals

    # --- nodes and pods ---

    async def list_nodes(self) -> list[dict[str, Any]]:
        return await self.list_objects("v1", "nodes", None)

    # --- leases (leader election) ---

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.get("coordination.k8s.io/v1", "leases", namespace, name)

    async def create_lease(
        self, namespace: str, name: str, spec: Mapping[str, Any]
    ) -> dict[str, Any]:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": dict(spec),
        }
        return await self._request(
            "POST", resource_path("coordination.k8s.io/v1", "leases", namespace), body=body
        )

    async def patch_lease(
        self, lease: Mapping[str, Any], spec: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch a Lease's spec, conditional on the resourceVersion it was read at: 409
        Conflict if someone else wrote it since (a None value removes the field)."""
        meta = lease["metadata"]
        return await self._request(
            "PATCH",
            resource_path("coordination.k8s.io/v1", "leases", meta["namespace"], meta["name"]),
            body={"metadata": {"resourceVersion": meta["resourceVersion"]}, "spec": dict(spec)},
            content_type="application/merge-patch+json",
        )
