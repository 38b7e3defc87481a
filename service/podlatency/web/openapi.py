"""OpenAPI request bodies for handlers that decode their own bytes.

Prediction handlers take the raw body so that decoding and validation are a timed phase of their own
and every error is ours; Litestar therefore cannot see the body type. These helpers describe it from
the msgspec struct's JSON schema instead, so the served OpenAPI document stays complete.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIType

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
