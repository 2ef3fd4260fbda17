"""The usage ledger's rules: record validation, CSV rendering (no gRPC types)."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Iterator
from typing import Any

from aimesh.usage.v1 import usage_pb2

from services.common.errors import FieldViolations
from services.common.names import resource
from services.usage.store import NewRecord, RecordFilter, Row

ORGANIZATION = resource("auth.aimesh.dev/Organization")
API_KEY = resource("auth.aimesh.dev/ApiKey")
USER = resource("auth.aimesh.dev/User")
USAGE_RECORD = resource("usage.aimesh.dev/UsageRecord")
MAX_RECORDS = 1000
MAX_FUTURE = dt.timedelta(minutes=5)
MAX_AGE = dt.timedelta(days=35)
MAX_RANGE = dt.timedelta(days=366)
MAX_TEXT = 256
CSV_HEADER = ["occur_time", "resource_type", "model", "quantity_micros", "api_key", "user",
              "request_id", "name"]
CSV_CHUNK_BYTES = 64 * 1024
VALID_RESOURCE_TYPES = frozenset(
    v.number for v in usage_pb2.ResourceType.DESCRIPTOR.values if v.number != 0
)


def validate_records(
    records: Iterable[usage_pb2.UsageRecord], now: dt.datetime
) -> list[NewRecord]:
    """Every problem of every record at once (fields named records[i].x), or the rows."""
    v = FieldViolations()
    out: list[NewRecord] = []
    items = list(records)
    if not items:
        v.add("records", "at least one record is required")
    if len(items) > MAX_RECORDS:
        v.add("records", f"at most {MAX_RECORDS} records per call")
        v.raise_if_any()
    for i, r in enumerate(items):
        at = f"records[{i}]"
        org = ORGANIZATION.id(r.organization, f"{at}.organization", v)
        v.check(
            0 < len(r.request_id) <= 200, f"{at}.request_id", "required, at most 200 characters"
        )
        v.check(
            r.resource_type in VALID_RESOURCE_TYPES,
            f"{at}.resource_type",
            "must be a known resource type (not UNSPECIFIED)",
        )
        v.check(r.quantity_micros >= 0, f"{at}.quantity_micros", "must not be negative")
        check_api_key(r.api_key, f"{at}.api_key", v, org)
        if r.user:
            USER.parse(r.user, f"{at}.user", v)
        for field_name in ("model", "source", "user"):
            v.check(
                len(getattr(r, field_name)) <= MAX_TEXT,
                f"{at}.{field_name}",
                f"at most {MAX_TEXT} characters",
            )
        occur = None
        if not r.HasField("occur_time"):
            v.add(f"{at}.occur_time", "required")
        else:
            occur = r.occur_time.ToDatetime(tzinfo=dt.UTC)
            v.check(
                occur <= now + MAX_FUTURE, f"{at}.occur_time", "more than 5 minutes in the future"
            )
            v.check(occur >= now - MAX_AGE, f"{at}.occur_time", "older than 35 days")
        if org and occur is not None:
            out.append(
                NewRecord(
                    org,
                    r.request_id,
                    r.api_key,
                    r.user,
                    r.resource_type,
                    r.model,
                    r.quantity_micros,
                    occur,
                    r.source,
                )
            )
    v.raise_if_any()
    return out


def check_api_key(value: str, field: str, v: FieldViolations, org: str) -> None:
    """An optional API-key name, which must belong to `org` (when known)."""
    if value:
        key_org = API_KEY.parse(value, field, v)[0]
        if key_org and org and key_org != org:
            v.add(field, "belongs to another organization")


def time_range(
    start: Any, end: Any, v: FieldViolations, required: bool
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """Validate a [start, end) pair of protobuf Timestamps (present-or-not aware)."""
    s = start.ToDatetime(tzinfo=dt.UTC) if start is not None else None
    e = end.ToDatetime(tzinfo=dt.UTC) if end is not None else None
    if required:
        v.check(s is not None, "start_time", "required")
        v.check(e is not None, "end_time", "required")
    if s is not None and e is not None and v.check(e > s, "end_time", "must be after start_time"):
        v.check(e - s <= MAX_RANGE, "end_time", "range longer than 366 days")
    return s, e


GROUPS = {
    usage_pb2.GetUsageSummaryRequest.GROUP_BY_RESOURCE_TYPE: "resource_type",
    usage_pb2.GetUsageSummaryRequest.GROUP_BY_MODEL: "model",
    usage_pb2.GetUsageSummaryRequest.GROUP_BY_DAY: "day",
    usage_pb2.GetUsageSummaryRequest.GROUP_BY_API_KEY: "api_key",
}


def summary_query(
    org: str, request: usage_pb2.GetUsageSummaryRequest
) -> tuple[dt.datetime, dt.datetime, list[str]]:
    """A summary's [start, end) and group-by columns, after checking every field."""
    v = FieldViolations()
    start, end = time_range(
        request.start_time if request.HasField("start_time") else None,
        request.end_time if request.HasField("end_time") else None,
        v,
        required=True,
    )
    groups: list[str] = []
    for i, g in enumerate(request.group_by):
        if g not in GROUPS:
            v.add(f"group_by[{i}]", "must be a known dimension (not UNSPECIFIED)")
        elif GROUPS[g] in groups:
            v.add(f"group_by[{i}]", "repeated dimension")
        else:
            groups.append(GROUPS[g])
    for i, t in enumerate(request.resource_types):
        v.check(t in VALID_RESOURCE_TYPES, f"resource_types[{i}]", "unknown resource type")
    check_api_key(request.api_key, "api_key", v, org)
    v.raise_if_any()
    assert start is not None and end is not None
    return start, end, groups


def record_filter(org: str, request: Any, required: bool) -> RecordFilter:
    """The filter of a List/ExportUsageRecords request (time range required for exports)."""
    v = FieldViolations()
    start, end = time_range(
        request.start_time if request.HasField("start_time") else None,
        request.end_time if request.HasField("end_time") else None,
        v,
        required=required,
    )
    rtype = request.resource_type
    v.check(rtype == 0 or rtype in VALID_RESOURCE_TYPES, "resource_type", "unknown resource type")
    check_api_key(request.api_key, "api_key", v, org)
    v.raise_if_any()
    return RecordFilter(
        org=org,
        start=start,
        end=end,
        resource_type=rtype,
        model=request.model,
        api_key=request.api_key,
        user=getattr(request, "user", ""),
    )


def duplicates(records: list[NewRecord], inserted: set[tuple[str, str]]) -> list[str]:
    """Request ids of `records` the ledger already held (a second copy in one batch counts)."""
    fresh = set(inserted)
    repeated = []
    for r in records:
        key = (r.org, r.request_id)
        if key in fresh:
            fresh.discard(key)
        else:
            repeated.append(r.request_id)
    return repeated


def record_name(row: Row) -> str:
    return USAGE_RECORD.format(row["id"])


class CsvChunks:
    """RFC 4180 CSV (CRLF), header first, chunks of at most 64 KiB ending on line boundaries."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")
        self._pending = self._line(CSV_HEADER)

    def _line(self, values: list[Any]) -> bytes:
        self._buffer.seek(0)
        self._buffer.truncate()
        self._writer.writerow(values)
        return self._buffer.getvalue().encode()

    def feed(self, rows: Iterable[Row]) -> Iterator[bytes]:
        """Full chunks made ready by these rows."""
        for row in rows:
            line = self._line(
                [
                    row["occur_time"].astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
                    usage_pb2.ResourceType.Name(row["resource_type"]),
                    row["model"],
                    row["quantity_micros"],
                    row["api_key"],
                    row["user_name"],
                    row["request_id"],
                    record_name(row),
                ]
            )
            if len(self._pending) + len(line) > CSV_CHUNK_BYTES:
                yield self._pending
                self._pending = b""
            self._pending += line

    def finish(self) -> bytes:
        return self._pending
