"""Fetch a model's `config.json` from the Hugging Face Hub (or a mirror), with an optional token.

The URL layout is the Hub's documented file-resolution endpoint:
`{endpoint}/{repo_id}/resolve/{revision}/config.json` (huggingface_hub `hf_hub_url`), with
`Authorization: Bearer <token>` for gated repos. `HF_ENDPOINT` selects a mirror, as in
huggingface_hub.

Security (the operator fetches on behalf of tenants):
* the token is exactly the one passed in: `fetch_config` never falls back to `$HF_TOKEN` (the
  operator's own credentials must never serve a tenant's request; the CLI passes `$HF_TOKEN`
  explicitly);
* `Authorization` is sent only to the host it was meant for: a redirect to another scheme, host or
  port (the Hub's CDN, or anywhere a compromised mirror points) gets no token, as huggingface_hub
  does for non-relative redirects;
* a repo id or revision with a `.` or `..` segment, or characters the Hub does not allow, is
  rejected before any URL is built (huggingface_hub `validate_repo_id`: letters, digits, '-',
  '_', '.'; no '--' or '..'; at most 96 characters;
  https://github.com/huggingface/huggingface_hub/blob/main/src/huggingface_hub/utils/_validators.py).
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any

from kvcap.api.errors import HubError, InvalidArgument, InvalidModelConfig, ModelNotFound
from kvcap.capacity import catalog
from kvcap.capacity.arch import ModelArch
from kvcap.capacity.configs import load_model, looks_like_path

DEFAULT_ENDPOINT = "https://huggingface.co"
MAX_CONFIG_BYTES = 4 << 20  # a config.json is a few KiB; refuse anything absurd
MAX_REPO_ID = 96
_REPO_PART = re.compile(r"^[A-Za-z0-9_.-]+$")


def validate_repo_id(model_id: str) -> None:
    """Raise InvalidArgument unless `model_id` is a Hub repo id ('org/name' or 'name')."""
    parts = model_id.split("/")
    problem = None
    if not model_id or len(model_id) > MAX_REPO_ID:
        problem = f"must be 1 to {MAX_REPO_ID} characters"
    elif len(parts) > 2:
        problem = "must be 'name' or 'organization/name' (one '/' at most)"
    elif any(p in ("", ".", "..") for p in parts):
        problem = "must not have empty, '.' or '..' path segments"
    elif not all(_REPO_PART.match(p) for p in parts):
        problem = "must use only letters, digits, '-', '_' and '.'"
    elif "--" in model_id or ".." in model_id:
        problem = "must not contain '--' or '..'"
    elif any(p[0] in "-." or p[-1] in "-." for p in parts):
        problem = "must not start or end a segment with '-' or '.'"
    if problem is not None:
        raise InvalidArgument(
            f"model name {model_id!r} is not a Hugging Face repo id: it {problem}"
        )


def validate_revision(revision: str) -> None:
    """A branch, tag or commit: never a '.' or '..' path segment, no control characters."""
    if not revision or any(seg in (".", "..") for seg in revision.split("/")):
        raise InvalidArgument(
            f"revision {revision!r} must be a branch, tag or commit, without '.' or '..' segments"
        )
    if any(ord(c) < 0x20 or c == "\x7f" for c in revision):
        raise InvalidArgument("revision must not contain control characters")


def config_url(model_id: str, revision: str | None = None, endpoint: str | None = None) -> str:
    validate_repo_id(model_id)
    if revision is not None:
        validate_revision(revision)
    base = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    rev = urllib.parse.quote(revision or "main", safe="")
    repo = "/".join(urllib.parse.quote(part, safe="") for part in model_id.split("/"))
    return f"{base}/{repo}/resolve/{rev}/config.json"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    return (parts.scheme.lower(), (parts.hostname or "").lower(), port)


class _SameOriginAuthRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but carry `Authorization` only to the origin it was given for.

    urllib copies every header added with `add_header` to the redirected request (CPython
    `HTTPRedirectHandler.redirect_request`), so the token would go to any host a redirect names.
    """

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_SameOriginAuthRedirects)


def fetch_config(
    model_id: str,
    *,
    token: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Download and parse config.json with exactly `token` (None: anonymous).

    Raises InvalidArgument (not a repo id), ModelNotFound (404), HubError (auth/network),
    InvalidModelConfig (not a JSON object).
    """
    url = config_url(model_id, revision, endpoint)
    headers = {"User-Agent": "kvcap/0.1 (+https://github.com/kvcap)", "Accept": "application/json"}
    if token:
        # http.client quotes a header value it rejects in its error: check first, say nothing of it.
        if not all(0x21 <= ord(c) <= 0x7E for c in token):
            raise InvalidArgument(
                "the Hugging Face token must be printable ASCII without spaces; check the Secret "
                "named in `spec.model.hfTokenSecretRef`"
            )
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            body = response.read(MAX_CONFIG_BYTES + 1)
    except urllib.error.HTTPError as err:
        if err.code == 404:
            raise ModelNotFound(
                f"model '{model_id}' has no config.json at {url} (HTTP 404); check the id "
                f"and `revision`"
            ) from err
        if err.code in (401, 403):
            raise HubError(
                f"the Hub refused {url} (HTTP {err.code}): the model is gated or private; "
                f"pass a token with access (--hf-token / HF_TOKEN / `hfTokenSecretRef`)"
            ) from err
        raise HubError(f"the Hub answered HTTP {err.code} for {url}") from err
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise HubError(f"could not reach the Hub at {url}: {reason}") from err
    if len(body) > MAX_CONFIG_BYTES:
        raise InvalidModelConfig(f"{url}: config.json is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidModelConfig(f"{url}: config.json is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise InvalidModelConfig(f"{url}: config.json must be a JSON object")
    return config


def resolve_model(
    name: str,
    *,
    hub: bool = False,
    token: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
) -> ModelArch:
    """`load_model` plus the Hub: a local path or a catalog id wins; with `hub`, anything else is
    fetched and parsed (the pure capacity layer never touches the network itself)."""
    if hub and not looks_like_path(name) and catalog.find_model(name) is None:
        return load_model(
            name,
            config=fetch_config(name, token=token, revision=revision, endpoint=endpoint),
        )
    return load_model(name)
