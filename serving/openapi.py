"""The OpenAPI document clients (and schemathesis) see at ``/docs.json``.

BentoML 1.4 generates the spec from the same pydantic models, but flattens every
``X | None`` to ``X`` (its ``_flatten_field`` keeps the first ``anyOf`` branch) and
documents neither the API-key scheme nor the 401/415/422/503 answers this service gives.
This rebuilds each operation's request and response schemas from the pydantic models as
OpenAPI 3.1 (JSON Schema, nullability kept) and adds the security scheme and statuses.
"""

from __future__ import annotations

import copy
import inspect
from typing import get_type_hints

from pydantic import TypeAdapter, create_model

from kernel import __version__

ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "detail": {}},
    "required": ["error"],
}
EXTRA_RESPONSES = {
    "401": "missing or invalid API key (X-API-Key header or Authorization: Bearer)",
    "415": "the body is not JSON (Content-Type must be application/json)",
    "422": "request body does not match the schema: the message names the field",
    "503": "a store the call needs is down; nothing was stored: retry with the same event ids",
}


def _schema(adapter: TypeAdapter, components: dict) -> dict:
    """JSON schema with its ``$defs`` moved into ``components``."""
    schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    return schema


def _io(func) -> tuple[TypeAdapter, TypeAdapter]:
    """Request and response types of an API method, from its signature (what BentoML validates)."""
    hints = get_type_hints(func, include_extras=True)
    params = {
        name: (hints[name], p.default if p.default is not inspect.Parameter.empty else ...)
        for name, p in inspect.signature(func).parameters.items()
        if name != "self"
    }
    request = create_model(f"{func.__name__}_request", **params)
    return TypeAdapter(request), TypeAdapter(hints["return"])


def full_spec(service_cls) -> dict:
    """BentoML's document for ``service_cls`` with every operation's schemas, security and statuses."""
    spec = copy.deepcopy(service_cls.openapi_spec.asdict())
    spec["openapi"] = "3.1.0"
    spec.setdefault("info", {})["version"] = __version__
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Error"] = ERROR
    components["securitySchemes"] = {
        "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    for api in service_cls.apis.values():
        op = spec["paths"].get(api.route, {}).get("post")
        if op is None:
            continue
        op["security"] = [{"ApiKey": []}]
        # BentoML keys responses by int; JSON keys are strings, so "200" next to 200 would be a
        # duplicated key that Swagger UI's parser rejects
        op["responses"] = {str(status): answer for status, answer in op.get("responses", {}).items()}
        request, response = _io(api.func)
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _schema(request, schemas)}}}
        op["responses"]["200"] = {
            "description": "Successful Response",
            "content": {"application/json": {"schema": _schema(response, schemas)}},
        }
        op["responses"].pop("400", None)  # bad input answers 422 (ApiKeyMiddleware)
        for status, text in EXTRA_RESPONSES.items():
            op["responses"][status] = {
                "description": text,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
    if "/metrics" in spec["paths"]:  # Prometheus text, behind the key
        for op in spec["paths"]["/metrics"].values():
            op["security"] = [{"ApiKey": []}]
            op["responses"] = {str(status): answer for status, answer in op.get("responses", {}).items()}
            op["responses"]["401"] = {"description": EXTRA_RESPONSES["401"]}
    return spec
