"""The OpenAPI document (docs/openapi.json): valid OpenAPI 3.1, the very routes the
application serves, examples that its own schemas accept, the gateway's problem codes, and
GET /openapi.json."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from aiohttp import hdrs
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.errors import KINDS, PROBLEM_TYPE_BASE
from gateway.web.app import create_app
from gateway.web.openapi import load_document
from gateway.web.relay import SHUTDOWN_RETRY_SECONDS, SHUTTING_DOWN_EVENT
from tests.support.harness import SIGNING_ENV, Gateway, make_config

ROOT = Path(__file__).resolve().parents[2]
DOCS_COPY = ROOT / "docs" / "openapi.json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
#: codes only the OAuth2-protected private routes answer (docs/oauth.md), not the public API
PRIVATE_ROUTE_CODES = {"invalid_token", "insufficient_scope", "identity_provider_unavailable"}
SCHEMA_URI = "urn:agent-gateway:openapi"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(load_document())
    return data


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node``, or what its ``$ref`` (``#/components/...``) points at."""
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    validate(document, cls=OpenAPIV31SpecValidator)  # raises with the path of any mistake
    # the document speaks for this release of the gateway
    assert document["info"]["version"] == metadata.version("agent-gateway")


def test_docs_holds_the_served_document() -> None:
    assert DOCS_COPY.read_bytes() == load_document()


def test_the_wheel_ships_the_document() -> None:
    """``/openapi.json`` must work from an installed wheel (and the Docker image) too."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["gateway"]
    assert any(fnmatch.fnmatch("static/openapi.json", pattern) for pattern in patterns)


def test_every_route_is_documented_and_every_operation_exists(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    # the public application as `gateway serve` builds it (no OAuth2 routes: those forward
    # whatever the operator configures and are documented in docs/oauth.md)
    app = create_app(make_config(tmp_path, "http://127.0.0.1:9"), environ=SIGNING_ENV)
    served = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        served.add((route.method.lower(), resource.canonical))
    documented = {(method, path) for path, method, _ in operations(document)}
    assert served - documented == set(), "routes missing from docs/openapi.json"
    assert documented - served == set(), "documented operations the gateway does not serve"
    # OPTIONS (CORS preflights) and HEAD (static files) are counted above
    assert {method for method, _ in served} == {"get", "head", "post", "options"}


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(ids) == len(set(ids))


def _absolute(node: Any) -> Any:
    """``node`` with its ``#/...`` references made absolute (the document's URI)."""
    if isinstance(node, dict):
        return {
            key: SCHEMA_URI + value
            if key == "$ref" and isinstance(value, str) and value.startswith("#")
            else _absolute(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_absolute(item) for item in node]
    return node


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator of ``schema`` in which ``#/components/...`` means the document's."""
    resource: Resource[Any] = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(SCHEMA_URI, resource)
    return Draft202012Validator(
        _absolute(schema), registry=registry, format_checker=FormatChecker()
    )


def _sse_events(text: str) -> list[dict[str, str]]:
    """A text/event-stream body as its events (``event`` defaults to ``message``)."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event: dict[str, str] = {"event": "message"}
        data = []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                data.append(value)
            elif field in ("event", "id"):
                event[field] = value
        event["data"] = "\n".join(data)
        events.append(event)
    return events


def _content_schema(document: dict[str, Any], schema: dict[str, Any], event: str) -> Any:
    """The ``contentSchema`` of ``data`` that the event schema's ``if``/``then`` picks."""
    for branch in resolve(document, schema).get("allOf", []):
        if branch["if"]["properties"]["event"]["const"] == event:
            return branch["then"]["properties"]["data"]["contentSchema"]
    raise AssertionError(f"no schema for {event!r} events")


def examples_with_schemas(
    document: dict[str, Any],
) -> Iterator[tuple[str, str, dict[str, Any], Any]]:
    """(where, media type, schema, example) for every example of the document."""

    def of(where: str, holder: dict[str, Any], media: str = "") -> Iterator[Any]:
        holder = resolve(document, holder)
        schema = holder.get("schema")
        if schema is None:
            return
        if "example" in holder:
            yield where, media, schema, holder["example"]
        for name, example in holder.get("examples", {}).items():
            yield f"{where} {name}", media, schema, resolve(document, example)["value"]

    for path, method, op in operations(document):
        where = f"{method.upper()} {path}"
        params = document["paths"][path].get("parameters", []) + op.get("parameters", [])
        for param in params:
            yield from of(f"{where} parameter {resolve(document, param)['name']}", param)
        body = op.get("requestBody", {}).get("content", {})
        for media, holder in body.items():
            yield from of(f"{where} request {media}", holder, media)
        for status, response in op["responses"].items():
            response = resolve(document, response)
            for name, header in response.get("headers", {}).items():
                yield from of(f"{where} {status} header {name}", header)
            for media, holder in response.get("content", {}).items():
                yield from of(f"{where} {status} {media}", holder, media)
    for name, schema in document["components"]["schemas"].items():
        for example in schema.get("examples", []):
            yield f"schema {name}", "", {"$ref": f"#/components/schemas/{name}"}, example


def test_examples_validate_against_their_own_schemas(document: dict[str, Any]) -> None:
    assert "date-time" in FormatChecker().checkers  # (rfc3339-validator is installed)
    seen = 0
    for where, media, schema, example in examples_with_schemas(document):
        validator = _validator(document, schema)
        if media == "text/event-stream":
            for event in _sse_events(example):
                assert list(validator.iter_errors(event)) == [], where
                content = _validator(document, _content_schema(document, schema, event["event"]))
                data = json.loads(event["data"])
                assert list(content.iter_errors(data)) == [], f"{where}: {event}"
                seen += 1
            continue
        errors = [error.message for error in validator.iter_errors(example)]
        assert errors == [], where
        seen += 1
    assert seen >= 40  # every problem code, each success body, headers and parameters


def test_problem_codes_are_the_gateways(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert set(schemas["ProblemCode"]["enum"]) == set(KINDS) - PRIVATE_ROUTE_CODES
    for code, kind in KINDS.items():  # the table of codes in the description
        if code not in PRIVATE_ROUTE_CODES:
            assert f"| `{code}` | {kind.status} |" in schemas["ProblemCode"]["description"]
    examples = document["components"]["examples"]
    for name, example in examples.items():
        body = example["value"]
        kind = KINDS[body["code"]]
        assert name == body["code"]
        assert body["type"] == PROBLEM_TYPE_BASE + body["code"]
        assert (body["status"], body["title"]) == (kind.status, kind.title), name


def test_each_answer_lists_codes_of_its_status(document: dict[str, Any]) -> None:
    """Every problem answer documents the codes the gateway answers with that status, so
    a client can branch on ``code`` with the status it sees."""
    checked = 0
    for path, method, op in operations(document):
        for status, response in op["responses"].items():
            content = resolve(document, response).get("content", {})
            if "application/problem+json" not in content:
                continue
            schema = content["application/problem+json"]["schema"]
            assert schema["properties"]["status"] == {"const": int(status)}, (path, method)
            code = schema["properties"]["code"]
            codes = code["enum"] if "enum" in code else [code["const"]]
            for name in codes:
                assert KINDS[name].status == int(status), (path, method, name)
            examples = content["application/problem+json"]["examples"]
            assert set(examples) == set(codes), (path, method, status)
            checked += 1
    assert checked >= 30


async def test_the_document_is_served(gateway_factory: Any) -> None:
    gateway: Gateway = await gateway_factory()
    async with gateway.http.get(
        gateway.url + "/openapi.json", headers={"Origin": "https://docs.example"}
    ) as resp:
        body = await resp.read()
        assert resp.status == 200
        assert resp.headers[hdrs.CONTENT_TYPE] == "application/json"
        assert resp.headers[hdrs.CACHE_CONTROL].startswith("public, max-age=")
        assert resp.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] == "*"
        assert resp.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Request-Id"]
        etag = resp.headers[hdrs.ETAG]
    assert body == load_document() == DOCS_COPY.read_bytes()
    async with gateway.http.get(
        gateway.url + "/openapi.json", headers={"If-None-Match": f"W/{etag}"}
    ) as resp:
        assert resp.status == 304 and await resp.read() == b""
    async with gateway.http.head(gateway.url + "/openapi.json") as resp:
        assert resp.status == 200 and resp.headers[hdrs.ETAG] == etag
        assert int(resp.headers[hdrs.CONTENT_LENGTH]) == len(body)
    async with gateway.http.post(gateway.url + "/openapi.json") as resp:
        assert resp.status == 405
        assert resp.headers[hdrs.ALLOW] == "GET,HEAD"


def test_the_shutdown_event_is_a_documented_stream_event(document: dict[str, Any]) -> None:
    """The event that ends a stream at shutdown (gateway/web/relay.py) is one clients
    can read from the document: an ``error`` event with its code and retry hint."""
    schema = {"$ref": "#/components/schemas/StreamEvent"}
    (event,) = _sse_events(SHUTTING_DOWN_EVENT.decode())
    assert event["event"] == "error"
    assert list(_validator(document, schema).iter_errors(event)) == []
    content = _validator(document, _content_schema(document, schema, "error"))
    data = json.loads(event["data"])
    assert list(content.iter_errors(data)) == []
    assert data["code"] == "shutting_down" and data["retry_after"] == SHUTDOWN_RETRY_SECONDS
    assert list(content.iter_errors({**data, "code": "shutting-down"})) != []
