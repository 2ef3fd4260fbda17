"""Apply every service's schema migrations (`python -m scripts.migrate`). Services also do
this at start; running it from setup means a broken migration fails early and loudly."""

from __future__ import annotations

import sys

from services.common.config import REPO_ROOT, SERVICES, ConfigError, Settings
from services.common.db import StartupError, apply_migrations


def main() -> int:
    try:
        settings = Settings.from_env()
        for service in SERVICES:
            apply_migrations(
                settings.database_url, service, REPO_ROOT / "services" / service / "migrations"
            )
    except (ConfigError, StartupError) as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
