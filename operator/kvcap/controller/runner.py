"""`kvcap run`: start the operator (kopf, standalone, cluster-wide unless namespaces are given)."""

from __future__ import annotations

import logging
import sys

import kopf

from kvcap.controller.settings import SettingsError, load_settings


def run(*, namespaces: list[str] | None, liveness_endpoint: str | None, verbose: bool) -> int:
    """Run the operator until SIGINT/SIGTERM. Returns the process exit code.

    `namespaces` (kopf globs allowed) override KVCAP_NAMESPACES; empty or None with no setting means
    cluster-wide. `liveness_endpoint` (e.g. 'http://0.0.0.0:8080/healthz') overrides
    KVCAP_LIVENESS_ENDPOINT.
    """
    try:
        settings = load_settings()
    except SettingsError as err:
        print(f"kvcap run: {err}", file=sys.stderr)
        return 2
    watched = list(namespaces or settings.namespaces)
    kopf.configure(verbose=verbose)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    import kvcap.controller.handlers  # noqa: F401  (registers the handlers)

    try:
        kopf.run(
            standalone=True,
            clusterwide=not watched,
            namespaces=watched,
            liveness_endpoint=liveness_endpoint or settings.liveness_endpoint,
        )
    except KeyboardInterrupt:
        return 0
    except Exception as err:  # login failure, bad namespace pattern, ...
        logging.getLogger("kvcap").error("The operator stopped: %s", err)
        return 1
    return 0
