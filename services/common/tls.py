"""Local mutual TLS at run time: load and verify this identity's certificate, build gRPC
credentials, and authorize peers.

On one machine this gives the guarantees Istio gives in Kubernetes: every service listens
with mTLS and verifies its callers against the local CA, and `PeerAuthorizationInterceptor`
checks the caller's SPIFFE identity against `services.common.mesh_policy` (the same graph
Istio's AuthorizationPolicies are rendered from).

Files under `certs_dir` (default var/certs, gitignored), issued by scripts/ca.py:
    ca.pem, ca-key.pem             the CA (EC P-256)
    <identity>.pem, <identity>-key.pem
                                   leaf for server and client use; SAN = URI spiffe id,
                                   DNS localhost and <identity>.aimesh.local, IP 127.0.0.1/::1
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.common import mesh_policy
from services.common.config import REPO_ROOT, TLS_MODES, TlsMode
from services.common.handlers import Metadata, MethodInterceptor, before, call_metadata
from services.common.identity import IDENTITY_HEADERS

log = logging.getLogger("aimesh.tls")

DEFAULT_CERTS_DIR = REPO_ROOT / "var" / "certs"
LOCAL_DNS_SUFFIX = "aimesh.local"


class CertificateError(Exception):
    """A certificate is missing, expired, not ours, or not for the expected identity."""


def utc_now() -> dt.datetime:
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


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise CertificateError(f"{path}: missing (run scripts/ca.py)") from None
    except ValueError as exc:
        raise CertificateError(f"{path}: not a PEM certificate ({exc})") from None


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise CertificateError(f"{path}: missing (run scripts/ca.py)") from None
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{path}: expected an EC private key")
    return key


def check_validity(cert: x509.Certificate, what: str, now: dt.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            f"{what}: not valid before {cert.not_valid_before_utc.isoformat()} (clock skew?)"
        )
    if now >= cert.not_valid_after_utc:
        raise CertificateError(
            f"{what}: expired at {cert.not_valid_after_utc.isoformat()} (run scripts/ca.py)"
        )


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
    now = now or utc_now()
    what = f"certificate for {identity!r}"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError(
            f"{what}: not issued by the local CA {ca_cert.subject.rfc4514_string()!r} "
            f"(issuer {cert.issuer.rfc4514_string()!r})"
        ) from None
    check_validity(cert, what, now)
    expected = mesh_policy.spiffe_id(identity, trust_domain)
    if expected not in _uris(cert):
        raise CertificateError(f"{what}: SAN URI is {_uris(cert)}, expected {expected}")


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
        ca_cert = load_cert(paths.ca_cert)
        check_validity(ca_cert, f"CA {paths.ca_cert}", utc_now())
        verify_leaf(load_cert(paths.cert(identity)), ca_cert, identity, trust_domain=trust_domain)
        load_key(paths.key(identity))
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


class PeerAuthorizationInterceptor(MethodInterceptor):
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
        identity_headers: Sequence[str] = IDENTITY_HEADERS,
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
        # (caller, method) -> (allowed, identity headers it may not present); callers are mesh
        # identities and methods served ones, so this stays small.
        self._verdicts: dict[tuple[str, str], tuple[bool, frozenset[str]]] = {}
        if mode == "plaintext":
            log.warning("%s: PLAINTEXT mode, peer authorization is OFF (debugging only)", callee)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if self._mode == "plaintext":
            return handler
        return before(handler, lambda ctx: self._check(ctx, method, call_metadata()))

    def _graph(self, caller: str, method: str) -> tuple[bool, frozenset[str]]:
        """Whether the caller graph lets `caller` call `method`, and the identity headers it may
        not present there: the graph is fixed, so each pair is worked out once."""
        verdict = self._verdicts.get((caller, method))
        if verdict is None:
            forbidden = frozenset(h for h in self._identity_headers
                                  if not self._policy.may_present(self._callee, caller, method, h))
            verdict = (self._policy.is_allowed(self._callee, caller, method), forbidden)
            self._verdicts[(caller, method)] = verdict
        return verdict

    def _caller(self, context: grpc.aio.ServicerContext, call_headers: Metadata) -> str | None:
        if self._mode == "xfcc":
            value = None  # the last one, as a dict of the headers would hold
            for key, item in call_headers:
                if key.lower() == "x-forwarded-client-cert":
                    value = item
            return xfcc_identity(value, self._trust_domain) if isinstance(value, str) else None
        return peer_identity(context, self._trust_domain)

    def _check(
        self, context: grpc.aio.ServicerContext, method: str, call_headers: Metadata
    ) -> Awaitable[None] | None:
        """None when the caller may call `method` (nothing to wait for on the common path),
        else the refusal to await."""
        caller = self._caller(context, call_headers)
        if caller is None and self._mode == "xfcc" and _is_local_health_probe(context, method):
            # Istio rewrites kubelet probes: pilot-agent calls health on localhost, outside
            # the sidecar, so there is no XFCC. Nothing but health is let through this way.
            return None
        if caller is None:
            log.warning(
                "denied %s on %s: no mesh identity (%s)",
                method,
                self._callee,
                peer_description(context),
            )
            return context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "no mesh identity: a client certificate from the local CA "
                "with a spiffe:// SAN URI is required"
                if self._mode == "mtls"
                else "no mesh identity: x-forwarded-client-cert from the sidecar is required",
            )
        current_peer.set(caller)
        allowed, forbidden_headers = self._graph(caller, method)
        if not allowed:
            log.warning(
                "denied %s on %s: caller %r is not in the caller graph (%s)",
                method,
                self._callee,
                caller,
                peer_description(context),
            )
            return context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{caller} may not call {method} on {self._callee}",
            )
        if not forbidden_headers:
            return None
        presented = sorted(forbidden_headers.intersection(k.lower() for k, _ in call_headers))
        if presented:
            log.warning(
                "denied %s on %s: caller %r sent identity headers %s it may not forward",
                method,
                self._callee,
                caller,
                presented,
            )
            return context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{caller} may not present end-user identity headers on {method}",
            )
        return None


def _is_local_health_probe(context: grpc.aio.ServicerContext, method: str) -> bool:
    if not method.startswith("/grpc.health.v1.Health/"):
        return False
    peer = context.peer() or ""
    return peer.startswith(("ipv4:127.", "ipv6:[::1]", "unix:"))


# --------------------------------------------------------------------------------------------
# Wiring helpers for server.py and channels.py.



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
    return grpc.aio.insecure_channel(
        target, options=options, interceptors=list(interceptors) or None
    )
