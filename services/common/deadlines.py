"""The deadline of the RPC being served, so that downstream calls never outlive it.

The server's interceptor records it when an RPC starts; client channels and the Triton
provider read what is left of it.
"""

from __future__ import annotations

import contextvars
import time

# Monotonic seconds at which the RPC being served (in this task's context) runs out.
_current: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "aimesh_current_deadline", default=None
)

# A call is never given less than this, so that an expired deadline fails as DEADLINE_EXCEEDED.
_MINIMUM_SECONDS = 0.001


def start(time_remaining: float | None) -> None:
    """Record the served RPC's remaining time (None: the caller set no deadline)."""
    _current.set(time.monotonic() + time_remaining if time_remaining is not None else None)


def time_left() -> float | None:
    """Seconds left of the served RPC's deadline, or None when there is none."""
    deadline = _current.get()
    return None if deadline is None else max(deadline - time.monotonic(), _MINIMUM_SECONDS)


def expired() -> bool:
    """Whether the served RPC's deadline has passed (False when it has none)."""
    deadline = _current.get()
    return deadline is not None and time.monotonic() >= deadline
