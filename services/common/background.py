"""Tracked background tasks: short work that must not hold up a reply (or must outlive a
cancelled request) but must still finish before the process exits.

    tasks = BackgroundTasks("orchestrator")
    tasks.start(store.store_response(digest, events), "cache-write")
    runtime.on_shutdown(tasks.wait)       # drain waits (briefly) for what is still running

Unlike `Runtime.spawn` (loops that live as long as the server and are cancelled at drain),
these tasks run to completion; a failure is logged, never raised into the caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("aimesh.background")

T = TypeVar("T")


class BackgroundTasks:
    """A set of running tasks that keeps a strong reference to each until it is done."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run `coro` now, independent of the calling task (its cancellation does not reach it)."""
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        task.set_name(f"{self.owner}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def wait(self, timeout: float = 5.0) -> None:
        """Wait up to `timeout` seconds for the tasks still running (at shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
