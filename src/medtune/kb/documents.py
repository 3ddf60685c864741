"""Documents → passages, each with where it came from (file, line or page, title).

A reader per file type, found by suffix. A file that cannot give text (a scanned PDF without a text
layer, an encrypted or broken PDF, an empty file, a JSON record without its text field) is skipped
with a reason that is counted and written to the index's `skipped.jsonl`, never a traceback.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune.errors import ConfigError, DataError
from medtune.registry import Registry

READERS = Registry("document reader")
VERSION = 2  # bump when a reader's output changes: indexes built by an older one are re-read whole
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass
class Passage:
    """A paragraph (txt, md), a page (PDF) or a record (JSONL) of one document."""

    text: str
    title: str
    line: int | None = None
    page: int | None = None
    doc: str | None = None  # a JSONL record's own id (what a retrieval eval names as gold)


class Skip(Exception):
    """A document (or record) that gives no text: `reason` is counted, `detail` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass
class Fields:
    """Which JSON fields hold a record's text, title and id."""

    text: str = "text"
    title: str = "title"
    id: str = "id"


def expand(specs: list[str]) -> list[Path]:
    """Files named by `kb.documents`: files, folders (searched recursively) and globs; sorted, unique."""
    out: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            out += [f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")]
        elif p.is_file():
            out.append(p)
        elif matches := glob.glob(spec, recursive=True):
            out += [Path(m) for m in matches if Path(m).is_file()]
        else:
            raise ConfigError(f"kb.documents: {spec!r} is not a file, folder or glob that matches anything. "
                              "Relative paths start from the config file's folder.")
    return sorted(dict.fromkeys(f.resolve() for f in out))


def reader_for(path: Path) -> Callable[[Path, Fields], Iterator[Passage]] | None:
    suffix = path.suffix.lower().lstrip(".")
    return READERS.get(suffix) if suffix in READERS.names() else None


@READERS.register("txt", "plain text: paragraphs split at blank lines, with their first line")
def read_txt(path: Path, fields: Fields) -> Iterator[Passage]:
    yield from _paragraphs(path, markdown=False)


@READERS.register("md", "Markdown: paragraphs, titled by the heading above them")
def read_md(path: Path, fields: Fields) -> Iterator[Passage]:
    yield from _paragraphs(path, markdown=True)


@READERS.register("jsonl", "JSON Lines: one passage per record (kb.text_field, kb.title_field, kb.id_field)")
def read_jsonl(path: Path, fields: Fields) -> Iterator[Passage | Skip]:
    from medtune.data.io import read_json_records

    for line, record in read_json_records(path):
        if not isinstance(record, dict):
            yield Skip("not_an_object", f"{path}, line {line}: a record must be a JSON object")
            continue
        text = record.get(fields.text)
        if not isinstance(text, str) or not text.strip():
            got = "missing" if text is None else f"of type {type(text).__name__}" if not isinstance(text, str) else "empty"
            yield Skip("no_text", f"{path}, line {line}: field {fields.text!r} is {got}; set kb.text_field to the "
                                  f"field that holds the text (the record has {', '.join(map(str, record)) or 'no fields'})")
            continue
        title = record.get(fields.title)
        rid = record.get(fields.id)
        yield Passage(text.strip(), str(title) if isinstance(title, (str, int)) else path.stem, line=line,
                      doc=str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None)


READERS.register("json", "a JSON array of records, read like JSON Lines")(read_jsonl)


@READERS.register("pdf", "PDF through pypdf: one passage per page with text (scanned pages have none)")
def read_pdf(path: Path, fields: Fields) -> Iterator[Passage]:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise ConfigError("Reading PDF needs pypdf: pip install 'medtune[kb]' (or pip install pypdf).") from None
    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            raise Skip("encrypted_pdf", f"{path}: the PDF is encrypted; save a decrypted copy to index it")
        pages = list(reader.pages)
        texts = [(n, (page.extract_text() or "").strip()) for n, page in enumerate(pages, 1)]
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as e:
        raise Skip("unreadable_pdf", f"{path}: not a readable PDF ({type(e).__name__}: {e})") from None
    title = str((reader.metadata or {}).get("/Title") or path.stem)
    if not any(t for _, t in texts):
        raise Skip("no_text_layer", f"{path}: none of its {len(pages)} page(s) has a text layer (a scan?). "
                                    "Run OCR on it first (e.g. ocrmypdf) and index the result")
    for n, text in texts:
        if text:
            yield Passage(re.sub(r"[ \t]+\n", "\n", text), title, page=n)


def _paragraphs(path: Path, markdown: bool) -> Iterator[Passage]:
    from medtune.data.io import read_text

    try:
        text = read_text(path)
    except DataError as e:
        raise Skip("undecodable", str(e)) from None
    start, lines = None, []
    headings: dict[int, str] = {}  # level → the heading in force: a passage is titled "H1 · H2"
    title = path.stem
    for n, raw in enumerate([*text.splitlines(), ""], 1):
        heading = HEADING.match(raw) if markdown else None
        if raw.strip() and not heading:
            start = start or n
            lines.append(raw.strip())
            continue
        if lines:
            yield Passage("\n".join(lines), title, line=start)
            start, lines = None, []
        if heading and heading.group(2):
            level = len(heading.group(1))
            headings = {k: v for k, v in headings.items() if k < level} | {level: heading.group(2)}
            title = " · ".join(headings[k] for k in sorted(headings))


def read(path: Path, fields: Fields) -> tuple[list[Passage], list[dict[str, Any]]]:
    """A document's passages and its skipped records; `Skip` when the whole document gives nothing."""
    reader = reader_for(path)
    if reader is None:
        raise Skip("unsupported_type", f"{path}: no reader for {path.suffix or 'files without a suffix'} "
                                       f"(readers: {', '.join(READERS.names())})")
    passages, skipped = [], []
    try:
        for item in reader(path, fields):
            if isinstance(item, Skip):
                skipped.append({"file": str(path), "reason": item.reason, "detail": item.detail})
            else:
                passages.append(item)
    except DataError as e:  # JSON that does not parse, a file that does not decode
        raise Skip("unreadable", str(e)) from None
    if not passages:
        raise Skip("empty", f"{path}: no text in it" + (f" ({len(skipped)} record(s) skipped)" if skipped else ""))
    return passages, skipped
