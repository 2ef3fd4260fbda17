"""Knowledge's isolated extraction starts its child without fork(): no at-fork handler runs in a
copy of the service process before exec.

Every service runs on uvloop, whose subprocess support is libuv's fork(): it copies the
multi-threaded gRPC process and runs Python's and gRPC's at-fork handlers in the copy. Under load
extraction children died there (a stress run: SIGSEGV with no output, 1-5 of 80 PDFs; a CI run:
an abseil "Check failure" in native code). Python-level at-fork handlers stand for all of them
here: they run exactly when the process is forked."""

from __future__ import annotations

import os
from pathlib import Path

import uvloop

from services.knowledge.extract import Extracted, run_isolated
from tests.integration.knowledge.pdfs import make_pdf

_counting: list[bool] = [False]
_forks: list[int] = []
os.register_at_fork(before=lambda: _forks.append(1) if _counting[0] else None)


def test_the_extraction_child_is_started_without_forking_the_service(tmp_path: Path) -> None:
    pdf = tmp_path / "doc.pdf"
    pdf.write_bytes(make_pdf([["isolated extraction", "second line"], ["page two"]]))

    async def extract_twice() -> list[Extracted]:
        return [await run_isolated("application/pdf", str(pdf)) for _ in range(2)]

    _counting[0] = True
    try:
        results = uvloop.run(extract_twice())  # the loop every service runs on
    finally:
        _counting[0] = False
    assert all("isolated extraction" in r.text and "page two" in r.text for r in results)
    assert _forks == [], f"{len(_forks)} fork(s) of the calling process"
