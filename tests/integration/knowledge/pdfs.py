"""Small PDFs written by hand for the tests (no PDF-writing library is installed): real text
pages with an optional outline, and the broken ones a hostile uploader might send."""

from __future__ import annotations

import io


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(pages: list[list[str]], outline: list[tuple[str, int]] | None = None) -> bytes:
    """A PDF whose page i shows the lines pages[i] (Helvetica); outline = [(title, page index)]."""
    objects: list[bytes] = []

    def add(body: str | bytes) -> int:
        objects.append(body.encode("latin-1") if isinstance(body, str) else body)
        return len(objects)

    catalog = add("")  # filled in below
    pages_obj = add("")
    font = add("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    page_ids: list[int] = []
    for lines in pages:
        ops = ["BT", "/F1 11 Tf", "14 TL", "50 780 Td"]
        for line in lines:
            ops.append(f"({_escape(line)}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        content = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        page_ids.append(
            add(
                f"<< /Type /Page /Parent {pages_obj} 0 R /MediaBox [0 0 612 842] "
                f"/Resources << /Font << /F1 {font} 0 R >> >> /Contents {content} 0 R >>"
            )
        )
    outline_ref = ""
    if outline:
        root = add("")
        items = []
        for title, page in outline:
            items.append(add(""))
        for i, (title, page) in enumerate(outline):
            links = f"/Parent {root} 0 R"
            if i > 0:
                links += f" /Prev {items[i - 1]} 0 R"
            if i + 1 < len(items):
                links += f" /Next {items[i + 1]} 0 R"
            objects[items[i] - 1] = (
                f"<< /Title ({_escape(title)}) {links} /Dest [{page_ids[page]} 0 R /Fit] >>".encode("latin-1")
            )
        objects[root - 1] = (
            f"<< /Type /Outlines /First {items[0]} 0 R /Last {items[-1]} 0 R /Count {len(items)} >>".encode()
        )
        outline_ref = f" /Outlines {root} 0 R"
    objects[catalog - 1] = f"<< /Type /Catalog /Pages {pages_obj} 0 R{outline_ref} >>".encode()
    kids = " ".join(f"{p} 0 R" for p in page_ids)
    objects[pages_obj - 1] = f"<< /Type /Pages /Kids [{kids}] /Count {len(page_ids)} >>".encode()

    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, catalog, xref))
    return out.getvalue()


def poisoned_pdf() -> bytes:
    """A PDF header followed by a truncated, self-referencing object graph and garbage."""
    return (
        b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 1 0 R >>\nendobj\n"
        b"2 0 obj\n<< /Length 999999 >>\nstream\n\x00\xff\x13garbage"
        b"\nxref\n0 2\nnot-a-number\ntrailer\n<< /Root 1 0 R /Size 2 >>\nstartxref\n9999999\n%%EOF\n"
    )


def encrypted_pdf() -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf([["secret text inside"]]))))
    writer.encrypt(user_password="open-sesame", owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def blank_pdf() -> bytes:
    return make_pdf([[]])
