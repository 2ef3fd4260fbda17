#!/usr/bin/env python3
"""Local CA for aimesh: create it once, issue a certificate per mesh identity.

Usage:
    scripts/ca.py                     ensure var/certs/ (idempotent; prints what it did)
    scripts/ca.py --dir DIR           another directory (tests, a second checkout)
    scripts/ca.py --check             exit 1 unless every identity has a valid certificate
    scripts/ca.py --identity NAME     only these identities (repeatable)

Never overwrites a valid CA; re-issues leaves that are missing, expire within 7 days, or
were not signed by the current CA. Requires the `cryptography` package (in the venv).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"

# Re-exec under the project venv so cryptography and the services package import.
if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and VENV_PY.exists():
    os.execv(str(VENV_PY), [str(VENV_PY), __file__, *sys.argv[1:]])

sys.path.insert(0, str(ROOT))

from services.common import mesh_policy, tls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dir",
        type=Path,
        default=tls.DEFAULT_CERTS_DIR,
        help=f"certificate directory (default {tls.DEFAULT_CERTS_DIR})",
    )
    parser.add_argument(
        "--identity",
        action="append",
        choices=mesh_policy.IDENTITIES,
        help="only this identity (repeatable); default: all",
    )
    parser.add_argument(
        "--check", action="store_true", help="verify only, change nothing; exit 1 on any problem"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    identities = tuple(args.identity or mesh_policy.IDENTITIES)
    if args.check:
        bad = 0
        for identity in identities:
            try:
                tls.load_identity(identity, args.dir)
            except tls.CertificateError as exc:
                print(f"{identity}: {exc}", file=sys.stderr)
                bad += 1
        return 1 if bad else 0
    try:
        result = tls.ensure_certificates(args.dir, identities)
    except tls.CertificateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot write certificates to {args.dir}: {exc}", file=sys.stderr)
        return 1
    print(
        f"certs in {args.dir}: CA {'created' if result.ca_created else 'kept'}; "
        f"issued {', '.join(result.issued) or 'none'}; kept {', '.join(result.kept) or 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
