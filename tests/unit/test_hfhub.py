"""The Hub loader against a real HTTP server on loopback serving config.json files."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kvcap.api.errors import HubError, InvalidArgument, InvalidModelConfig, ModelNotFound
from kvcap.clients.hfhub import config_url, fetch_config, resolve_model

CONFIG = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1536,
          "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
          "num_key_value_heads": 2, "vocab_size": 151936, "torch_dtype": "bfloat16",
          "max_position_embeddings": 32768, "tie_word_embeddings": True}


class Hub(BaseHTTPRequestHandler):
    requests: list[tuple[str, str | None]] = []
    elsewhere: str = ""  # base URL of a second server (another origin)

    def do_GET(self):
        Hub.requests.append((self.path, self.headers.get("Authorization")))
        if self.path == "/acme/tiny/resolve/main/config.json":
            return self._send(200, json.dumps(CONFIG).encode())
        if self.path == "/acme/gated/resolve/main/config.json":
            if self.headers.get("Authorization") != "Bearer s3cret":
                return self._send(401, b"{}")
            return self._send(200, json.dumps(CONFIG).encode())
        if self.path == "/acme/tiny/resolve/v2/config.json":
            return self._send(200, b"not json")
        if self.path == "/acme/tiny/resolve/latin1/config.json":
            return self._send(200, b'{"name": "\xff\xfe"}')
        if self.path == "/acme/renamed/resolve/main/config.json":  # same origin: keeps the token
            return self._redirect("/acme/gated/resolve/main/config.json")
        if self.path == "/acme/cdn/resolve/main/config.json" and Hub.elsewhere:  # another origin
            return self._redirect(f"{Hub.elsewhere}/acme/gated/resolve/main/config.json")
        return self._send(404, b"Entry not found")

    def _redirect(self, location):
        self.send_response(307)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, code, body):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serve():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def hub():
    server, url = _serve()
    other, Hub.elsewhere = _serve()
    yield url
    for s in (server, other):
        s.shutdown()
        s.server_close()


def test_url_layout():
    assert config_url("meta-llama/Llama-3.1-8B", "main", "https://huggingface.co") == \
        "https://huggingface.co/meta-llama/Llama-3.1-8B/resolve/main/config.json"


def test_fetch_and_parse(hub):
    assert fetch_config("acme/tiny", endpoint=hub) == CONFIG
    arch = resolve_model("acme/tiny", hub=True, endpoint=hub)
    assert arch.num_kv_heads == 2 and len(arch.layer_kinds) == 28


def test_gated_model_needs_token(hub):
    with pytest.raises(HubError, match="gated or private"):
        fetch_config("acme/gated", endpoint=hub, token=None)
    assert fetch_config("acme/gated", endpoint=hub, token="s3cret") == CONFIG
    assert ("/acme/gated/resolve/main/config.json", "Bearer s3cret") in Hub.requests


def test_missing_and_malformed(hub):
    with pytest.raises(ModelNotFound, match="HTTP 404"):
        fetch_config("acme/nothing", endpoint=hub)
    with pytest.raises(InvalidModelConfig, match="not valid JSON"):
        fetch_config("acme/tiny", endpoint=hub, revision="v2")


def test_unreachable_hub():
    with pytest.raises(HubError, match="could not reach the Hub"):
        fetch_config("acme/tiny", endpoint="http://127.0.0.1:9", timeout=2)


def test_the_operator_never_lends_its_own_token(hub, monkeypatch):
    """A tenant without a token gets an anonymous request, even when $HF_TOKEN is set."""
    monkeypatch.setenv("HF_TOKEN", "s3cret")
    Hub.requests.clear()
    with pytest.raises(HubError, match="gated or private"):
        fetch_config("acme/gated", endpoint=hub)
    assert Hub.requests == [("/acme/gated/resolve/main/config.json", None)]


def test_authorization_follows_same_origin_redirects_only(hub):
    assert fetch_config("acme/renamed", endpoint=hub, token="s3cret") == CONFIG
    Hub.requests.clear()
    with pytest.raises(HubError, match="gated or private"):  # the other origin got no token
        fetch_config("acme/cdn", endpoint=hub, token="s3cret")
    assert Hub.requests == [
        ("/acme/cdn/resolve/main/config.json", "Bearer s3cret"),
        ("/acme/gated/resolve/main/config.json", None),
    ]


@pytest.mark.parametrize("model_id", [
    "..", "../etc", "acme/..", "acme/../../admin", "./tiny", "acme/tiny/extra", "acme//tiny",
    "acme/ti..ny", "acme/ti--ny", "acme/-tiny", "acme/tiny.", "acme/ti ny", "acme/t%2e%2e",
    "", "a" * 97,
])
def test_names_that_are_not_repo_ids_are_rejected_before_any_request(hub, model_id):
    Hub.requests.clear()
    with pytest.raises(InvalidArgument, match="is not a Hugging Face repo id"):
        fetch_config(model_id, endpoint=hub)
    assert Hub.requests == []


@pytest.mark.parametrize("revision", ["..", ".", "a/../b", "main\n"])
def test_revisions_with_dot_segments_are_rejected(revision):
    with pytest.raises(InvalidArgument, match="revision"):
        config_url("acme/tiny", revision, "http://hub")


@pytest.mark.parametrize("model_id", ["meta-llama/Llama-3.1-8B-Instruct", "gpt2", "a.b_c/d-e.f"])
def test_real_repo_ids_pass(model_id):
    assert config_url(model_id, "main", "https://hub").endswith("/resolve/main/config.json")


def test_a_config_that_is_not_utf8_is_a_config_error(hub):
    with pytest.raises(InvalidModelConfig, match="not valid JSON"):
        fetch_config("acme/tiny", endpoint=hub, revision="latin1")


@pytest.mark.parametrize("token", ["hf_ab\ncd", "hf_ab cd", "hf_\u00e9t\u00e9", "hf_\x00"])
def test_a_malformed_token_is_rejected_without_quoting_it(hub, token):
    Hub.requests.clear()
    with pytest.raises(InvalidArgument) as err:
        fetch_config("acme/gated", endpoint=hub, token=token)
    assert token not in str(err.value) and "hf_" not in str(err.value)
    assert Hub.requests == []
