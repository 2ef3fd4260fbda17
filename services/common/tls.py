"""Local mutual TLS: a CA per checkout, one certificate per mesh identity, peer authorization.

On one machine this gives the guarantees Istio gives in Kubernetes: every service listens
with mTLS and verifies its callers against the local CA, and `PeerAuthorizationInterceptor`
checks the caller's SPIFFE identity against `services.common.mesh_policy` (the same graph
Istio's AuthorizationPolicies are rendered from).

Files under `certs_dir` (default var/certs, gitignored):
    ca.pem, ca-key.pem             the CA (EC P-256), never overwritten while valid
    <identity>.pem, <identity>-key.pem
                                   leaf for server and client use; SAN = URI spiffe id,
                                   DNS localhost and <identity>.aimesh.local, IP 127.0.0.1/::1
`ensure_certificates` is idempotent: it issues what is missing, expiring, or not signed by
the current CA, and leaves everything else alone.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common import mesh_policy
from services.common.config import REPO_ROOT
from services.common.handlers import before

log = logging.getLogger("aimesh.tls")

DEFAULT_CERTS_DIR = REPO_ROOT / "var" / "certs"
CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=30)
# Re-issue a leaf when less than this is left, so a running stack never meets an expiry.
RENEW_BEFORE = dt.timedelta(days=7)
CLOCK_SKEW = dt.timedelta(minutes=5)
LOCAL_DNS_SUFFIX = "aimesh.local"


class CertificateError(Exception):
    """A certificate is missing, expired, not ours, or not for the expected identity."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class CertPaths:
    certs_dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.certs_dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.certs_dir / "ca-key.pem"

    def cert(self, identity: str) -> Path:
        return self.certs_dir / f"{identity}.pem"

    def key(self, identity: str) -> Path:
        return self.certs_dir / f"{identity}-key.pem"


def server_name(identity: str) -> str:
    """The DNS name a client checks on the server's certificate (see `channel_options`)."""
    return f"{identity}.{LOCAL_DNS_SUFFIX}"


# --------------------------------------------------------------------------------------------
# Issuing


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


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_ca(
    common_name: str = "aimesh local CA",
    *,
    not_before: dt.datetime | None = None,
    validity: dt.timedelta = CA_VALIDITY,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed EC P-256 CA certificate that may sign leaves only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = (not_before or _now()) - CLOCK_SKEW
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
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
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
    start = (not_before or _now()) - CLOCK_SKEW
    san = x509.SubjectAlternativeName(
        [
            x509.UniformResourceIdentifier(mesh_policy.spiffe_id(identity, trust_domain)),
            x509.DNSName("localhost"),
            x509.DNSName(server_name(identity)),
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
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
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


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise CertificateError(f"{path}: missing (run scripts/ca.py)") from None
    except ValueError as exc:
        raise CertificateError(f"{path}: not a PEM certificate ({exc})") from None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise CertificateError(f"{path}: missing (run scripts/ca.py)") from None
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{path}: expected an EC private key")
    return key


def _check_validity(cert: x509.Certificate, what: str, now: dt.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            f"{what}: not valid before {cert.not_valid_before_utc.isoformat()} (clock skew?)"
        )
    if now >= cert.not_valid_after_utc:
        raise CertificateError(
            f"{what}: expired at {cert.not_valid_after_utc.isoformat()} (run scripts/ca.py)"
        )


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    def spki(pub: Any) -> bytes:
        return bytes(
            pub.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    return spki(cert.public_key()) == spki(key.public_key())


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def verify_leaf(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    identity: str,
    *,
    trust_domain: str = mesh_policy.LOCAL_TRUST_DOMAIN,
    now: dt.datetime | None = None,
) -> None:
    """Raise CertificateError saying exactly why `cert` is not a valid leaf for `identity`."""
    now = now or _now()
    what = f"certificate for {identity!r}"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError(
            f"{what}: not issued by the local CA {ca_cert.subject.rfc4514_string()!r} "
            f"(issuer {cert.issuer.rfc4514_string()!r})"
        ) from None
    _check_validity(cert, what, now)
    expected = mesh_policy.spiffe_id(identity, trust_domain)
    if expected not in _uris(cert):
        raise CertificateError(f"{what}: SAN URI is {_uris(cert)}, expected {expected}")


@dataclass(frozen=True)
class EnsureResult:
    ca_created: bool
    issued: tuple[str, ...]
    kept: tuple[str, ...]


def ensure_certificates(
    certs_dir: Path = DEFAULT_CERTS_DIR,
    identities: Iterable[str] = mesh_policy.IDENTITIES,
    *,
    trust_domain: str = mesh_policy.LOCAL_TRUST_DOMAIN,
    renew_before: dt.timedelta = RENEW_BEFORE,
) -> EnsureResult:
    """Create the CA if absent and (re)issue leaves that are missing, expiring or foreign.

    A CA that exists but is invalid (expired, unreadable) is not replaced silently: that
    would invalidate every running peer, so it raises and the operator removes it.
    """
    paths = CertPaths(certs_dir)
    certs_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(certs_dir, 0o700)
    now = _now()
    ca_created = False
    if paths.ca_cert.exists() or paths.ca_key.exists():
        ca_cert, ca_key = _load_cert(paths.ca_cert), _load_key(paths.ca_key)
        _check_validity(ca_cert, f"CA {paths.ca_cert}", now)
        if not _same_key(ca_cert, ca_key):
            raise CertificateError(f"{paths.ca_key} does not belong to {paths.ca_cert}")
        if ca_cert.not_valid_after_utc - now < renew_before:
            log.warning(
                "local CA %s expires at %s; delete %s to rotate it",
                paths.ca_cert,
                ca_cert.not_valid_after_utc.isoformat(),
                certs_dir,
            )
    else:
        ca_cert, ca_key = create_ca()
        _write_private(paths.ca_key, _key_pem(ca_key))
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
        _write_private(paths.key(identity), _key_pem(key))
        _write_public(paths.cert(identity), cert.public_bytes(serialization.Encoding.PEM))
        log.info("issued certificate for %s (%s)", identity, reason)
        issued.append(identity)
    return EnsureResult(ca_created, tuple(issued), tuple(kept))


def _leaf_needs_issue(
    paths: CertPaths,
    ca_cert: x509.Certificate,
    identity: str,
    trust_domain: str,
    now: dt.datetime,
    renew_before: dt.timedelta,
) -> str | None:
    try:
        cert = _load_cert(paths.cert(identity))
        key = _load_key(paths.key(identity))
        verify_leaf(cert, ca_cert, identity, trust_domain=trust_domain, now=now)
    except CertificateError as exc:
        return str(exc)
    if not _same_key(cert, key):
        return "key does not match certificate"
    if cert.not_valid_after_utc - now < renew_before:
        return f"expires at {cert.not_valid_after_utc.isoformat()}"
    return None


# --------------------------------------------------------------------------------------------
# gRPC credentials


@dataclass(frozen=True)
class IdentityMaterial:
    identity: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def load_identity(
    identity: str,
    certs_dir: Path = DEFAULT_CERTS_DIR,
    *,
    trust_domain: str = mesh_policy.LOCAL_TRUST_DOMAIN,
) -> IdentityMaterial:
    """PEM material for `identity`, verified first so a bad file fails loudly here rather
    than as an opaque handshake error at the peer."""
    paths = CertPaths(certs_dir)
    try:
        ca_cert = _load_cert(paths.ca_cert)
        _check_validity(ca_cert, f"CA {paths.ca_cert}", _now())
        verify_leaf(_load_cert(paths.cert(identity)), ca_cert, identity, trust_domain=trust_domain)
        _load_key(paths.key(identity))
    except CertificateError as exc:
        log.error("refusing to use TLS material for %s: %s", identity, exc)
        raise
    return IdentityMaterial(
        identity,
        paths.ca_cert.read_bytes(),
        paths.cert(identity).read_bytes(),
        paths.key(identity).read_bytes(),
    )


def server_credentials(material: IdentityMaterial) -> grpc.ServerCredentials:
    """mTLS server credentials: callers must present a certificate from the local CA."""
    return grpc.ssl_server_credentials(
        [(material.key_pem, material.cert_pem)],
        root_certificates=material.ca_pem,
        require_client_auth=True,
    )


def channel_credentials(material: IdentityMaterial) -> grpc.ChannelCredentials:
    """mTLS client credentials presenting `material`'s certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca_pem,
        private_key=material.key_pem,
        certificate_chain=material.cert_pem,
    )


def channel_options(callee: str) -> list[tuple[str, str]]:
    """Make the client check that the server is `callee` (its DNS SAN), not merely any
    certificate of the local CA: every leaf also carries "localhost"."""
    return [("grpc.ssl_target_name_override", server_name(callee))]


# --------------------------------------------------------------------------------------------
# Peer identity and authorization


def peer_identity(
    context: grpc.aio.ServicerContext, trust_domain: str = mesh_policy.LOCAL_TRUST_DOMAIN
) -> str | None:
    """The caller's mesh identity from its verified certificate's SAN URI, or None."""
    auth = context.auth_context() or {}
    for uri in _peer_uris(auth):
        identity = mesh_policy.identity_from_spiffe(uri, trust_domain)
        if identity is not None:
            return identity
    return None


def _peer_uris(auth: dict[str, list[bytes]]) -> list[str]:
    uris: list[str] = []
    for key in ("peer_spiffe_id", "x509_subject_alternative_name", "x509_uri"):
        for value in auth.get(key, []):
            text = value.decode("utf-8", "replace")
            if text.startswith("spiffe://") and text not in uris:
                uris.append(text)
    return uris


def peer_description(context: grpc.aio.ServicerContext) -> str:
    """Who is on the other end, for log lines: address, SAN URIs, subject CN."""
    auth = context.auth_context() or {}
    cn = b",".join(auth.get("x509_common_name", [])).decode("utf-8", "replace")
    return f"peer={context.peer()} uris={_peer_uris(auth)} cn={cn or '-'}"


def _split_unquoted(text: str, sep: str) -> list[str]:
    """Split on `sep` outside double quotes (XFCC quotes values that contain , ; =)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def xfcc_identity(header: str, trust_domain: str = mesh_policy.K8S_TRUST_DOMAIN) -> str | None:
    """The client identity from an Istio sidecar's x-forwarded-client-cert header.

    Only trustworthy behind a sidecar that sanitizes or appends XFCC (Istio's inbound
    behaviour): the last element is the hop the sidecar itself verified.
    """
    last = _split_unquoted(header, ",")[-1]
    for part in _split_unquoted(last, ";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "uri":
            return mesh_policy.identity_from_spiffe(value.strip().strip('"'), trust_domain)
    return None


# The verified mesh identity of the peer whose RPC is being served (None in plaintext mode),
# for servicers whose answer depends on who is asking, not only on whether they may ask.
current_peer: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "aimesh_current_peer", default=None
)

IdentitySource = Literal["mtls", "xfcc", "plaintext"]


class PeerAuthorizationInterceptor(grpc.aio.ServerInterceptor):
    """Reject callers the caller graph does not allow, before any servicer code runs.

    mode "mtls": identity from the verified client certificate (local default).
    mode "xfcc": identity from the Istio sidecar's XFCC header (Kubernetes, defense in depth).
    mode "plaintext": debugging only; nothing to verify, every call passes with a warning.

    A caller presenting end-user identity headers (x-aimesh-*) is refused unless the graph
    says it may forward them on that method (the gateway, or a service acting for a user).
    """

    def __init__(
        self,
        callee: str,
        policy: Any = mesh_policy,
        *,
        mode: IdentitySource = "mtls",
        trust_domain: str | None = None,
        identity_headers: Sequence[str] = mesh_policy.IDENTITY_HEADERS,
    ) -> None:
        if mode not in ("mtls", "xfcc", "plaintext"):
            raise ValueError(f"unknown identity source {mode!r}")
        if policy is mesh_policy and callee not in mesh_policy.POLICY:
            raise ValueError(f"{callee!r} is not a service of the caller graph")
        self._callee = callee
        self._policy = policy
        self._mode = mode
        self._trust_domain = trust_domain or (
            mesh_policy.K8S_TRUST_DOMAIN if mode == "xfcc" else mesh_policy.LOCAL_TRUST_DOMAIN
        )
        self._identity_headers = frozenset(h.lower() for h in identity_headers)
        if mode == "plaintext":
            log.warning("%s: PLAINTEXT mode, peer authorization is OFF (debugging only)", callee)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or self._mode == "plaintext":
            return handler
        method = handler_call_details.method
        metadata = {k.lower(): v for k, v in (handler_call_details.invocation_metadata or ())}
        return before(handler, lambda ctx: self._check(ctx, method, metadata))

    def _caller(self, context: grpc.aio.ServicerContext, metadata: dict[str, Any]) -> str | None:
        if self._mode == "xfcc":
            value = metadata.get("x-forwarded-client-cert")
            return xfcc_identity(value, self._trust_domain) if isinstance(value, str) else None
        return peer_identity(context, self._trust_domain)

    async def _check(
        self, context: grpc.aio.ServicerContext, method: str, metadata: dict[str, Any]
    ) -> None:
        caller = self._caller(context, metadata)
        if caller is None and self._mode == "xfcc" and _is_local_health_probe(context, method):
            # Istio rewrites kubelet probes: pilot-agent calls health on localhost, outside
            # the sidecar, so there is no XFCC. Nothing but health is let through this way.
            return
        if caller is None:
            log.warning(
                "denied %s on %s: no mesh identity (%s)",
                method,
                self._callee,
                peer_description(context),
            )
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "no mesh identity: a client certificate from the local CA "
                "with a spiffe:// SAN URI is required"
                if self._mode == "mtls"
                else "no mesh identity: x-forwarded-client-cert from the sidecar is required",
            )
        assert caller is not None
        current_peer.set(caller)
        if not self._policy.is_allowed(self._callee, caller, method):
            log.warning(
                "denied %s on %s: caller %r is not in the caller graph (%s)",
                method,
                self._callee,
                caller,
                peer_description(context),
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{caller} may not call {method} on {self._callee}",
            )
        presented = sorted(self._identity_headers.intersection(metadata))
        if presented and not self._policy.may_forward_identity(self._callee, caller, method):
            log.warning(
                "denied %s on %s: caller %r sent identity headers %s it may not forward",
                method,
                self._callee,
                caller,
                presented,
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{caller} may not present end-user identity headers on {method}",
            )


def _is_local_health_probe(context: grpc.aio.ServicerContext, method: str) -> bool:
    if not method.startswith("/grpc.health.v1.Health/"):
        return False
    peer = context.peer() or ""
    return peer.startswith(("ipv4:127.", "ipv6:[::1]", "unix:"))


# --------------------------------------------------------------------------------------------
# Wiring helpers for server.py / channels.py and the Envoy config.

TlsMode = Literal["mtls", "istio", "plaintext"]
TLS_MODES: tuple[str, ...] = ("mtls", "istio", "plaintext")


def interceptor_for(callee: str, mode: TlsMode) -> PeerAuthorizationInterceptor:
    """mtls: local CA certificates; istio: the sidecar's XFCC; plaintext: debugging only."""
    sources: dict[str, IdentitySource] = {"mtls": "mtls", "istio": "xfcc", "plaintext": "plaintext"}
    if mode not in sources:
        raise ValueError(f"unknown TLS mode {mode!r}; expected one of {', '.join(TLS_MODES)}")
    source = sources[mode]
    return PeerAuthorizationInterceptor(callee, mode=source)


def add_listen_port(
    server: grpc.aio.Server,
    address: str,
    identity: str,
    mode: TlsMode,
    certs_dir: Path = DEFAULT_CERTS_DIR,
) -> int:
    """Bind `address`: mTLS with `identity`'s certificate in mtls mode, else plaintext (in
    istio mode the sidecar terminates mTLS). Returns the bound port."""
    if mode == "mtls":
        return int(
            server.add_secure_port(address, server_credentials(load_identity(identity, certs_dir)))
        )
    if mode == "plaintext":
        log.warning("%s listening in PLAINTEXT on %s (debugging only)", identity, address)
    return int(server.add_insecure_port(address))


def open_channel(
    target: str,
    *,
    caller: str,
    callee: str,
    mode: TlsMode,
    certs_dir: Path = DEFAULT_CERTS_DIR,
    extra_options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[Any] = (),
) -> grpc.aio.Channel:
    """A channel from `caller` to `callee`: retry service config and keepalive from
    mesh_policy, plus (mtls) the caller's certificate and a check of the callee's name."""
    options: list[tuple[str, Any]] = [
        *mesh_policy.client_channel_options(callee, retries=mode != "istio"),
        *extra_options,
    ]
    if mode == "mtls":
        material = load_identity(caller, certs_dir)
        return grpc.aio.secure_channel(
            target,
            channel_credentials(material),
            options=[*options, *channel_options(callee)],
            interceptors=list(interceptors) or None,
        )
    return grpc.aio.insecure_channel(target, options=options, interceptors=list(interceptors) or None)


def envoy_upstream_transport_socket(
    callee: str, certs_dir: Path = DEFAULT_CERTS_DIR, identity: str = mesh_policy.GATEWAY
) -> dict[str, Any]:
    """Envoy cluster `transport_socket` for the gateway's mTLS to `callee` (local mode):
    present the gateway certificate, trust only the local CA, require callee's SPIFFE id."""
    paths = CertPaths(certs_dir)
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "UpstreamTlsContext",
            "sni": server_name(callee),
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(paths.cert(identity))},
                        "private_key": {"filename": str(paths.key(identity))},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"filename": str(paths.ca_cert)},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": mesh_policy.spiffe_id(callee)}}
                    ],
                },
            },
        },
    }
