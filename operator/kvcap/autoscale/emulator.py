"""A vLLM `/metrics` emulator: serves what a vLLM server exports, driven by a scenario.

Tests, `make sandbox` and users who want to see the autoscaler move without GPUs run one
`EmulatedServer` per (fake) pod. Each serves, on its own port:

* `GET /metrics`   Prometheus text format 0.0.4 with vLLM's metric names, types and labels
                   (`model_name`, `engine`), from `vllm/v1/metrics/loggers.py`:
                   `vllm:num_requests_running`, `vllm:num_requests_waiting` (gauges),
                   `vllm:kv_cache_usage_perc` (gauge 0..1; PR #18354 renamed it from
                   `vllm:gpu_cache_usage_perc`), `vllm:num_requests_waiting_by_reason{reason}`
                   (gauge; PR #38435), `vllm:num_preemptions_total`,
                   `vllm:prefix_cache_queries_total`/`vllm:prefix_cache_hits_total` (counters in
                   tokens; `vllm:gpu_prefix_cache_*` before PR #29330),
                   `vllm:prompt_tokens_total`, `vllm:generation_tokens_total`,
                   `vllm:request_success_total{finished_reason}` (counters) and
                   `vllm:cache_config_info` (gauge = 1, the CacheConfig fields as labels, with
                   `engine` but no `model_name`; `kv_cache_size_tokens` and
                   `kv_cache_max_concurrency` since PR #42206).
* `GET /health`, `GET /v1/models`  what the probes of a kvcap pod ask.
* `GET /levels`, `POST /levels`    read or override the current levels (JSON, the keys of
                                   `Levels` in camelCase); an override holds until the next
                                   POST or `DELETE /levels`, which returns to the scenario.

Generations (`naming`):
  'current'     vLLM >= 0.10: `kv_cache_usage_perc`, `prefix_cache_*`, waiting split by reason.
  'legacy'      vLLM <= 0.8 (V1): `gpu_cache_usage_perc`, `gpu_prefix_cache_*`, no split.
  'transition'  vLLM 0.9: both usage names (the old one deprecated), no split.
`escaped=True` writes `vllm_` instead of `vllm:` in every name: what Prometheus 2.x stores when it
scrapes a server built with prometheus-client >= 0.23 (prometheus/client_python #1177).
`cache_info`: 'tokens' (`num_gpu_blocks`, `block_size`, `kv_cache_size_tokens`,
`kv_cache_max_concurrency`), 'blocks' (no token labels: older servers) or 'none'.

A scenario is a list of steps `{at: seconds, <levels>}`; each holds until the next (`loop: true`
repeats). Counters integrate their per-second rates over time, so `rate()` in Prometheus returns
the scripted rate. The whole module is the standard library only.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Naming = Literal["current", "legacy", "transition"]
CacheInfo = Literal["tokens", "blocks", "none"]
NAMINGS: tuple[str, ...] = ("current", "legacy", "transition")
CACHE_INFOS: tuple[str, ...] = ("tokens", "blocks", "none")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True)
class Levels:
    """What the server reports at one moment (gauges) and its per-second rates (counters)."""

    kv_usage: float = 0.0  # 0..1
    running: float = 0.0
    waiting_capacity: float = 0.0  # waiting for KV blocks or batch slots
    waiting_deferred: float = 0.0  # LoRA budget, KV transfer, ... (not a capacity signal)
    preemptions_per_second: float = 0.0
    prompt_tokens_per_second: float = 0.0  # also the prefix-cache queries rate
    generation_tokens_per_second: float = 0.0
    prefix_hit_rate: float = 0.0  # 0..1 of prompt tokens found in the prefix cache
    requests_per_second: float = 0.0  # finished requests

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Levels | None = None) -> Levels:
        """Levels from camelCase (or snake_case) keys; unknown keys are an error."""
        known = {f.name: f.name for f in fields(cls)} | {
            _camel(f.name): f.name for f in fields(cls)
        }
        values: dict[str, float] = {}
        for key, value in data.items():
            if key == "at":
                continue
            if key not in known:
                raise ValueError(
                    f"unknown level '{key}'; must be one of "
                    f"{sorted(_camel(f.name) for f in fields(cls))}"
                )
            number = float(value)
            if not math.isfinite(number) or number < 0:
                raise ValueError(f"level '{key}' must be a finite number >= 0, got {value!r}")
            values[known[key]] = number
        if values.get("kv_usage", 0.0) > 1 or values.get("prefix_hit_rate", 0.0) > 1:
            raise ValueError("kvUsage and prefixHitRate are fractions and must be <= 1")
        return replace(base or cls(), **values)

    def to_dict(self) -> dict[str, float]:
        return {_camel(k): v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Scenario:
    """Steps of levels over time (seconds since the server started)."""

    steps: tuple[tuple[float, Levels], ...] = ((0.0, Levels()),)
    loop: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        raw = data.get("steps") or []
        if not isinstance(raw, list) or not raw:
            raise ValueError("a scenario must have a non-empty list `steps` of {at: seconds, ...}")
        steps: list[tuple[float, Levels]] = []
        previous = Levels()
        for i, step in enumerate(raw):
            if not isinstance(step, Mapping) or "at" not in step:
                raise ValueError(f"steps[{i}] must be a mapping with `at` (seconds)")
            previous = Levels.from_dict(step, base=previous)  # unspecified levels carry over
            steps.append((float(step["at"]), previous))
        if [t for t, _ in steps] != sorted(t for t, _ in steps):
            raise ValueError("scenario steps must be in increasing `at` order")
        return cls(steps=tuple(steps), loop=bool(data.get("loop", False)))

    @classmethod
    def constant(cls, levels: Levels) -> Scenario:
        return cls(steps=((0.0, levels),))

    def levels_at(self, elapsed: float) -> Levels:
        if self.loop and len(self.steps) > 1:
            period = self.steps[-1][0] if self.steps[-1][0] > 0 else 1.0
            elapsed = elapsed % period
        current = self.steps[0][1]
        for at, levels in self.steps:
            if elapsed >= at:
                current = levels
        return current


@dataclass(frozen=True)
class ServerConfig:
    """Static facts of one emulated vLLM server."""

    model_name: str = "meta-llama/Llama-3.1-8B-Instruct"
    naming: Naming = "current"
    escaped: bool = False
    cache_info: CacheInfo = "tokens"
    num_gpu_blocks: int = 8192
    block_size: int = 16
    kv_cache_size_tokens: int | None = None  # default num_gpu_blocks x block_size
    max_model_len: int = 8192
    gpu_memory_utilization: float = 0.9

    def __post_init__(self) -> None:
        if self.naming not in NAMINGS:
            raise ValueError(f"naming must be one of {NAMINGS}, got '{self.naming}'")
        if self.cache_info not in CACHE_INFOS:
            raise ValueError(f"cache_info must be one of {CACHE_INFOS}, got '{self.cache_info}'")
        if self.num_gpu_blocks < 1 or self.block_size < 1:
            raise ValueError("num_gpu_blocks and block_size must be >= 1")

    @property
    def capacity_tokens(self) -> int:
        if self.kv_cache_size_tokens is not None:
            return self.kv_cache_size_tokens
        return self.num_gpu_blocks * self.block_size


@dataclass
class Counters:
    preemptions: float = 0.0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0
    requests: float = 0.0

    def advance(self, levels: Levels, seconds: float) -> None:
        if seconds <= 0:
            return
        self.preemptions += levels.preemptions_per_second * seconds
        self.prompt_tokens += levels.prompt_tokens_per_second * seconds
        self.generation_tokens += levels.generation_tokens_per_second * seconds
        self.prefix_queries += levels.prompt_tokens_per_second * seconds
        self.prefix_hits += levels.prompt_tokens_per_second * levels.prefix_hit_rate * seconds
        self.requests += levels.requests_per_second * seconds


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs.items()) + "}"


def _num(value: float) -> str:
    return repr(float(value))


def render_metrics(config: ServerConfig, levels: Levels, counters: Counters) -> str:
    """The `/metrics` body (text format 0.0.4) for these levels and counter totals. Pure."""
    prefix = "vllm_" if config.escaped else "vllm:"
    base = {"engine": "0", "model_name": config.model_name}
    out: list[str] = []

    def family(
        name: str,
        kind: str,
        help_text: str,
        samples: Sequence[tuple[str, Mapping[str, str], float]],
    ) -> None:
        full = prefix + name
        out.append(f"# HELP {full} {help_text}")
        out.append(f"# TYPE {full} {kind}")
        for suffix, labels, value in samples:
            out.append(f"{full}{suffix}{_labels(labels)} {_num(value)}")

    family(
        "num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        [("", base, levels.running)],
    )
    waiting = levels.waiting_capacity + levels.waiting_deferred
    family(
        "num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        [("", base, waiting)],
    )
    if config.naming == "current":
        family(
            "num_requests_waiting_by_reason",
            "gauge",
            "Number of requests waiting, by the reason they wait.",
            [
                ("", {**base, "reason": "capacity"}, levels.waiting_capacity),
                ("", {**base, "reason": "deferred"}, levels.waiting_deferred),
            ],
        )
    if config.naming in ("current", "transition"):
        family(
            "kv_cache_usage_perc",
            "gauge",
            "KV-cache usage. 1 means 100 percent usage.",
            [("", base, levels.kv_usage)],
        )
    if config.naming in ("legacy", "transition"):
        family(
            "gpu_cache_usage_perc",
            "gauge",
            "GPU KV-cache usage. 1 means 100 percent usage.",
            [("", base, levels.kv_usage)],
        )
    family(
        "num_preemptions",
        "counter",
        "Cumulative number of preemption from the engine.",
        [("_total", base, counters.preemptions)],
    )
    cache_prefix = "gpu_prefix_cache" if config.naming == "legacy" else "prefix_cache"
    family(
        f"{cache_prefix}_queries",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
        [("_total", base, counters.prefix_queries)],
    )
    family(
        f"{cache_prefix}_hits",
        "counter",
        "Prefix cache hits, in terms of number of cached tokens.",
        [("_total", base, counters.prefix_hits)],
    )
    family(
        "prompt_tokens",
        "counter",
        "Number of prefill tokens processed.",
        [("_total", base, counters.prompt_tokens)],
    )
    family(
        "generation_tokens",
        "counter",
        "Number of generation tokens processed.",
        [("_total", base, counters.generation_tokens)],
    )
    family(
        "request_success",
        "counter",
        "Count of successfully processed requests.",
        [("_total", {**base, "finished_reason": "stop"}, counters.requests)],
    )
    if config.cache_info != "none":
        info = {
            "block_size": str(config.block_size),
            "cache_dtype": "auto",
            "enable_prefix_caching": "True",
            "engine": "0",
            "gpu_memory_utilization": str(config.gpu_memory_utilization),
            "num_gpu_blocks": str(config.num_gpu_blocks),
        }
        if config.cache_info == "tokens":
            info["kv_cache_size_tokens"] = str(config.capacity_tokens)
            info["kv_cache_max_concurrency"] = (
                f"{config.capacity_tokens / config.max_model_len:.2f}"
            )
        family(
            "cache_config_info",
            "gauge",
            "Information of the LLMEngine CacheConfig",
            [("", dict(sorted(info.items())), 1.0)],
        )
    return "\n".join(out) + "\n"


class EmulatedServer:
    """One emulated vLLM server on 127.0.0.1:`port` (0 picks a free port). Thread-safe."""

    def __init__(
        self,
        config: ServerConfig | None = None,
        scenario: Scenario | None = None,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or ServerConfig()
        self.scenario = scenario or Scenario()
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._last = self._started
        self._override: Levels | None = None
        self.counters = Counters()
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def levels(self) -> Levels:
        with self._lock:
            return self._levels_locked()

    def _levels_locked(self) -> Levels:
        if self._override is not None:
            return self._override
        return self.scenario.levels_at(self._clock() - self._started)

    def set_levels(self, levels: Levels | None) -> None:
        """Override the scenario with fixed levels (None: back to the scenario)."""
        with self._lock:
            self._advance_locked()
            self._override = levels

    def _advance_locked(self) -> None:
        now = self._clock()
        self.counters.advance(self._levels_locked(), now - self._last)
        self._last = now

    def metrics_text(self) -> str:
        with self._lock:
            self._advance_locked()
            return render_metrics(self.config, self._levels_locked(), self.counters)

    def start(self) -> EmulatedServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=f"vllm-emulator-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for serve_forever(): only if it runs
            self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def _send(self, code: int, body: str, ctype: str = "application/json") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(
                        200, server.metrics_text(), "text/plain; version=0.0.4; charset=utf-8"
                    )
                elif path == "/health":
                    self._send(200, "")
                elif path == "/v1/models":
                    model = {
                        "id": server.config.model_name,
                        "object": "model",
                        "max_model_len": server.config.max_model_len,
                    }
                    self._send(200, json.dumps({"object": "list", "data": [model]}))
                elif path == "/levels":
                    self._send(200, json.dumps(server.levels().to_dict()))
                else:
                    self._send(404, json.dumps({"error": f"no route {path}"}))

            def do_POST(self) -> None:
                if self.path.split("?", 1)[0] != "/levels":
                    self._send(404, json.dumps({"error": "POST only /levels"}))
                    return
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                    if not isinstance(body, dict):
                        raise ValueError("the body must be a JSON object of levels")
                    levels = Levels.from_dict(body, base=server.levels())
                except (ValueError, TypeError) as err:
                    self._send(400, json.dumps({"error": str(err)}))
                    return
                server.set_levels(levels)
                self._send(200, json.dumps(levels.to_dict()))

            def do_DELETE(self) -> None:
                if self.path.split("?", 1)[0] != "/levels":
                    self._send(404, json.dumps({"error": "DELETE only /levels"}))
                    return
                server.set_levels(None)
                self._send(200, json.dumps(server.levels().to_dict()))

        return Handler


@dataclass
class Fleet:
    """Several emulated servers (one per fake pod), started and stopped together."""

    servers: list[EmulatedServer] = field(default_factory=list)

    def start(self) -> Fleet:
        for server in self.servers:
            server.start()
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def set_levels(self, levels: Levels | None) -> None:
        for server in self.servers:
            server.set_levels(levels)


def serve_forever(servers: Sequence[EmulatedServer]) -> None:
    """Run until interrupted (the CLI)."""
    fleet = Fleet(list(servers)).start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fleet.stop()


__all__ = [
    "CACHE_INFOS",
    "NAMINGS",
    "Counters",
    "EmulatedServer",
    "Fleet",
    "Levels",
    "Scenario",
    "ServerConfig",
    "render_metrics",
    "serve_forever",
]
