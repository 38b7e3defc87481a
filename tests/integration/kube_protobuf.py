"""Helm's release record, which client-go writes as a Secret in Kubernetes' protobuf encoding, read as JSON.

The emulator speaks JSON only. Helm stores each release as a Secret sent with
``Content-Type: application/vnd.kubernetes.protobuf``: the magic ``k8s\\x00`` and a
``runtime.Unknown`` whose ``raw`` field is the ``v1.Secret`` message. :func:`secret_from_protobuf`
reads the fields Helm sets (name, namespace, labels, annotations, data, type), so the emulator can
keep the record and serve it back as JSON (client-go accepts JSON answers): then ``helm upgrade``
finds the release it upgrades.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

MAGIC = b"k8s\x00"
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


def _varint(buffer: bytes, offset: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buffer[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7


def _fields(buffer: bytes) -> Iterator[tuple[int, int | bytes]]:
    """Each field of one protobuf message: (field number, an int or the bytes of a nested value)."""
    offset = 0
    while offset < len(buffer):
        key, offset = _varint(buffer, offset)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == VARINT:
            value, offset = _varint(buffer, offset)
        elif wire == LENGTH_DELIMITED:
            length, offset = _varint(buffer, offset)
            value, offset = buffer[offset : offset + length], offset + length
        elif wire in (FIXED64, FIXED32):
            width = 8 if wire == FIXED64 else 4
            value, offset = buffer[offset : offset + width], offset + width
        else:
            raise ValueError(f"protobuf wire type {wire} is not supported")
        yield number, value


def _nested(buffer: bytes) -> dict[int, list[Any]]:
    fields: dict[int, list[Any]] = {}
    for number, value in _fields(buffer):
        fields.setdefault(number, []).append(value)
    return fields


def _map(entries: list[bytes]) -> dict[str, bytes]:
    """A protobuf map field: each entry a message of key (1) and value (2)."""
    result = {}
    for entry in entries:
        fields = _nested(entry)
        result[fields[1][0].decode()] = fields.get(2, [b""])[0]
    return result


def secret_from_protobuf(body: bytes) -> dict[str, Any]:
    """The JSON form of a ``v1.Secret`` sent in Kubernetes' protobuf encoding."""
    if not body.startswith(MAGIC):
        raise ValueError("not a Kubernetes protobuf body")
    unknown = _nested(body[len(MAGIC) :])
    secret = _nested(unknown[2][0])
    meta = _nested(secret.get(1, [b""])[0])
    metadata: dict[str, Any] = {"name": meta[1][0].decode()}
    if 3 in meta:
        metadata["namespace"] = meta[3][0].decode()
    for number, key in ((11, "labels"), (12, "annotations")):
        if number in meta:
            metadata[key] = {name: value.decode() for name, value in _map(meta[number]).items()}
    data = {name: base64.b64encode(value).decode() for name, value in _map(secret.get(2, [])).items()}
    result: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "data": data}
    if 3 in secret:
        result["type"] = secret[3][0].decode()
    return result
