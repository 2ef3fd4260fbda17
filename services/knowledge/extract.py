"""Text extraction: document bytes -> plain text split into sections that carry their heading path.

Formats: text/plain, text/markdown (markdown-it-py), text/html (beautifulsoup4), application/pdf
(pypdf, headings from the outline). `sniff()` is the cheap synchronous check done at upload;
`extract()` does the real work and runs in a child process (`run_isolated`) so a hostile file (a
decompression bomb, a parser loop) can only kill that child, which a timeout and a memory limit
bound. Offsets are code points into `Extracted.text`.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

TEXT_TYPES = ("text/plain", "text/markdown", "text/html")
SUPPORTED_TYPES = (*TEXT_TYPES, "application/pdf")


class ExtractionError(Exception):
    """The document cannot be turned into text; the message is safe to show the uploader."""


@dataclass
class Section:
    start: int
    end: int
    heading_path: list[str] = field(default_factory=list)


@dataclass
class Extracted:
    text: str
    sections: list[Section]


def base_type(mime_type: str) -> str:
    return mime_type.split(";", 1)[0].strip().lower()


def sniff(mime_type: str, content: bytes) -> str | None:
    """A problem with the bytes that makes them unusable as `mime_type`, or None if plausible."""
    kind = base_type(mime_type)
    if kind in TEXT_TYPES:
        charset = re.search(r"charset\s*=\s*\"?([\w.-]+)", mime_type, re.IGNORECASE)
        if charset and charset.group(1).lower().replace("_", "-") not in (
            "utf-8",
            "utf8",
            "us-ascii",
            "ascii",
        ):
            return f"charset {charset.group(1)!r} is not supported; text must be UTF-8"
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"content is not valid UTF-8 (invalid byte at offset {exc.start})"
        if "\x00" in text:
            return "content contains NUL characters; it looks binary, not text"
        if not text.strip():
            return "content has no text (only whitespace)"
        return None
    if kind == "application/pdf":
        if content.lstrip()[:5] != b"%PDF-":
            return "content is not a PDF (no %PDF- header)"
        return None
    return f"unsupported mime type {kind!r}"


def _decode(content: bytes) -> str:
    return content.decode("utf-8").lstrip("\ufeff")


class _Builder:
    """Appends paragraphs to the text, opening a new section whenever the heading path changes."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.sections: list[Section] = []
        self.path: list[str] = []

    def heading(self, level: int, title: str) -> None:
        title = " ".join(title.split())
        if not title:
            return
        self.path = self.path[: level - 1] + [title]
        self.add(title, new_section=True)

    def add(self, paragraph: str, new_section: bool = False) -> None:
        paragraph = paragraph.strip()
        if not paragraph:
            return
        if self.parts:
            self.parts.append("\n\n")
            self.length += 2
        if new_section or not self.sections:
            if self.sections:
                self.sections[-1].end = self.length
            self.sections.append(Section(self.length, self.length, list(self.path)))
        self.parts.append(paragraph)
        self.length += len(paragraph)
        self.sections[-1].end = self.length

    def result(self) -> Extracted:
        return Extracted("".join(self.parts), [s for s in self.sections if s.end > s.start])


def extract_text(content: bytes) -> Extracted:
    text = _decode(content).replace("\r\n", "\n")
    return Extracted(text, [Section(0, len(text))] if text.strip() else [])


def extract_markdown(content: bytes) -> Extracted:
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(_decode(content))
    out = _Builder()
    heading_level = 0
    for token in tokens:
        if token.type == "heading_open":
            heading_level = int(token.tag[1])
        elif token.type == "inline":
            text = "".join(_inline_text(token.children or []))
            if heading_level:
                out.heading(heading_level, text)
                heading_level = 0
            else:
                out.add(text)
        elif token.type in ("fence", "code_block"):
            out.add(token.content)
    return out.result()


def _inline_text(children: list) -> Iterator[str]:
    for child in children:
        if child.type in ("text", "code_inline"):
            yield child.content
        elif child.type in ("softbreak",):
            yield " "
        elif child.type == "hardbreak":
            yield "\n"
        elif child.type == "image":
            yield child.content  # alt text


_HTML_SKIP = {"script", "style", "noscript", "template", "head", "svg", "iframe", "object"}
_HTML_BLOCKS = {
    "p",
    "div",
    "li",
    "ul",
    "ol",
    "pre",
    "blockquote",
    "table",
    "tr",
    "td",
    "th",
    "section",
    "article",
    "main",
    "header",
    "footer",
    "nav",
    "aside",
    "dd",
    "dt",
    "dl",
    "figure",
    "figcaption",
    "caption",
    "br",
    "hr",
    "form",
    "address",
    "details",
    "summary",
}


def extract_html(content: bytes) -> Extracted:
    from bs4 import BeautifulSoup
    from bs4.element import Comment, Doctype, NavigableString, Tag

    soup = BeautifulSoup(_decode(content), "html.parser")
    out = _Builder()
    buffer: list[str] = []

    def flush() -> None:
        if buffer:
            out.add(" ".join(" ".join(buffer).split()))
            buffer.clear()

    def walk(node: Tag) -> None:
        for child in node.children:
            if isinstance(child, (Comment, Doctype)):
                continue
            if isinstance(child, NavigableString):
                buffer.append(str(child))
                continue
            if not isinstance(child, Tag) or child.name in _HTML_SKIP:
                continue
            if re.fullmatch(r"h[1-6]", child.name or ""):
                flush()
                out.heading(int(child.name[1]), child.get_text(" "))
                continue
            block = child.name in _HTML_BLOCKS
            if block:
                flush()
            walk(child)
            if block:
                flush()

    walk(soup.body or soup)
    flush()
    return out.result()


def extract_pdf(content: bytes) -> Extracted:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(content), strict=False)
        if reader.is_encrypted:
            try:
                if not reader.decrypt(""):
                    raise ExtractionError("PDF is encrypted")
            except (FileNotDecryptedError, NotImplementedError):
                raise ExtractionError("PDF is encrypted") from None
        page_headings = _outline_by_page(reader)
        out = _Builder()
        current: list[str] = []
        for number, page in enumerate(reader.pages):
            if number in page_headings:
                current = page_headings[number]
            text = page.extract_text() or ""
            out.path = list(current)
            # Each page starts a section so citations can carry the outline heading.
            paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
            for i, paragraph in enumerate(paragraphs):
                out.add(" ".join(paragraph.split()), new_section=(i == 0))
    except ExtractionError:
        raise
    except (
        PdfReadError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        IndexError,
        AssertionError,
        RecursionError,
    ) as exc:
        # The reason is shown to users (Document.error): the text, never a Python class name.
        raise ExtractionError(
            f"PDF could not be read: {str(exc)[:200] or 'malformed structure'}"
        ) from None
    result = out.result()
    if not result.text.strip():
        raise ExtractionError("PDF has no extractable text (scanned images are not supported)")
    return result


def _outline_by_page(reader: object) -> dict[int, list[str]]:
    """Page number -> heading path of the first outline entry pointing into that page."""
    found: dict[int, list[str]] = {}

    def visit(items: list, path: list[str]) -> None:
        last: list[str] = path
        for item in items:
            if isinstance(item, list):
                visit(item, last)
                continue
            try:
                page = reader.get_destination_page_number(item)  # type: ignore[attr-defined]
                title = str(item.title).strip()
            except Exception:
                continue
            last = path + [title]
            if page is not None and page >= 0:
                found.setdefault(page, last)

    try:
        visit(reader.outline, [])  # type: ignore[attr-defined]
    except Exception:
        return {}
    return found


def extract(mime_type: str, content: bytes) -> Extracted:
    kind = base_type(mime_type)
    if kind == "application/pdf":
        result = extract_pdf(content)
    else:
        problem = sniff(mime_type, content)
        if problem:
            raise ExtractionError(problem)
        result = {
            "text/plain": extract_text,
            "text/markdown": extract_markdown,
            "text/html": extract_html,
        }[kind](content)
    if not result.text.strip():
        raise ExtractionError("no extractable text")
    return result


# --- isolation: run extract() in a child process -------------------------------------------------

EXTRACT_TIMEOUT_SECONDS = 120.0
EXTRACT_MEMORY_BYTES = 2 * 1024**3


# Plain text is only decoded and split into paragraphs (linear, no parser to exploit): small
# files are read in-process, sparing the ~70 ms of CPU a child interpreter costs per document.
IN_PROCESS_MAX_BYTES = 1024 * 1024


async def extract_file(mime_type: str, path: str) -> Extracted:
    """extract() of the file at `path`: small plain text in a thread, the rest isolated."""
    if base_type(mime_type) == "text/plain" and os.path.getsize(path) <= IN_PROCESS_MAX_BYTES:

        def read_and_extract() -> Extracted:
            with open(path, "rb") as handle:
                return extract(mime_type, handle.read())

        return await asyncio.to_thread(read_and_extract)
    return await run_isolated(mime_type, path)


# Threads that wait on extraction children (blocked in poll(), the GIL released), apart from
# the default executor's few threads, which the vector index and tokenizing need meanwhile.
_CHILD_WAITERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="extract-child")


async def run_isolated(
    mime_type: str, path: str, timeout: float = EXTRACT_TIMEOUT_SECONDS
) -> Extracted:
    """extract() of the file at `path` in a child process with a time and memory limit."""
    # subprocess.Popen, not the event loop's subprocess_exec: under uvloop (every service's
    # loop) that is libuv's fork(), which copies this multi-threaded gRPC process and runs
    # Python's and gRPC's at-fork handlers in the copy before exec; children died there under
    # load (SIGSEGV with no output here; an abseil CHECK failure in CI, as in grpc/grpc#43055
    # and #43062); grpc/grpc#28557 reports TLS connections corrupted after such a fork (a
    # BAD_DECRYPT seen here once may be that; never reproduced). Without preexec_fn CPython
    # starts the child with vfork()/exec: nothing runs in between. (The child caps its memory.)
    process = subprocess.Popen(
        [sys.executable, "-m", "services.knowledge.extract", mime_type, path],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    loop = asyncio.get_running_loop()
    try:
        stdout, stderr = await loop.run_in_executor(
            _CHILD_WAITERS, functools.partial(process.communicate, timeout=timeout)
        )
    except subprocess.TimeoutExpired:
        process.kill()
        await loop.run_in_executor(_CHILD_WAITERS, process.communicate)
        raise ExtractionError(f"text extraction took longer than {timeout:.0f}s") from None
    except asyncio.CancelledError:
        process.kill()  # the waiting thread's communicate() then returns and reaps it
        raise
    if process.returncode != 0:
        if process.returncode in (-9, 137) or b"MemoryError" in stderr:
            raise ExtractionError("text extraction ran out of memory")
        last = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise ExtractionError(f"text extraction failed: {last[0][:200]}")
    reply = json.loads(stdout)
    if "error" in reply:
        raise ExtractionError(reply["error"])
    return Extracted(reply["text"], [Section(**s) for s in reply["sections"]])


def _main(argv: list[str]) -> int:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (EXTRACT_MEMORY_BYTES, EXTRACT_MEMORY_BYTES))
    mime_type, path = argv
    with open(path, "rb") as handle:
        content = handle.read()
    try:
        result = extract(mime_type, content)
        reply: dict[str, object] = asdict(result)
    except ExtractionError as exc:
        reply = {"error": str(exc)}
    except MemoryError:
        reply = {"error": "text extraction ran out of memory"}
    sys.stdout.write(json.dumps(reply))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
