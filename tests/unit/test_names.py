"""Resource names come from the google.api.resource patterns in the descriptors (services/common/
names.py): every declared pattern round-trips, a malformed name is one INVALID_ARGUMENT naming the
field, and service code formats or parses names only through the module."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import grpc
import pytest

from services.common import names
from services.common.errors import FieldViolations, ServiceError

SERVICES = Path(__file__).resolve().parents[2] / "services"
# Not converted yet, each for a reason: identity -> record names move with the metering rework
# (issue 18 item 6); auth/domain.py and check.py are being split by concern (issue 18 item 3);
# identity.py tolerates an `organizations/` prefix on the x-aimesh-org header.
NOT_YET = {"services/common/usage_client.py", "services/orchestrator/metering.py", "services/auth/domain.py",
           "services/auth/check.py", "services/common/identity.py"}


def test_every_declared_resource_round_trips() -> None:
    types = names.resource_types()
    assert {"auth.aimesh.dev/ApiKey", "knowledge.aimesh.dev/Document", "usage.aimesh.dev/Budget"} <= set(types)
    for type_name, pattern in types.items():
        kind = names.resource(type_name)
        assert kind.pattern == pattern
        ids = [f"id-{i}_x.{i}" for i in range(len(kind.variables))]
        name = kind.format(*ids)
        assert kind.matches(name) and kind.parse(name, "name") == tuple(ids)


@pytest.mark.parametrize("bad", ["", "documents", "documents/", "documents/a/b", "Documents/a", "documents/-a",
                                 "documents/a b", "documents/a\x00", "x" * 300, "documents/" + "a" * 129])
def test_malformed_name_is_invalid_argument_naming_the_field(bad: str) -> None:
    kind = names.resource("knowledge.aimesh.dev/Document")
    with pytest.raises(ServiceError) as caught:
        kind.id(bad, "documents[3]")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == names.REASON
    assert caught.value.violations == (("documents[3]", "must be documents/{document}"),)
    v = FieldViolations()
    assert kind.id(bad, "name", v) == "" and v.items == [("name", "must be documents/{document}")]


def test_uuid_ids() -> None:
    budget = names.resource("usage.aimesh.dev/Budget")
    value = uuid.uuid4()
    assert budget.uuid(budget.format(value), "name") == value
    with pytest.raises(ServiceError):
        budget.uuid("budgets/not-a-uuid", "name")
    v = FieldViolations()
    assert budget.uuid("budgets/nope", "name", v) is None and v.items


def test_multi_segment_pattern() -> None:
    key = names.resource("auth.aimesh.dev/ApiKey")
    assert key.parse("organizations/o_1/apiKeys/k_2", "name") == ("o_1", "k_2")
    assert not key.matches("organizations/o_1/memberships/k_2")
    with pytest.raises(TypeError):
        key.format("only-one")


def test_services_do_not_hand_write_resource_names() -> None:
    """No f-string builds `<collection>/{...}` and no prefix test parses one outside names.py."""
    collections = {p.split("/")[0] for p in names.resource_types().values() if "/" in p}
    any_collection = "|".join(collections)
    built = re.compile(r"""f["'](?:""" + any_collection + r""")/\{""")
    parsed_collection = "|".join(collections - {"users"})
    parsed = re.compile(r"""(?:startswith|removeprefix)\(["'](?:""" + parsed_collection + r""")/["']\)""")
    offenders = []
    for path in SERVICES.rglob("*.py"):
        relative = str(path.relative_to(SERVICES.parent))
        if relative in NOT_YET:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if built.search(line) or parsed.search(line):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert not offenders, "format/parse names with services.common.names:\n" + "\n".join(offenders)
