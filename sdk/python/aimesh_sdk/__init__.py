"""aimesh Python SDK: the generated contract (`aimesh.<service>.v1`) plus a small client layer.

    from aimesh_sdk import Client, errors
    client = Client("127.0.0.1:8080", api_key="amk_...")

See aimesh_sdk.client (Client, AsyncClient), aimesh_sdk.errors (typed exceptions),
aimesh_sdk.audio (WAV and microphone-paced audio helpers) and the `aimesh` command (cli).
"""

from __future__ import annotations

from importlib import metadata as _metadata

from aimesh_sdk.client import AsyncClient, ChatReply, Client, TlsOptions
from aimesh_sdk.errors import (
    AimeshError,
    BudgetExceeded,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RateLimited,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

try:
    __version__ = _metadata.version("aimesh-sdk")
except _metadata.PackageNotFoundError:  # running from the repository, not an installed wheel
    __version__ = "0+repo"

__all__ = [
    "AimeshError", "AsyncClient", "BudgetExceeded", "ChatReply", "Client", "FieldViolation",
    "InvalidArgument", "NotFound", "PermissionDenied", "RateLimited", "ResourceExhausted",
    "TlsOptions", "Unauthenticated", "Unavailable", "__version__",
]
