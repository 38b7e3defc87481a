"""OpenAPI request bodies for handlers that decode their own bytes, and every route's error answers.

Prediction handlers take the raw body so that decoding and validation are a timed phase of their own
and every error is ours; Litestar therefore cannot see the body type. These helpers describe it from
the msgspec struct's JSON schema instead, so the served OpenAPI document stays complete.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Litestar
from litestar.di import Provide
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIType
from litestar.routes import HTTPRoute

from podlatency.web.errors import ErrorBody

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_RENAMED = {"not": "schema_not", "if": "schema_if", "else": "schema_else"}


def schema_from_json_schema(node: Any, definitions: dict[str, Any]) -> Any:
    """A JSON-schema dict (as msgspec writes it) -> Litestar's Schema objects, ``$ref`` inlined."""
    if isinstance(node, list):
        return [schema_from_json_schema(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return schema_from_json_schema(definitions[node["$ref"].rsplit("/", 1)[-1]], definitions)
    fields: dict[str, Any] = {}
    for key, value in node.items():
        name = _RENAMED.get(key, _CAMEL.sub("_", key).lower())
        if name == "type":
            fields[name] = OpenAPIType(value) if isinstance(value, str) else [OpenAPIType(v) for v in value]
        elif name == "properties":
            fields[name] = {prop: schema_from_json_schema(sub, definitions) for prop, sub in value.items()}
        elif name in {"items", "any_of", "all_of", "one_of", "additional_properties"} and value is not False:
            fields[name] = schema_from_json_schema(value, definitions)
        else:
            fields[name] = value
    return Schema(**fields)


def json_body_operation(body_type: type[Any], description: str) -> type[Operation]:
    """An Operation class whose request body is ``body_type`` as JSON."""
    raw = msgspec.json.schema(body_type)
    body_schema = schema_from_json_schema(raw, raw.get("$defs", {}))

    @dataclass
    class JsonBodyOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(
                content={"application/json": OpenAPIMediaType(schema=body_schema)},
                description=description,
                required=True,
            )

    JsonBodyOperation.__name__ = f"{body_type.__name__}Operation"
    return JsonBodyOperation


ERROR_MEANINGS = {
    400: "Malformed: a body that is not JSON, or a path parameter of the wrong form.",
    401: "The write route needs 'Authorization: Bearer <PODLATENCY_API_TOKEN>'.",
    404: "No such model or stored version (`field` names the parameter).",
    413: "More pods than PODLATENCY_MAX_PODS, or a body over PODLATENCY_MAX_BODY_BYTES.",
    422: "A field missing, of the wrong type or out of range (`field` names it).",
    500: "The model could not be loaded (the reason is in `detail`).",
    501: "Not implemented here (`detail` says what to use instead).",
    503: "Not ready (no model in service yet), overloaded (PODLATENCY_MAX_IN_FLIGHT), or a standby "
    "trainer: retry after the Retry-After header's seconds, or send to the leader.",
}


def error_responses(*status_codes: int) -> dict[int, ResponseSpec]:
    """The error answers a route gives, each with the error body every error carries (web/errors.py)."""
    return {
        code: ResponseSpec(
            data_container=ErrorBody, description=ERROR_MEANINGS[code], generate_examples=False
        )
        for code in status_codes
    }


PREDICTION_ERRORS = error_responses(400, 413, 422, 503)
"""What a prediction route answers besides 200."""
SAMPLE_ERRORS = error_responses(400, 401, 413, 422, 503)
"""What a sample route answers besides 202."""


def document_with(
    app: Litestar, twins: Sequence[HTTPRouteHandler], dependencies: Mapping[str, Provide]
) -> None:
    """Describe routes ``app`` serves as plain ASGI handlers by ``twins``, HTTP handlers of the same routes.

    Litestar documents only HTTP handlers. The twins (the batching-off handlers of the batched
    prediction routes: same bodies, same answers) are registered on an app that is never served, and
    its routes are handed to ``app``'s route receivers (its OpenAPI plugin) as Litestar hands each
    route it registers, so ``/schema`` describes them.
    """
    documentation = Litestar(route_handlers=list(twins), dependencies=dict(dependencies), openapi_config=None)
    for route in documentation.routes:
        if isinstance(route, HTTPRoute):
            for plugin in app.plugins.receive_route:
                plugin.receive_route(route)
