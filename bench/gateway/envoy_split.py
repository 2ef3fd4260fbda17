"""Envoy's own view of the latency phase, from its access log (microsecond fields written by
scripts/gateway.py's access logger): how long each kind of request spent in Envoy's filters before
the upstream request left (ext_authz -> Auth's Check included where it runs), in the upstream
exchange, and in the whole downstream exchange. The client-side p50s include the load
generator's own per-call cost, which differs between the gRPC paths (grpc.aio) and the JSON path
(a raw HTTP/1.1 socket); this split shows what the gateway itself adds to each, independent of
the client."""

from __future__ import annotations

import json
import statistics
from datetime import datetime
from pathlib import Path

FIELDS = ("filters_us", "upstream_us", "duration_us")
Split = dict[str, dict[str, float]]  # request kind -> field -> p50 microseconds
JSON_KEY = "JSON + key"  # the kind of JSON/HTTP requests (the transcoded routes take API keys)


def _kind(entry: dict[str, object]) -> str | None:
    path = str(entry.get("path") or "")
    if str(entry.get("status")) != "200" or path.startswith("/.well-known"):
        return None
    if path.startswith("/aimesh."):
        keyed = any(entry.get(field) not in (None, "", "-")
                    for field in ("key_id", "key_prefix")) or str(
            entry.get("bearer_prefix") or "").lower().startswith("bearer amk_")
        return "gRPC + key" if keyed else "gRPC + JWT"
    return JSON_KEY


def envoy_split(log_path: Path, start: float, end: float,
                fields: tuple[str, ...] = FIELDS) -> Split:
    """p50 of each of `fields` per request kind, over requests that began in [start, end]
    (epoch s)."""
    values: dict[str, dict[str, list[int]]] = {}
    if not log_path.exists():
        return {}
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
            began = datetime.fromisoformat(str(entry["time"]).replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError):
            continue
        kind = _kind(entry)
        if kind is None or not start <= began <= end:
            continue
        per_kind = values.setdefault(kind, {f: [] for f in fields})
        for field in fields:
            if isinstance(entry.get(field), int):
                per_kind[field].append(entry[field])
    return {kind: {f: statistics.median(v) for f, v in fields.items() if v}
            for kind, fields in values.items()}


def print_split(mode: str, split: Split) -> None:
    if not split:
        print(f"[{mode}] Envoy access log: no latency-phase entries found")
        return
    print(f"[{mode}] Envoy's own time, latency phase p50 (access log, us): "
          "filters = first byte in to upstream request out (ext_authz Check included where "
          "it runs)")
    print(f"  {'request':12} {'filters':>9} {'upstream':>9} {'in Envoy':>9}")
    for kind in sorted(split):
        row = split[kind]
        print(f"  {kind:12} " + " ".join(f"{row.get(f, float('nan')):9.0f}" for f in FIELDS))
