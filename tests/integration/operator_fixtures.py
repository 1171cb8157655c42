"""pytest fixtures for the operator's integration tests (load with `pytest_plugins`).

kvcap_crd          the real CRD from crds/ applied to the session's e2e cluster (waits for Established).
                   KVCAP_TEST_CRD=path overrides the file (for debugging a CRD, never in CI).
kvcap_operator     the operator in-process (kopf.testing.KopfRunner), one per session, watching only
                   namespaces 'kvop-*'; resync every 2 s; kwok's taint tolerated via
                   KVCAP_EXTRA_TOLERATIONS (the product itself knows nothing about kwok).
op_namespace       a fresh 'kvop-xxxxxx' namespace, deleted after the test (its pods at once, so the
                   next test gets the fake GPUs back).
fresh_namespace    namespaces NOT watched by the shared operator, for tests running their own.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import devcluster
import hypothesis  # noqa: F401  (imported before the operator thread starts; see kvcap_operator)
import pytest
from kopf.testing import KopfRunner
from kubernetes.config import kube_config
from operator_helpers import (
    CRD_FILE,
    OP_PREFIX,
    OPERATOR_ENV,
    Api,
    apply_crd,
    crd_documents,
    delete_namespace,
)

import kvcap.controller.handlers  # noqa: F401  (registers the handlers; imported here, not in the thread)


@pytest.fixture(scope="session")
def kvcap_api(e2e_cluster: devcluster.Cluster) -> Api:
    return Api(e2e_cluster)


@pytest.fixture(scope="session")
def kvcap_crd(kvcap_api: Api) -> dict[str, Any]:
    path = Path(os.environ.get("KVCAP_TEST_CRD") or CRD_FILE)
    docs = crd_documents(path)
    for crd in docs:
        apply_crd(kvcap_api, crd)
    return docs[0]


@pytest.fixture(scope="session")
def kvcap_operator(e2e_cluster: devcluster.Cluster, kvcap_crd: dict[str, Any]) -> Iterator[Any]:

    # Everything either thread imports is imported before the operator thread starts: CPython
    # 3.11.7 can corrupt its AST-recursion bookkeeping when two threads compile at once
    # ("SystemError: AST constructor recursion depth mismatch", fixed in later 3.11/3.12 releases).
    env = {"KUBECONFIG": str(e2e_cluster.kubeconfig), **OPERATOR_ENV}
    # The kubernetes package reads $KUBECONFIG once, at import (kopf logs in through it).
    with (
        mock.patch.dict(os.environ, env),
        mock.patch.object(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(e2e_cluster.kubeconfig)),
        KopfRunner(
            ["run", "--standalone", "--namespace", f"{OP_PREFIX}-*", "-m", "kvcap.controller.handlers"],
            timeout=60,
        ) as runner,
    ):
        yield runner
    if runner.exception is not None or runner.exit_code != 0:
        print(runner.output[-20000:], file=sys.stderr)
    assert runner.exception is None
    assert runner.exit_code == 0


@pytest.fixture
def op_namespace(kvcap_api: Api, kvcap_operator: Any) -> Iterator[str]:
    """A namespace the shared operator watches; deleted (and waited for) after the test."""
    ns = f"{OP_PREFIX}-{uuid.uuid4().hex[:6]}"
    kvcap_api.cluster.ensure_namespace(ns)
    yield ns
    delete_namespace(kvcap_api, ns)


@pytest.fixture
def fresh_namespace(kvcap_api: Api) -> Iterator[Callable[[str], str]]:
    """Namespaces NOT watched by the shared operator (for tests that run their own operator)."""
    made: list[str] = []

    def make(prefix: str) -> str:
        ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
        kvcap_api.cluster.ensure_namespace(ns)
        made.append(ns)
        return ns

    yield make
    for ns in made:
        delete_namespace(kvcap_api, ns)
