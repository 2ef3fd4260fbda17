"""Knowledge's isolated extraction starts its child without fork(): no at-fork handler runs in a
copy of the service process before exec.

Every service runs on uvloop, whose subprocess support is libuv's fork(): it copies the
multi-threaded gRPC process and runs Python's and gRPC's at-fork handlers in the copy. Under load
extraction children died there (a stress run: SIGSEGV with no output, 1-5 of 80 PDFs; a CI run:
an abseil "Check failure" in native code). Python-level at-fork handlers stand for all of them
here: they run exactly when the process is forked."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import uvloop

from services.knowledge.extract import Extracted, ExtractionError, run_isolated
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


def _extraction_children() -> list[int]:
    """Live (not reaped) extraction children of this process, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:"))
        if int(parent) == os.getpid() and b"services.knowledge.extract" in command:
            found.append(int(entry.name))
    return found


def test_a_child_past_its_time_is_killed_and_reaped(tmp_path: Path) -> None:
    pdf = tmp_path / "doc.pdf"
    pdf.write_bytes(make_pdf([["too slow"]]))
    with pytest.raises(ExtractionError, match="took longer than"):
        uvloop.run(run_isolated("application/pdf", str(pdf), timeout=0.01))
    assert _extraction_children() == []


def test_a_cancelled_extraction_kills_its_child(tmp_path: Path) -> None:
    pdf = tmp_path / "doc.pdf"
    pdf.write_bytes(make_pdf([["cancelled"]]))

    async def cancel_midway() -> None:
        task = asyncio.ensure_future(run_isolated("application/pdf", str(pdf)))
        await asyncio.sleep(0.05)  # the child runs (an interpreter starting takes longer)
        assert _extraction_children()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):  # the waiting thread reaps it once killed
            if not _extraction_children():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"extraction children left: {_extraction_children()}")

    uvloop.run(cancel_midway())


def test_no_service_starts_children_through_the_event_loop() -> None:
    """Under uvloop that forks the service process (see the module docstring)."""
    services = Path(__file__).resolve().parents[2] / "services"
    loop_spawns = ("create_subprocess_exec", "create_subprocess_shell", ".subprocess_exec(",
                   ".subprocess_shell(")
    found = [f"{path.relative_to(services)}: {word}" for path in sorted(services.rglob("*.py"))
             for word in loop_spawns if word in path.read_text()]
    assert not found, found
