"""Fixtures for mesh tests: throwaway CAs and certificates in a temp directory."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from scripts import ca
from services.common import tls


def write_leaf(certs_dir: Path, identity: str, cert: object, key: object) -> None:
    paths = tls.CertPaths(certs_dir)
    paths.cert(identity).write_bytes(cert.public_bytes(serialization.Encoding.PEM))  # type: ignore[attr-defined]
    paths.key(identity).write_bytes(ca.key_pem(key))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local CA and every identity, as scripts/ca.py makes them."""
    d = tmp_path_factory.mktemp("certs")
    ca.ensure_certificates(d)
    return d


@pytest.fixture(scope="session")
def foreign_certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA issuing the same identities: valid-looking, but not ours."""
    d = tmp_path_factory.mktemp("foreign")
    ca.ensure_certificates(d)
    return d


@pytest.fixture(scope="session")
def expired_certs_dir(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Path:
    """Our CA's certificate file, plus a leaf for conversation that expired yesterday."""
    d = tmp_path_factory.mktemp("expired")
    paths = tls.CertPaths(certs_dir)
    ca_cert = tls.load_cert(paths.ca_cert)
    ca_key = tls.load_key(paths.ca_key)
    (d / "ca.pem").write_bytes(paths.ca_cert.read_bytes())
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    cert, key = ca.issue_leaf(
        ca_cert, ca_key, "conversation", not_before=past, validity=dt.timedelta(days=1)
    )
    write_leaf(d, "conversation", cert, key)
    return d
