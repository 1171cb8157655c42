"""kopf handlers: decorators only. Every handler parses its input and calls one function.

Create, update, resume and the resync timer all go through the same level-based
`kvcap.reconcile.reconcile()`. Handlers return None so kopf writes nothing into `status`.

kopf puts its finalizer (`kvcap.io/finalizer`) on each ModelDeployment because timers require one
(kopf must stop the timer before the object goes away); there are no deletion handlers, so kopf
removes it at once on deletion, and the children go by ownerReference garbage collection.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kvcap import GROUP, PLURAL, VERSION
from kvcap import constants as kc
from kvcap.kube import Kube
from kvcap.reconcile import OperatorContext, reconcile, skip_resync
from kvcap.settings import load_settings

SETTINGS = load_settings()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = kc.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=kc.ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=kc.ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.peering.standalone = True
    settings.posting.level = (
        logging.INFO
    )  # only explicit kopf.event() calls (posting.loggers=False)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    memo.ctx = OperatorContext(
        kube=Kube.from_environment(discovery_ttl=SETTINGS.discovery_ttl_seconds), settings=SETTINGS
    )


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    ctx = getattr(memo, "ctx", None)
    if ctx is not None:
        await ctx.kube.close()


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
async def reconcile_fn(
    body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, memo: kopf.Memo, **_: Any
) -> None:
    await reconcile(body, patch=patch, logger=logger, ctx=memo.ctx, trigger="change")


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.resync_seconds, idle=SETTINGS.resync_seconds)
async def resync_fn(
    body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, memo: kopf.Memo, **_: Any
) -> None:
    if not skip_resync(body):
        await reconcile(body, patch=patch, logger=logger, ctx=memo.ctx, trigger="resync")
