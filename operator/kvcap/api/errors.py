"""Typed errors. Each carries a CamelCase `reason` (for conditions) and a human message."""

from __future__ import annotations


class KvcapError(Exception):
    """Base class: bad input kvcap can explain. `reason` maps onto a condition reason."""

    reason = "InvalidInput"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotFound(KvcapError):
    """The model id is neither a catalog entry, a config.json path, nor reachable on the Hub."""

    reason = "ModelNotFound"


class InvalidModelConfig(KvcapError):
    """A config.json that cannot describe a servable model (missing or nonsensical fields)."""

    reason = "InvalidModelConfig"


class UnknownGpu(KvcapError):
    """A GPU name that is not in the catalog and has no memory size given."""

    reason = "UnknownGpu"


class InvalidArgument(KvcapError):
    """A flag value vLLM itself would reject (e.g. TP that does not divide the heads)."""

    reason = "InvalidArgument"


class HubError(KvcapError):
    """The Hugging Face Hub could not be reached or refused the request."""

    reason = "HubUnavailable"
