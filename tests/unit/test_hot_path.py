"""The per-call shortcuts of the request path give the answers of the long way round."""

from __future__ import annotations

import contextvars
import datetime as dt
import random

from google.protobuf import timestamp_pb2

from services.common.identity import Role, identity_from_metadata
from services.common.timestamps import to_timestamp


def _from_datetime(value: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def test_to_timestamp_matches_protobufs_own_conversion() -> None:
    draw = random.Random(15)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    for _ in range(2000):
        instant = epoch + dt.timedelta(seconds=draw.uniform(-62135596800, 253402300799),
                                       microseconds=draw.randint(0, 999_999))
        zone = dt.timezone(dt.timedelta(minutes=draw.randint(-720, 720)))
        # aware in UTC and in another zone, and naive (protobuf reads naive as UTC)
        for value in (instant, instant.astimezone(zone), instant.replace(tzinfo=None)):
            assert to_timestamp(value) == _from_datetime(value), value
    assert to_timestamp(None) is None
    assert to_timestamp(1.5) == timestamp_pb2.Timestamp(seconds=1, nanos=500_000_000)


def _headers(org: str, roles: str) -> tuple[tuple[str, str], ...]:
    return (("x-aimesh-org", org), ("x-aimesh-subject", "users/u_1"), ("x-aimesh-roles", roles))


def test_identity_read_twice_from_one_calls_metadata_is_the_same_answer() -> None:
    def one_call() -> None:
        metadata = _headers("o_a", "viewer")
        first = identity_from_metadata(metadata)
        assert first is not None and first.roles == frozenset({Role.VIEWER})
        assert identity_from_metadata(metadata) is first
        # Equal content in another object is read afresh; different content never borrows.
        other = _headers("o_b", "owner")
        second = identity_from_metadata(other)
        assert second is not None and (second.org, second.roles) == ("o_b",
                                                                     frozenset({Role.OWNER}))
        assert identity_from_metadata(metadata) == first
        # A dict the caller could still change is never remembered.
        mutable = dict(_headers("o_c", "member"))
        assert identity_from_metadata(mutable).org == "o_c"  # type: ignore[union-attr]
        mutable["x-aimesh-org"] = "o_d"
        assert identity_from_metadata(mutable).org == "o_d"  # type: ignore[union-attr]
        assert identity_from_metadata(()) is None

    contextvars.copy_context().run(one_call)
