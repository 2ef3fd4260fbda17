"""datetime ⇄ google.protobuf.Timestamp for the messages every service builds from its rows."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2


def to_timestamp(value: dt.datetime | float | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp for an aware datetime or epoch seconds; None stays None (field left unset)."""
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    if isinstance(value, dt.datetime):
        stamp.FromDatetime(value)
    else:
        stamp.FromNanoseconds(int(value * 1e9))
    return stamp
