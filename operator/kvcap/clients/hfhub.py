"""Fetch a model's `config.json` from the Hugging Face Hub (or a mirror), with an optional token.

The URL layout is the Hub's documented file-resolution endpoint:
`{endpoint}/{repo_id}/resolve/{revision}/config.json` (huggingface_hub `hf_hub_url`), with
`Authorization: Bearer <token>` for gated repos. `HF_ENDPOINT` selects a mirror, as in huggingface_hub.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from kvcap.api.errors import HubError, InvalidModelConfig, ModelNotFound
from kvcap.capacity import catalog
from kvcap.capacity.arch import ModelArch
from kvcap.capacity.configs import load_model, looks_like_path

DEFAULT_ENDPOINT = "https://huggingface.co"
MAX_CONFIG_BYTES = 4 << 20  # a config.json is a few KiB; refuse anything absurd


def config_url(model_id: str, revision: str | None = None, endpoint: str | None = None) -> str:
    base = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    rev = urllib.parse.quote(revision or "main", safe="")
    repo = "/".join(urllib.parse.quote(part, safe="") for part in model_id.split("/"))
    return f"{base}/{repo}/resolve/{rev}/config.json"


def fetch_config(model_id: str, *, token: str | None = None, revision: str | None = None,
                 endpoint: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """Download and parse config.json. Raises ModelNotFound (404), HubError (auth/network)."""
    url = config_url(model_id, revision, endpoint)
    headers = {"User-Agent": "kvcap/0.1 (+https://github.com/kvcap)", "Accept": "application/json"}
    token = token or os.environ.get("HF_TOKEN") or None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_CONFIG_BYTES + 1)
    except urllib.error.HTTPError as err:
        if err.code == 404:
            raise ModelNotFound(f"model '{model_id}' has no config.json at {url} (HTTP 404); check the id "
                                f"and `revision`") from err
        if err.code in (401, 403):
            raise HubError(f"the Hub refused {url} (HTTP {err.code}): the model is gated or private; "
                           f"pass a token with access (--hf-token / HF_TOKEN / `hfTokenSecretRef`)") from err
        raise HubError(f"the Hub answered HTTP {err.code} for {url}") from err
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise HubError(f"could not reach the Hub at {url}: {reason}") from err
    if len(body) > MAX_CONFIG_BYTES:
        raise InvalidModelConfig(f"{url}: config.json is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(body)
    except json.JSONDecodeError as err:
        raise InvalidModelConfig(f"{url}: config.json is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise InvalidModelConfig(f"{url}: config.json must be a JSON object")
    return config


def resolve_model(name: str, *, hub: bool = False, token: str | None = None,
                  revision: str | None = None, endpoint: str | None = None) -> ModelArch:
    """`load_model` plus the Hub: a local path or a catalog id wins; with `hub`, anything else is
    fetched and parsed (the pure capacity layer never touches the network itself)."""
    if hub and not looks_like_path(name) and catalog.find_model(name) is None:
        return load_model(name, config=fetch_config(name, token=token, revision=revision,
                                                    endpoint=endpoint))
    return load_model(name)
