"""Every service that meters usage creates its outbox by a real migration of its own (not at
runtime), and all of them create the same table: services/common/usage_client.py writes and
drains one shape."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
METERING_SERVICES = ("knowledge", "orchestrator", "speech")


def _outbox_migration(service: str) -> str:
    found = sorted((ROOT / "services" / service / "migrations").glob("*_usage_outbox.sql"))
    assert len(found) == 1, (
        f"{service}: expected one NNNN_usage_outbox.sql migration, found {found}"
    )
    # The yoyo dependency line differs per service (it names that service's previous migration).
    return re.sub(r"^-- depends:.*\n", "", found[0].read_text())


def test_each_metering_service_migrates_the_same_outbox() -> None:
    bodies = {service: _outbox_migration(service) for service in METERING_SERVICES}
    assert "CREATE TABLE IF NOT EXISTS usage_outbox" in bodies["orchestrator"]
    assert len(set(bodies.values())) == 1, "the outbox migrations differ"


def test_usage_client_creates_no_tables() -> None:
    source = (ROOT / "services" / "common" / "usage_client.py").read_text()
    assert "CREATE TABLE" not in source.upper()
