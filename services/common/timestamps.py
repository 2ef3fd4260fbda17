"""datetime ⇄ google.protobuf.Timestamp for the messages every service builds from its rows, and
the calendar-month periods budgets and invoices share."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NAIVE_EPOCH = _EPOCH.replace(tzinfo=None)


def to_timestamp(value: dt.datetime | float | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp for an aware datetime or epoch seconds; None stays None (field left unset)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        # What Timestamp.FromDatetime computes (naive means UTC), by datetime arithmetic in C
        # instead of its utctimetuple() and timegm(): every row's times pass here.
        since = value - (_EPOCH if value.tzinfo is not None else _NAIVE_EPOCH)
        return timestamp_pb2.Timestamp(seconds=since.days * 86400 + since.seconds,
                                       nanos=since.microseconds * 1000)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(value * 1e9))
    return stamp


def month_start(t: dt.datetime) -> dt.datetime:
    """The first instant (UTC) of the calendar month containing `t`."""
    t = t.astimezone(dt.UTC)
    return dt.datetime(t.year, t.month, 1, tzinfo=dt.UTC)


def next_month(start: dt.datetime) -> dt.datetime:
    """The first instant of the month after the one starting at `start`."""
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
