"""Resource names (AIP-122), parsed and formatted from the `google.api.resource` patterns the
.proto files declare — the contract is the only place a pattern is written down.

    DOCUMENT = names.resource("knowledge.aimesh.dev/Document")   # "documents/{document}"
    document_id = DOCUMENT.id(request.name, "name")              # or INVALID_ARGUMENT on "name"
    DOCUMENT.format(document_id)                                 # "documents/<id>"

A malformed name is always the same error: INVALID_ARGUMENT with a field violation naming the
field and the expected pattern (reason INVALID_RESOURCE_NAME).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from functools import cache

from google.api import resource_pb2
from google.protobuf import descriptor_pb2

from services.common.config import REPO_ROOT
from services.common.errors import FieldViolations, ServiceError, invalid_argument

DESCRIPTOR_SET = REPO_ROOT / "gen" / "descriptor.binpb"
# One path segment's id: letters, digits, `-`, `_`, `.`, `~` (AIP-122's unreserved characters),
# starting with a letter or digit, at most 128 characters.
ID = r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}"
_VARIABLE = re.compile(r"\{([a-z_]+)\}")
REASON = "INVALID_RESOURCE_NAME"


@dataclass(frozen=True)
class ResourceName:
    """One resource type's name pattern, e.g. organizations/{organization}/apiKeys/{api_key}."""

    type: str
    pattern: str

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(_VARIABLE.findall(self.pattern))

    @property
    def _regex(self) -> re.Pattern[str]:
        return _compiled(self.pattern)

    def format(self, *ids: object) -> str:
        """The name with `ids` in pattern order: ORGANIZATION.format("o_1") -> organizations/o_1."""
        if len(ids) != len(self.variables):
            raise TypeError(f"{self.pattern} takes {len(self.variables)} ids, got {len(ids)}")
        parts = iter(str(i) for i in ids)
        return _VARIABLE.sub(lambda _: next(parts), self.pattern)

    def matches(self, name: str) -> bool:
        return self._regex.fullmatch(name) is not None

    def error(self, name: str, field: str) -> ServiceError:
        return invalid_argument(
            f"{field} must be {self.pattern}, got {name[:200]!r}",
            [(field, f"must be {self.pattern}")],
            reason=REASON,
        )

    def parse(self, name: str, field: str, v: FieldViolations | None = None) -> tuple[str, ...]:
        """The ids in `name`, in pattern order. Malformed: raises, or with `v` records the
        violation and returns empty strings (so one error can name every bad field)."""
        match = self._regex.fullmatch(name)
        if match is None:
            if v is None:
                raise self.error(name, field)
            v.add(field, f"must be {self.pattern}")
            return tuple("" for _ in self.variables)
        return match.groups()

    def id(self, name: str, field: str, v: FieldViolations | None = None) -> str:
        """The last id of `name` (the resource's own id)."""
        return self.parse(name, field, v)[-1]

    def uuid(self, name: str, field: str, v: FieldViolations | None = None) -> uuid.UUID | None:
        """The resource's own id for types whose ids are UUIDs (None after recording into `v`)."""
        raw = self.id(name, field, v)
        try:
            return uuid.UUID(raw)
        except ValueError:
            if v is None:
                raise self.error(name, field) from None
            if raw:
                v.add(field, f"must be {self.pattern} with a UUID")
            return None


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    pieces = _VARIABLE.split(pattern)  # literal, variable, literal, ...
    return re.compile("".join(f"({ID})" if i % 2 else re.escape(p) for i, p in enumerate(pieces)))


@cache
def _patterns() -> dict[str, str]:
    """Resource type -> pattern, for every message of ours with a google.api.resource option."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    found: dict[str, str] = {}

    def visit(messages: list[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            if message.options.HasExtension(resource_pb2.resource):
                option = message.options.Extensions[resource_pb2.resource]
                found[option.type] = option.pattern[0]
            visit(list(message.nested_type))

    for file in files.file:
        if file.package.startswith("aimesh."):
            visit(list(file.message_type))
    return found


def resource(type_name: str) -> ResourceName:
    """The name pattern of a resource type declared in proto/, e.g. "auth.aimesh.dev/ApiKey"."""
    patterns = _patterns()
    if type_name not in patterns:
        raise KeyError(f"no google.api.resource {type_name!r} in {DESCRIPTOR_SET}")
    return ResourceName(type_name, patterns[type_name])


def resource_types() -> dict[str, str]:
    """Every declared resource type and its pattern (for tests and docs)."""
    return dict(_patterns())
