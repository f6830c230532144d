"""`/openapi.json` and Swagger UI at `/docs` through curl: the document is valid OpenAPI 3 (checked
offline by openapi-spec-validator), describes every OpenAI and Anthropic route the server mounts (and
only those), and the UI's page and assets come from the binary. No model is needed: the document
describes the routes, not the models.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from openapi_spec_validator import validate

from helpers import finish_server, start_server, tritium_bin

CURL = shutil.which("curl")
MOVED_VARIABLE = "DYN_HTTP_SVC_RESPONSES_PATH"
MOVED_PATH = "/api/responses"
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")


def curl(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET with curl, following redirects."""
    out = subprocess.run(
        [CURL, "-sS", "-L", "-w", "\n%{http_code} %{content_type}", url], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    body, _, tail = out.rpartition("\n")
    status, _, content_type = tail.partition(" ")
    return int(status), content_type, body


@pytest.fixture(scope="module")
def anthropic_server():
    """The built-in repository, the Anthropic routes on, and the Responses API moved by Dynamo's variable."""
    saved = os.environ.get(MOVED_VARIABLE)
    os.environ[MOVED_VARIABLE] = MOVED_PATH
    try:
        server = start_server("--enable-anthropic-api")
    finally:
        if saved is None:
            os.environ.pop(MOVED_VARIABLE, None)
        else:
            os.environ[MOVED_VARIABLE] = saved
    yield server
    finish_server(server)


@pytest.fixture(scope="module")
def plain_server():
    server = start_server()
    yield server
    finish_server(server)


def test_the_document_is_valid_openapi_3_and_names_every_route(anthropic_server):
    status, content_type, body = curl(anthropic_server.http_url + "/openapi.json")
    assert status == 200, body
    assert content_type.startswith("application/json"), content_type
    document = json.loads(body)
    validate(document)  # raises on any violation of the OpenAPI 3.x specification
    assert document["openapi"].startswith("3.")
    paths = set(document["paths"])
    expected = {
        "/v1/chat/completions", "/v1/completions", MOVED_PATH, MOVED_PATH + "/{id}", "/v1/embeddings",
        "/v1/models", "/v1/models/{model}", "/v1/messages", "/v1/messages/count_tokens",
    }
    assert paths == expected, paths ^ expected
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    schemas = document["components"]["schemas"]
    for name in ("ChatCompletionRequest", "ResponsesRequest", "MessagesRequest", "NvExt", "ResponseObject", "MessageObject"):
        assert name in schemas, name
    assert "guided_json" in schemas["NvExt"]["properties"]


def test_the_moved_route_answers_where_the_document_says(anthropic_server):
    status, _, body = curl(anthropic_server.http_url + MOVED_PATH + "/resp_none")
    assert status == 404 and "not found" in json.loads(body)["error"]["message"], body
    status, _, _ = curl(anthropic_server.http_url + "/v1/responses/resp_none")
    assert status == 404


def test_without_the_anthropic_api_its_routes_are_neither_served_nor_documented(plain_server):
    _, _, body = curl(plain_server.http_url + "/openapi.json")
    document = json.loads(body)
    validate(document)
    assert not any(path.startswith("/v1/messages") for path in document["paths"]), list(document["paths"])
    assert "/v1/responses" in document["paths"]


def test_swagger_ui_is_served_from_the_binary(anthropic_server):
    status, content_type, page = curl(anthropic_server.http_url + "/docs")
    assert status == 200 and content_type.startswith("text/html"), (status, content_type)
    assert "swagger-ui" in page
    status, _, config = curl(anthropic_server.http_url + "/docs/swagger-initializer.js")
    assert status == 200 and "/openapi.json" in config, config[:500]
    status, content_type, css = curl(anthropic_server.http_url + "/docs/swagger-ui.css")
    assert status == 200 and content_type.startswith("text/css") and len(css) > 10_000, (status, content_type, len(css))


def test_dump_config_to_writes_each_option_with_its_source_and_redacts_secrets(tmp_path, monkeypatch):
    """Dynamo's `--dump-config-to`: the resolved options as JSON, where each came from, secrets hidden."""
    dump = tmp_path / "config.json"
    monkeypatch.setenv("DYN_HTTP_BODY_LIMIT_MB", "7")
    server = start_server("--dump-config-to", str(dump), "--worker-token", "do-not-print-me", "--metrics-prefix", "edge")
    try:
        text = dump.read_text()
        document = json.loads(text)
        options = document["options"]
        assert document["tritium"]["command"] == "serve"
        assert options["http-body-limit-mb"] == {"value": "7", "source": "environment", "env": "DYN_HTTP_BODY_LIMIT_MB"}
        assert options["metrics-prefix"]["value"] == "edge" and options["metrics-prefix"]["source"] == "command_line"
        assert options["http-port"]["source"] == "default"
        # No default of its own: 8001 unless --kserve-grpc-server (as Dynamo takes it) moves gRPC to --http-port.
        assert options["grpc-port"]["source"] == "unset"
        assert options["worker-token"]["value"] == "<redacted>"
        assert "do-not-print-me" not in text
    finally:
        finish_server(server)
    unwritable = subprocess.run(
        [str(tritium_bin()), "serve", "--dump-config-to", str(tmp_path / "missing" / "config.json")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert unwritable.returncode != 0 and "--dump-config-to: cannot write" in unwritable.stderr, unwritable.stderr
