"""The Hub loader against a real HTTP server on loopback serving config.json files."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kvcap.api.errors import HubError, InvalidModelConfig, ModelNotFound
from kvcap.clients.hfhub import config_url, fetch_config, resolve_model

CONFIG = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1536,
          "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
          "num_key_value_heads": 2, "vocab_size": 151936, "torch_dtype": "bfloat16",
          "max_position_embeddings": 32768, "tie_word_embeddings": True}


class Hub(BaseHTTPRequestHandler):
    requests: list[tuple[str, str | None]] = []

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
        return self._send(404, b"Entry not found")

    def _send(self, code, body):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


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
