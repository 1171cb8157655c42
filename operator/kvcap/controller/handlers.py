"""kopf handlers: decorators only. Every handler parses its input and calls one function.

Create, update and resume go through the level-based `kvcap.controller.reconcile.reconcile()`;
a resync loop started at startup calls the same function every KVCAP_RESYNC_SECONDS for every ModelDeployment in
the `model_deployments` index (not a kopf timer: kopf puts a finalizer on objects that have timers,
and nothing here needs one — children go by ownerReference garbage collection). Handlers return None
so kopf writes nothing into `status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from kvcap import GROUP, PLURAL, VERSION
from kvcap.api import constants as kc
from kvcap.clients.kube import Kube
from kvcap.controller.reconcile import OperatorContext, reconcile, resync_forever
from kvcap.controller.settings import load_settings


@kopf.index(GROUP, VERSION, PLURAL)
def model_deployments(namespace: str | None, name: str, uid: str, **_: Any) -> dict[Any, str]:
    return {(namespace, name): uid}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
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
    options = load_settings()  # at startup, not import: the environment is final by now
    memo.ctx = OperatorContext(
        kube=Kube.from_environment(discovery_ttl=options.discovery_ttl_seconds), settings=options
    )
    # kopf passes every index to every handler as a kwarg named after it (live, filled later)
    memo.resync = asyncio.create_task(resync_forever(memo.ctx, kwargs["model_deployments"]))


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    task = getattr(memo, "resync", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
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
