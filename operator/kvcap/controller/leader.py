"""Leader election with a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

kopf's peering (`kopf.zalando.org` KopfPeering objects) only makes replicas pause each other by
priority; it is not a lease with an expiry, so two replicas can act at once after a partition.
Here only the holder of the Lease runs the operator at all (`runner.run`): a standby waits in
`acquire()`; the leader renews every `retry` seconds and, if it cannot renew for `renew_deadline`
(shorter than `lease_seconds`), stops the operator and exits, so it has stopped acting before any
standby may take over. On a clean shutdown the leader releases the Lease (holder emptied) so a
standby takes over at once; after a crash the standby waits for `lease_seconds`.

Expiry is judged on this process's monotonic clock from when it last saw the Lease record change
(not by comparing `renewTime` with the local wall clock), so clock skew between nodes does not
matter. Every write is a patch conditional on the read resourceVersion: two candidates cannot
both win.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kvcap.clients.kube import ApiError, Kube

_logger = logging.getLogger("kvcap.leader")


def micro_time(now: datetime | None = None) -> str:
    """metav1.MicroTime: RFC 3339 with microseconds."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: float = 15.0,
        renew_deadline: float | None = None,
        retry: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline or lease_seconds * 2 / 3
        self.retry = retry or max(0.5, lease_seconds / 7.5)
        self._clock = clock
        self._observed: tuple[Any, ...] | None = None  # (holder, renewTime, transitions)
        self._observed_at = 0.0
        self.leader = False
        self.lost = False

    # --- one attempt ---

    async def try_acquire_or_renew(self) -> bool:
        """One round: True when this process holds the Lease afterwards."""
        now = micro_time()
        duration = max(1, round(self.lease_seconds))
        try:
            lease = await self.kube.get_lease(self.namespace, self.name)
            if lease is None:
                await self.kube.create_lease(
                    self.namespace,
                    self.name,
                    {
                        "holderIdentity": self.identity,
                        "leaseDurationSeconds": duration,
                        "acquireTime": now,
                        "renewTime": now,
                        "leaseTransitions": 0,
                    },
                )
                self._observe(None)
                return True
            spec = dict(lease.get("spec") or {})
            record = (
                spec.get("holderIdentity"),
                spec.get("renewTime"),
                spec.get("leaseTransitions"),
            )
            if record != self._observed:
                self._observed, self._observed_at = record, self._clock()
            holder = spec.get("holderIdentity") or ""
            held_by_other = holder and holder != self.identity
            expired = self._clock() - self._observed_at > float(
                spec.get("leaseDurationSeconds") or duration
            )
            if held_by_other and not expired:
                return False
            if holder != self.identity:
                spec["acquireTime"] = now
                spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            spec.update(holderIdentity=self.identity, renewTime=now, leaseDurationSeconds=duration)
            await self.kube.patch_lease(lease, spec)
            self._observe(None)
            return True
        except ApiError as err:
            if err.status not in (409, 404):  # someone else won the race: not an error
                _logger.warning("Lease %s/%s: %s", self.namespace, self.name, err)
            return False

    def _observe(self, record: tuple[Any, ...] | None) -> None:
        self._observed, self._observed_at = record, self._clock()

    # --- the loop ---

    async def acquire(self) -> None:
        """Wait until this process holds the Lease."""
        announced = False
        while not await self.try_acquire_or_renew():
            if not announced:
                _logger.info(
                    "Standing by: Lease %s/%s is held by another replica", self.namespace, self.name
                )
                announced = True
            await asyncio.sleep(self.retry)
        self.leader = True
        _logger.info("Leading: holding Lease %s/%s as %s", self.namespace, self.name, self.identity)

    async def hold(self, on_lost: Callable[[], None]) -> None:
        """Renew until renewing fails for `renew_deadline`; then call `on_lost` and return."""
        last = self._clock()
        while True:
            await asyncio.sleep(self.retry)
            if await self.try_acquire_or_renew():
                last = self._clock()
                continue
            if self._clock() - last >= self.renew_deadline:
                self.leader = False
                self.lost = True
                _logger.error(
                    "Lost Lease %s/%s (not renewed for %.0fs): stopping",
                    self.namespace,
                    self.name,
                    self._clock() - last,
                )
                on_lost()
                return

    async def release(self) -> None:
        """Give the Lease up (clean shutdown): a standby may take it at once."""
        if not self.leader:
            return
        self.leader = False
        try:
            lease = await self.kube.get_lease(self.namespace, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            await self.kube.patch_lease(
                lease,
                {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": micro_time()},
            )
            _logger.info("Released Lease %s/%s", self.namespace, self.name)
        except ApiError as err:
            _logger.warning("Could not release Lease %s/%s: %s", self.namespace, self.name, err)
