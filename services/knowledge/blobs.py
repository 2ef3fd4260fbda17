"""The raw-document store: one file per upload on the local filesystem (path configurable).

Blobs are keyed by the document's upload uid, never by user-chosen names, so no path escaping is
needed; writes go to a temporary file and are renamed into place (a crash never leaves half a blob
under the final name).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterable
from pathlib import Path
from uuid import UUID


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        # Stable name of this store (replicas configured with the same path share it).
        self.identity = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]

    def path(self, org: str, uid: UUID) -> Path:
        # A short hash of the org keeps one organization's files together without trusting its name.
        bucket = hashlib.sha256(org.encode()).hexdigest()[:16]
        return self.root / bucket / f"{uid}.blob"

    async def put(self, org: str, uid: UUID, pieces: AsyncIterable[bytes] | bytes) -> Path:
        target = self.path(org, uid)
        tmp = target.with_suffix(".partial")
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        handle = await asyncio.to_thread(open, tmp, "wb")
        try:
            if isinstance(pieces, bytes):
                await asyncio.to_thread(handle.write, pieces)
            else:
                async for piece in pieces:
                    await asyncio.to_thread(handle.write, piece)
            await asyncio.to_thread(handle.flush)
            await asyncio.to_thread(os.fsync, handle.fileno())
        except BaseException:
            handle.close()
            tmp.unlink(missing_ok=True)
            raise
        handle.close()
        await asyncio.to_thread(os.replace, tmp, target)
        return target

    async def read(self, org: str, uid: UUID) -> bytes:
        return await asyncio.to_thread(self.path(org, uid).read_bytes)

    async def delete(self, org: str, uid: UUID) -> None:
        path = self.path(org, uid)
        await asyncio.to_thread(path.unlink, True)
        await asyncio.to_thread(path.with_suffix(".partial").unlink, True)
