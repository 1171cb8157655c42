"""Request traces: the public formats in shared/traces (and users' files in the same formats).

* Azure LLM inference 2023 (Splitwise) CSV: `TIMESTAMP,ContextTokens,GeneratedTokens`, wall-clock
  timestamps with 7 fractional digits.
* Mooncake FAST'25 JSONL: `{"timestamp": ms, "input_length", "output_length",
  "hash_ids": [...]}`, one hash per 512-token prefix block.
* Length-only CSV (sarathi-serve ShareGPT stats): `num_prefill_tokens,num_decode_tokens,...`; the
  arrivals are synthetic (Poisson at `poisson_rate`, seeded).

`scale(trace, k, seed)` changes the load by superposing copies of the trace (integer part of k)
plus a thinned copy (fractional part), each copy rotated in time by a seeded offset: the duration
and the shape of the load stay, the rate is k times the original, and a higher k always holds a
superset of a lower k's requests (so more load can never make static provisioning cheaper).
"""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from kvcap.api.errors import InvalidArgument

MOONCAKE_BLOCK_TOKENS = 512  # FAST25-release/README.md: one hash id per 512-token block


@dataclass(frozen=True, slots=True)
class TraceRequest:
    arrival: float  # seconds from the start of the trace
    prompt: int
    output: int
    hashes: tuple[int, ...] = ()  # Mooncake prefix-block hash ids (empty: unknown)


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    format: str  # "azure" | "mooncake" | "lengths"
    requests: tuple[TraceRequest, ...]
    block_tokens: int = MOONCAKE_BLOCK_TOKENS  # tokens per hash id
    span: float | None = None  # the time the trace covers (default: its last arrival)

    @property
    def duration(self) -> float:
        if self.span is not None:
            return self.span
        return self.requests[-1].arrival if self.requests else 0.0


def _azure_time(text: str, where: str) -> float:
    text = text.strip()
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"  # strptime takes at most 6 fractional digits
        fmt = "%Y-%m-%d %H:%M:%S.%f"
    else:
        fmt = "%Y-%m-%d %H:%M:%S"
    try:
        return datetime.strptime(text, fmt).timestamp()
    except ValueError:
        raise InvalidArgument(f"{where}: TIMESTAMP '{text}' must look like "
                              f"'2023-11-16 18:15:46.6805900'") from None


def _int(value: object, where: str, field: str) -> int:
    try:
        number = int(float(str(value)))
    except (TypeError, ValueError):
        raise InvalidArgument(f"{where}: '{field}' must be a whole number of tokens, got "
                              f"{value!r}") from None
    if number < 0:
        raise InvalidArgument(f"{where}: '{field}' must be >= 0, got {number}")
    return number


def read_trace(path: str | Path, *, poisson_rate: float = 2.0, seed: int = 0) -> Trace:
    """Read a trace file, detecting its format from its first line."""
    p = Path(path)
    try:
        with p.open(newline="") as f:
            first = f.readline()
    except OSError as err:
        raise InvalidArgument(f"cannot read trace '{path}': {err.strerror}") from err
    if first.lstrip().startswith("{"):
        return _read_mooncake(p)
    header = [h.strip() for h in first.strip().split(",")]
    if "TIMESTAMP" in header and "ContextTokens" in header:
        return _read_azure(p)
    if "num_prefill_tokens" in header and "num_decode_tokens" in header:
        return _read_lengths(p, poisson_rate, seed)
    raise InvalidArgument(
        f"'{path}' is not a known trace format: must be Mooncake JSONL (timestamp, input_length, "
        f"output_length, hash_ids), Azure LLM CSV (TIMESTAMP,ContextTokens,GeneratedTokens) or a "
        f"length CSV (num_prefill_tokens,num_decode_tokens); its first line is {first[:80]!r}")


def _read_azure(p: Path) -> Trace:
    out: list[TraceRequest] = []
    t0: float | None = None
    with p.open(newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            where = f"{p.name} line {i}"
            t = _azure_time(row.get("TIMESTAMP") or "", where)
            t0 = t if t0 is None else t0
            out.append(TraceRequest(t - t0, _int(row.get("ContextTokens"), where, "ContextTokens"),
                                    _int(row.get("GeneratedTokens"), where, "GeneratedTokens")))
    out.sort(key=lambda r: r.arrival)
    return Trace(p.name, "azure", tuple(out))


def _read_mooncake(p: Path) -> Trace:
    out: list[TraceRequest] = []
    with p.open() as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{p.name} line {i}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InvalidArgument(f"{where} is not JSON: {err.msg}") from None
            if not isinstance(row, dict) or "timestamp" not in row:
                raise InvalidArgument(f"{where}: must be an object with 'timestamp' (ms), "
                                      f"'input_length', 'output_length' and 'hash_ids'")
            hashes = row.get("hash_ids") or []
            if not isinstance(hashes, list):
                raise InvalidArgument(f"{where}: 'hash_ids' must be a list of integers")
            out.append(TraceRequest(
                float(row["timestamp"]) / 1000.0,
                _int(row.get("input_length"), where, "input_length"),
                _int(row.get("output_length"), where, "output_length"),
                tuple(int(h) for h in hashes)))
    out.sort(key=lambda r: r.arrival)
    return Trace(p.name, "mooncake", tuple(out))


def _read_lengths(p: Path, rate: float, seed: int) -> Trace:
    if rate <= 0:
        raise InvalidArgument("the Poisson rate for a length-only trace must be > 0 requests/s")
    rng = random.Random(seed)
    out: list[TraceRequest] = []
    t = 0.0
    with p.open(newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            where = f"{p.name} line {i}"
            t += rng.expovariate(rate)
            out.append(TraceRequest(t, _int(row.get("num_prefill_tokens"), where,
                                            "num_prefill_tokens"),
                                    _int(row.get("num_decode_tokens"), where, "num_decode_tokens")))
    return Trace(p.name, "lengths", tuple(out))


def scale(trace: Trace, k: float, seed: int) -> Trace:
    """k times the load over the same span (see the module docstring)."""
    if not k > 0 or not math.isfinite(k):
        raise InvalidArgument(f"--rate-multiplier must be > 0, got {k}")
    if k == 1 or not trace.requests:
        return trace
    span = max(trace.duration, 1e-9)
    max_hash = max((max(r.hashes) for r in trace.requests if r.hashes), default=0) + 1
    copies = math.ceil(k)
    out: list[TraceRequest] = []
    for c in range(copies):
        rng = random.Random(f"{seed}:{c}")
        offset = 0.0 if c == 0 else rng.random() * span
        keep = min(1.0, k - c)  # the last copy is thinned to the fractional part
        for r in trace.requests:
            u = rng.random()
            if u >= keep:
                continue
            hashes = tuple(h + c * max_hash for h in r.hashes) if c else r.hashes
            out.append(replace(r, arrival=(r.arrival + offset) % span, hashes=hashes))
    out.sort(key=lambda r: r.arrival)
    return Trace(f"{trace.name} x{k:g}", trace.format, tuple(out), trace.block_tokens, span)


def cut(trace: Trace, duration: float | None) -> Trace:
    """The first `duration` seconds of the trace."""
    if duration is None:
        return trace
    if duration <= 0:
        raise InvalidArgument(f"--duration must be > 0 seconds, got {duration}")
    return replace(trace, requests=tuple(r for r in trace.requests if r.arrival <= duration),
                   span=min(duration, trace.duration))
