#!/usr/bin/env python3
"""Local CA for aimesh: create it once, issue a certificate per mesh identity.

Issuing is deploy-time work (setup, the stack launcher, tests); services only load and verify
what is issued here (services/common/tls.py).

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
import datetime as dt
import ipaddress
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"

# Run as a script: re-exec under the project venv so cryptography and the services package import.
if __name__ == "__main__":
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and VENV_PY.exists():
        os.execv(str(VENV_PY), [str(VENV_PY), __file__, *sys.argv[1:]])
    sys.path.insert(0, str(ROOT))

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common import mesh_policy, tls

log = logging.getLogger("aimesh.ca")

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=30)
# Re-issue a leaf when less than this is left, so a running stack never meets an expiry.
RENEW_BEFORE = dt.timedelta(days=7)
CLOCK_SKEW = dt.timedelta(minutes=5)


def _write_private(path: Path, data: bytes) -> None:
    # Keys are created 0600 from the start, never world-readable for a moment.
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a leaf signs and agrees keys (ECDHE) for TLS."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def create_ca(
    common_name: str = "aimesh local CA",
    *,
    not_before: dt.datetime | None = None,
    validity: dt.timedelta = CA_VALIDITY,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed EC P-256 CA certificate that may sign leaves only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = (not_before or tls.utc_now()) - CLOCK_SKEW
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    identity: str,
    *,
    trust_domain: str = mesh_policy.LOCAL_TRUST_DOMAIN,
    not_before: dt.datetime | None = None,
    validity: dt.timedelta = LEAF_VALIDITY,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf for `identity`, usable as both server and client certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = (not_before or tls.utc_now()) - CLOCK_SKEW
    san = x509.SubjectAlternativeName(
        [
            x509.UniformResourceIdentifier(mesh_policy.spiffe_id(identity, trust_domain)),
            x509.DNSName("localhost"),
            x509.DNSName(tls.server_name(identity)),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aimesh"),
                    x509.NameAttribute(NameOID.COMMON_NAME, identity),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(start + validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(san, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    def spki(pub: Any) -> bytes:
        return bytes(
            pub.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    return spki(cert.public_key()) == spki(key.public_key())


@dataclass(frozen=True)
class EnsureResult:
    ca_created: bool
    issued: tuple[str, ...]
    kept: tuple[str, ...]


def ensure_certificates(
    certs_dir: Path = tls.DEFAULT_CERTS_DIR,
    identities: Iterable[str] = mesh_policy.IDENTITIES,
    *,
    trust_domain: str = mesh_policy.LOCAL_TRUST_DOMAIN,
    renew_before: dt.timedelta = RENEW_BEFORE,
) -> EnsureResult:
    """Create the CA if absent and (re)issue leaves that are missing, expiring or foreign.

    A CA that exists but is invalid (expired, unreadable) is not replaced silently: that
    would invalidate every running peer, so it raises and the operator removes it.
    """
    paths = tls.CertPaths(certs_dir)
    certs_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(certs_dir, 0o700)
    now = tls.utc_now()
    ca_created = False
    if paths.ca_cert.exists() or paths.ca_key.exists():
        ca_cert, ca_key = tls.load_cert(paths.ca_cert), tls.load_key(paths.ca_key)
        tls.check_validity(ca_cert, f"CA {paths.ca_cert}", now)
        if not _same_key(ca_cert, ca_key):
            raise tls.CertificateError(f"{paths.ca_key} does not belong to {paths.ca_cert}")
        if ca_cert.not_valid_after_utc - now < renew_before:
            log.warning(
                "local CA %s expires at %s; delete %s to rotate it",
                paths.ca_cert,
                ca_cert.not_valid_after_utc.isoformat(),
                certs_dir,
            )
    else:
        ca_cert, ca_key = create_ca()
        _write_private(paths.ca_key, key_pem(ca_key))
        _write_public(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
        ca_created = True
        log.info("created local CA %s", paths.ca_cert)
    issued: list[str] = []
    kept: list[str] = []
    for identity in identities:
        reason = _leaf_needs_issue(paths, ca_cert, identity, trust_domain, now, renew_before)
        if reason is None:
            kept.append(identity)
            continue
        cert, key = issue_leaf(ca_cert, ca_key, identity, trust_domain=trust_domain)
        _write_private(paths.key(identity), key_pem(key))
        _write_public(paths.cert(identity), cert.public_bytes(serialization.Encoding.PEM))
        log.info("issued certificate for %s (%s)", identity, reason)
        issued.append(identity)
    return EnsureResult(ca_created, tuple(issued), tuple(kept))


def _leaf_needs_issue(
    paths: tls.CertPaths,
    ca_cert: x509.Certificate,
    identity: str,
    trust_domain: str,
    now: dt.datetime,
    renew_before: dt.timedelta,
) -> str | None:
    try:
        cert = tls.load_cert(paths.cert(identity))
        key = tls.load_key(paths.key(identity))
        tls.verify_leaf(cert, ca_cert, identity, trust_domain=trust_domain, now=now)
    except tls.CertificateError as exc:
        return str(exc)
    if not _same_key(cert, key):
        return "key does not match certificate"
    if cert.not_valid_after_utc - now < renew_before:
        return f"expires at {cert.not_valid_after_utc.isoformat()}"
    return None


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
        result = ensure_certificates(args.dir, identities)
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
