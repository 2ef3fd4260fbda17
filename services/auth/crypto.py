"""Auth's cryptography: password hashing, credential hashing, key encryption at rest, JWTs.

Plain Python, no gRPC. Every secret-derived key comes from AIMESH_AUTH_SECRET through HKDF
with a distinct label, so one leaked subkey does not reveal another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.common.identity import API_KEY_PREFIX

ISSUER = "https://auth.aimesh.dev"
AUDIENCE = "aimesh"
JWT_ALG = "RS256"  # the contract (auth.proto) publishes RSA JWKs; Envoy's jwt_authn verifies it

# Argon2id with the library's defaults (RFC 9106 low-memory profile): ~50 ms per hash here,
# paid only at sign-up and login.
_passwords = PasswordHasher()


def hash_password(password: str) -> str:
    return _passwords.hash(password)


def verify_password(stored: str, password: str) -> bool:
    try:
        return _passwords.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# A fixed hash to verify against when the e-mail is unknown, so both failures cost the same.
_DUMMY_HASH = _passwords.hash("not-a-real-password-" + secrets.token_hex(8))


def burn_password_check(password: str) -> None:
    verify_password(_DUMMY_HASH, password)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Secrets:
    """Subkeys derived from the master secret."""

    def __init__(self, master: str) -> None:
        self._credential_pepper = self._derive(master, b"aimesh-auth credential hash v1")
        self._kek = AESGCM(self._derive(master, b"aimesh-auth key encryption v1"))

    @staticmethod
    def _derive(master: str, label: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(
            master.encode()
        )

    def credential_hash(self, secret: str) -> bytes:
        # API keys and refresh tokens carry >= 192 bits of randomness, so a slow password hash
        # (argon2) adds nothing against guessing and would cost ~50 ms on every request; a keyed
        # HMAC-SHA256 is the right tool: a stolen table cannot be checked without the pepper.
        return hmac.new(self._credential_pepper, secret.encode(), hashlib.sha256).digest()

    def encrypt(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._kek.encrypt(nonce, plaintext, context)

    def decrypt(self, blob: bytes, context: bytes) -> bytes:
        return self._kek.decrypt(blob[:12], blob[12:], context)


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(8)}"


@dataclass(frozen=True)
class NewApiKey:
    prefix: str
    secret: str


def generate_api_key() -> NewApiKey:
    prefix = API_KEY_PREFIX + secrets.token_hex(4)
    return NewApiKey(prefix=prefix, secret=f"{prefix}_{secrets.token_urlsafe(32)}")


def generate_refresh_token() -> str:
    return "amr_" + secrets.token_urlsafe(32)


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


@dataclass(frozen=True)
class KeyPair:
    kid: str
    private_pem: bytes
    public_jwk: dict[str, str]


def generate_signing_key() -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = key.public_key().public_numbers()
    kid = "k_" + secrets.token_hex(8)
    jwk = {
        "kty": "RSA",
        "kid": kid,
        "use": "sig",
        "alg": JWT_ALG,
        "n": b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
    }
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return KeyPair(kid=kid, private_pem=pem, public_jwk=jwk)


def sign_access_token(
    private_pem: bytes, kid: str, user_id: str, org_id: str, roles: list[str], ttl_seconds: int,
    now: float | None = None, scopes: Sequence[str] = (), session_id: str | None = None,
) -> tuple[str, int]:
    """An RS256 access token and its expiry (epoch seconds); `scopes` go in the space-separated
    `scope` claim (RFC 8693), the session (refresh family) in `sid` so it can be revoked."""
    issued = int(now if now is not None else time.time())
    expires = issued + ttl_seconds
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user_id,
        "org": org_id,
        "roles": roles,
        "iat": issued,
        "nbf": issued - 5,
        "exp": expires,
        "jti": secrets.token_hex(12),
    }
    if scopes:
        claims["scope"] = " ".join(scopes)
    if session_id:
        claims["sid"] = session_id
    token = jwt.encode(claims, private_pem, algorithm=JWT_ALG, headers={"kid": kid})
    return token, expires


def decode_payload_header(value: str) -> dict[str, Any]:
    """The claims jwt_authn forwarded (base64url JSON of the verified payload)."""
    data = json.loads(b64url_decode(value.strip()))
    if not isinstance(data, dict):
        raise TypeError("payload is not a JSON object")
    return data


def unverified_expiry(token: str) -> int | None:
    """exp of a token without verifying it: only used to word an error message."""
    try:
        value = jwt.decode(token, options={"verify_signature": False}).get("exp")
        return int(value) if value is not None else None
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
