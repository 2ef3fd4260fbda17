"""Checks every request message gets before any servicer sees it (run by the server's error
interceptor, so no service repeats them):

- bytes that are not a valid protobuf message of the method's request type (e.g. a string field
  holding invalid UTF-8, which is also what the gateway forwards for `/v1/conversations/%FF%FE`)
  become INVALID_ARGUMENT naming the field where it can be found, never grpc's "Unexpected
  <class ...>" UNKNOWN;
- a NUL character in any string field, at any depth (path-derived names, titles, queries, map
  keys, Struct values), becomes INVALID_ARGUMENT naming the field: PostgreSQL text and jsonb
  cannot hold it;
- a Timestamp or Duration outside the range protobuf defines for it (gRPC callers can send any
  seconds; JSON callers cannot) becomes INVALID_ARGUMENT naming the field, instead of an
  overflow deep in a service.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor as _descriptor
from google.protobuf.message import Message

from services.common.errors import ServiceError, invalid_argument

_STRING = _descriptor.FieldDescriptor.TYPE_STRING
_MESSAGE = _descriptor.FieldDescriptor.TYPE_MESSAGE
_GROUP = _descriptor.FieldDescriptor.TYPE_GROUP


@dataclass(frozen=True)
class Undecodable:
    """What the checked deserializer hands on instead of raising: the RPC then fails with
    INVALID_ARGUMENT from inside the handler, where the error interceptor can say so cleanly."""

    error: ServiceError


def checked_deserializer(
    deserializer: Callable[[bytes], Any] | None, descriptor: _descriptor.Descriptor | None
) -> Callable[[bytes], Any] | None:
    """`deserializer` that returns Undecodable for bytes it cannot parse."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return Undecodable(undecodable_error(data, descriptor))

    return deserialize


def undecodable_error(data: bytes, descriptor: _descriptor.Descriptor | None) -> ServiceError:
    type_name = descriptor.full_name if descriptor is not None else "the request type"
    field = _invalid_utf8_field(data, descriptor) if descriptor is not None else None
    if field is not None:
        return invalid_argument(
            f"{field} is not valid UTF-8", [(field, "must be valid UTF-8 text")],
            reason="INVALID_UTF8",
        )
    return invalid_argument(
        f"the request body is not a valid {type_name} protobuf message",
        [("", "malformed protobuf encoding")], reason="MALFORMED_REQUEST",
    )


def check_request(request: Any, fields: bool = True) -> Any:
    """The request itself if it is acceptable; raises INVALID_ARGUMENT otherwise. `fields=False`
    skips the walk over string and Timestamp/Duration fields (decoding is still checked)."""
    if isinstance(request, Undecodable):
        raise request.error
    if fields and isinstance(request, Message):
        violations = field_problems(request)
        if violations:
            summary = "; ".join(f"{path}: {problem}" for path, problem in violations)
            reasons = {problem for _, problem in violations}
            reason = "NUL_CHARACTER" if reasons == {NUL_PROBLEM} else "INVALID_ARGUMENT"
            raise invalid_argument(summary, violations, reason=reason)
    return request


async def checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A client stream whose every message passes check_request."""
    async for request in requests:
        yield check_request(request)


NUL_PROBLEM = "must not contain NUL (\\u0000) characters"
# google/protobuf/timestamp.proto and duration.proto: the only values these types may hold.
_MIN_SECONDS, _MAX_SECONDS = -62135596800, 253402300799  # 0001-01-01 .. 9999-12-31T23:59:59Z
_MAX_DURATION_SECONDS = 315576000000


def nul_fields(message: Message) -> list[str]:
    """Paths (`conversation.title`, `labels['key']`, `items[2].text`) of strings holding NUL."""
    return [path for path, problem in field_problems(message) if problem == NUL_PROBLEM]


def field_problems(message: Message, prefix: str = "") -> list[tuple[str, str]]:
    """(path, problem) for every string holding NUL and every out-of-range Timestamp/Duration."""
    problem = _well_known_problem(message)
    if problem is not None:
        return [(prefix.rstrip("."), problem)]
    found: list[tuple[str, str]] = []
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                entry = f"{path}[{key!r}]" if isinstance(key, str) else f"{path}[{key}]"
                if isinstance(key, str) and "\x00" in key:
                    found.append((entry, NUL_PROBLEM))
                found.extend(_value_problems(value_field, item, entry))
        elif field.is_repeated:
            for index, item in enumerate(value):
                found.extend(_value_problems(field, item, f"{path}[{index}]"))
        else:
            found.extend(_value_problems(field, value, path))
    return found


def _value_problems(
    field: _descriptor.FieldDescriptor, value: Any, path: str
) -> list[tuple[str, str]]:
    if field.type == _STRING:
        return [(path, NUL_PROBLEM)] if "\x00" in value else []
    if field.type in (_MESSAGE, _GROUP):
        return field_problems(value, path + ".")
    return []


def _well_known_problem(message: Message) -> str | None:
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        seconds, nanos = message.seconds, message.nanos
        if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos <= 999_999_999):
            return "timestamp out of range (0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z)"
    elif name == "google.protobuf.Duration":
        seconds, nanos = message.seconds, message.nanos
        same_sign = seconds == 0 or nanos == 0 or (seconds > 0) == (nanos > 0)
        if not (abs(seconds) <= _MAX_DURATION_SECONDS and abs(nanos) <= 999_999_999 and same_sign):
            return "duration out of range (±315576000000 s)"
    return None


def _is_map(field: _descriptor.FieldDescriptor) -> bool:
    return (
        field.type == _MESSAGE and field.is_repeated and field.message_type.GetOptions().map_entry
    )


# --- naming the field of undecodable bytes ---------------------------------------------------


class _Malformed(Exception):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _invalid_utf8_field(
    data: bytes, descriptor: _descriptor.Descriptor, prefix: str = "", depth: int = 0
) -> str | None:
    """Walks the wire format to the first string field holding invalid UTF-8 (None if none is
    found, or the bytes are malformed in some other way)."""
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                _, pos = _varint(data, pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            elif wire_type == 2:
                length, pos = _varint(data, pos)
                chunk, pos = data[pos : pos + length], pos + length
                if pos > len(data):
                    return None
                field = descriptor.fields_by_number.get(number)
                if field is None:
                    continue
                path = f"{prefix}{field.name}"
                if field.type == _STRING:
                    try:
                        chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        return path
                elif field.type == _MESSAGE and depth < 32:
                    if field.message_type.GetOptions().map_entry:
                        path = f"{path}[]"
                    inner = _invalid_utf8_field(chunk, field.message_type, path + ".", depth + 1)
                    if inner is not None:
                        return inner.replace("[].key", "[key]").replace("[].value", "[]")
            else:
                return None
    except _Malformed:
        return None
    return None


def method_descriptor(method: str) -> _descriptor.MethodDescriptor | None:
    """The descriptor of `/pkg.Service/Method` from the default pool (None if not registered)."""
    from google.protobuf import descriptor_pool

    try:
        return descriptor_pool.Default().FindMethodByName(method.lstrip("/").replace("/", "."))
    except KeyError:
        return None


@functools.lru_cache(maxsize=1024)  # looked up on every call, the same few methods each time
def described_method(method: str) -> tuple[_descriptor.MethodDescriptor | None, bool]:
    """`method`'s descriptor and whether it is an idempotent read."""
    described = method_descriptor(method)
    return described, is_idempotent_read(described)


def is_idempotent_read(method: _descriptor.MethodDescriptor | None) -> bool:
    """Declared `idempotency_level = NO_SIDE_EFFECTS` in its .proto: safe to run twice."""
    from google.protobuf import descriptor_pb2

    return method is not None and (
        method.GetOptions().idempotency_level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
    )
