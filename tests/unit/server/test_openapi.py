"""The committed OpenAPI document (docs/openapi.json) is the one the server serves, and it
tells clients how to authenticate and what an error looks like."""

from __future__ import annotations

import json

import pytest

from tools import openapi

METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def spec() -> dict:
    return openapi.document()


def operations(spec: dict) -> list[tuple[str, str, dict]]:
    return [
        (path, method, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def test_committed_document_is_the_generated_one(spec: dict) -> None:
    committed = openapi.DOCUMENT.read_text() if openapi.DOCUMENT.exists() else ""
    assert committed == openapi.render(spec), (
        f"docs/openapi.json differs from the API the server serves: run {openapi.REGENERATE} "
        "and commit the file"
    )


def test_document_is_openapi_3_1(spec: dict) -> None:
    assert spec["openapi"].startswith("3.1.")
    assert spec["info"]["title"] == "vce.kvm control plane"


def test_every_v1_operation_needs_a_bearer_token(spec: dict) -> None:
    schemes = spec["components"]["securitySchemes"]
    bearer = [name for name, scheme in schemes.items() if scheme.get("scheme") == "bearer"]
    assert len(bearer) == 1, schemes
    assert schemes[bearer[0]]["type"] == "http"
    unprotected = [
        f"{method.upper()} {path}"
        for path, method, operation in operations(spec)
        if path.startswith("/v1/") and {bearer[0]: []} not in operation.get("security", [])
    ]
    assert not unprotected


def test_document_has_the_paths_of_every_part(spec: dict) -> None:
    paths = set(spec["paths"])
    for path in ("/v1/actions/{action_id}", "/v1/quotas", "/v1/plan", "/v1/operator/tenants"):
        assert path in paths, sorted(paths)


def test_rendering_is_stable_and_sorted(spec: dict) -> None:
    text = openapi.render(spec)
    assert text.endswith("}\n")
    assert json.loads(text) == spec
    assert openapi.render(json.loads(text)) == text


def test_every_v1_operation_lists_the_error_shape(spec: dict) -> None:
    reply = spec["components"]["schemas"]["ErrorReply"]
    assert reply["properties"]["error"] == {"$ref": "#/components/schemas/ErrorDetail"}
    detail = spec["components"]["schemas"]["ErrorDetail"]
    assert set(detail["required"]) == {"code", "message", "fields", "request_id"}
    missing = [
        f"{method.upper()} {path} {status}"
        for path, method, operation in operations(spec)
        if path.startswith("/v1/")
        for status in ("401", "403", "404", "409", "422", "429")
        if operation["responses"].get(status, {}).get("content", {}).get("application/json")
        != {"schema": {"$ref": "#/components/schemas/ErrorReply"}}
    ]
    assert not missing
    assert "HTTPValidationError" not in spec["components"]["schemas"]
