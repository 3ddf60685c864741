"""Reading source files with errors a user can act on.

Every reader yields `(line_number, record)` so that a converter can name the exact line of a bad
row. Decoding and parse errors raise `DataError` naming the file, the line and a fix (usually the
encoding to use, or the JSON problem), never a bare traceback.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medtune.errors import DataError


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """Read a whole file, turning a decode error into a message with the line and a likely encoding."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found. Check the dataset's `path` (relative paths are resolved "
                        "against the registry file that names it).")
    data = p.read_bytes()
    return decode(data, str(p), encoding)


def decode(data: bytes, name: str, encoding: str, first_line: int = 1) -> str:
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = first_line + data[: e.start].count(b"\n")
        guess = next((enc for enc in ("utf-8", "gb18030") if enc != encoding and _decodes(data, enc)), None)
        fix = f" The file decodes as {guess}: set `encoding: {guess}` for this dataset." if guess else ""
        raise DataError(f"{name}, line {line}: cannot decode byte {data[e.start:e.start + 1]!r} as "
                        f"{encoding}.{fix}") from None
    return text.removeprefix("\ufeff")


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


# First bytes that say what a file is, whatever its name says.
_MAGIC = [(b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a zip archive"), (b"PAR1", "a Parquet file"),
          (b"\x1f\x8b", "a gzip-compressed file"), (b"\x28\xb5\x2f\xfd", "a Zstandard-compressed file"),
          (b"7z\xbc\xaf", "a 7z archive"), (b"Rar!", "a RAR archive"), (b"\xd0\xcf\x11\xe0", "an old Office document"),
          (b"SQLite format", "an SQLite database")]
_FIX = {"a zip archive": "unzip it and point the dataset at the file inside",
        "a Parquet file": "name it *.parquet", "a gzip-compressed file": "name it *.gz (e.g. data.jsonl.gz)",
        "a Zstandard-compressed file": "name it *.zst (e.g. data.jsonl.zst)"}
_OWN = {"a gzip-compressed file": ".gz", "a Zstandard-compressed file": ".zst", "a Parquet file": ".parquet",
        "a zip archive": ".zip"}


def sniff(p: Path) -> str | None:
    """Refuse a file whose first bytes say it is not the text its name promises (an image, an archive, a
    compressed file without its suffix); return the encoding a byte-order mark imposes (it wins over the
    configured one), or None."""
    try:
        with open(p, "rb") as f:
            head = f.read(16)
    except IsADirectoryError:
        raise DataError(f"{p} is a folder, not a file: point the dataset's `path` at the folder itself "
                        "(without a file suffix) to read every shard in it.") from None
    for magic, what in _MAGIC:
        if head.startswith(magic) and not p.name.endswith(_OWN.get(what, "\0")):
            fix = _FIX.get(what, "point the dataset at the data file instead")
            raise DataError(f"{p}: this is {what}, not {'JSON' if '.json' in p.name else 'text'} data: {fix}.")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8"
    return None


# What a folder or glob of shards may hold (dataset `path: data/shards/` or `path: "data/part-*.jsonl.gz"`).
SHARD_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".parquet", ".csv",
                  ".txt", ".txt.gz", ".txt.zst")


def shards(path: str | Path) -> list[Path]:
    """The files a dataset path names: the file itself, every data file of a folder (sorted), or a glob's
    matches (sorted). A folder or glob with no data file is an error naming it."""
    p = Path(path)
    if any(ch in str(path) for ch in "*?["):
        found = sorted(q for q in Path(p.anchor or ".").glob(str(p.relative_to(p.anchor)) if p.anchor else str(p))
                       if q.is_file())
        if not found:
            raise DataError(f"{path}: the glob matches no file. Check the dataset's `path`.")
        return found
    if p.is_dir():
        found = sorted(q for q in p.rglob("*") if q.is_file() and q.name.endswith(SHARD_SUFFIXES)
                       and not q.name.startswith("."))
        if not found:
            raise DataError(f"{p}: the folder holds no data file ({', '.join(SHARD_SUFFIXES)}).")
        return found
    return [p]


def open_binary(p: Path) -> Any:
    """A binary reader for plain, gzip (.gz) or Zstandard (.zst) files: shards are often compressed."""
    if p.name.endswith(".gz"):
        import gzip

        return gzip.open(p, "rb")
    if p.name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise DataError(f"{p}: reading .zst needs the zstandard package: pip install zstandard.") from None
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(p, "rb"), closefd=True))
    return p.open("rb")


def _broken(p: Path) -> tuple[type[BaseException], ...]:
    """The errors a damaged compressed shard raises while it is read (gzip: OSError/EOFError; zstd: ZstdError)."""
    if p.name.endswith(".zst"):
        import zstandard

        return (zstandard.ZstdError, OSError, EOFError)
    return (OSError, EOFError) if p.name.endswith(".gz") else ()


def _unreadable(p: Path, e: BaseException) -> DataError:
    kind = "gzip" if p.name.endswith(".gz") else "Zstandard"
    return DataError(f"{p}: not a readable {kind} file ({e}). The shard is damaged or not compressed as its "
                     "name says: re-create it, rename it, or remove it from the dataset's path.")


def read_records(path: str | Path, encoding: str = "utf-8", on_error: str = "stop") -> Iterator[tuple[str, Any]]:
    """Yield (where, record) over every shard a dataset path names: JSON / JSON Lines (plain, .gz,
    .zst) or Parquet; `where` is `file:line` (Parquet: `file:row`), the reference every drop record and
    error uses. With `on_error: skip`, a record that does not parse comes as an `Unparseable`."""
    for shard in shards(path):
        if shard.name.endswith(".parquet"):
            yield from ((f"{shard}:{n}", r) for n, r in read_parquet_records(shard))
        else:
            yield from ((f"{shard}:{n}", r) for n, r in read_json_records(shard, encoding, on_error, drops=True))


class Unparseable:
    """A JSON record that does not parse (kept with `data.on_error: skip`): the raw text and why."""

    def __init__(self, raw: str, error: str, reason: str = "invalid_json") -> None:
        self.raw, self.error, self.reason = raw, error, reason


def read_parquet_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a Parquet file as dicts, a batch at a time (memory flat in the file size); 1-based row numbers."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow.") from None
    try:
        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except (OSError, ValueError) as e:  # pyarrow.lib.ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable Parquet file ({e}).") from None


def read_json_records(path: str | Path, encoding: str = "utf-8", on_error: str = "stop",
                      drops: bool = False) -> Iterator[tuple[int, Any]]:
    """`_json_records`; without `drops` (readers other than prepare's formats), a bad record — a key given
    twice, or any with `on_error: skip` — is an error naming the file and line instead of an `Unparseable`."""
    for line, record in _json_records(Path(path), encoding, on_error):
        if isinstance(record, Unparseable) and not drops:
            raise DataError(f"{path}, line {line}: {record.error}. Fix the record.")
        yield line, record


def _json_records(path: Path, encoding: str, on_error: str) -> Iterator[tuple[int, Any]]:
    """Yield (line, record) from a JSON array or JSON Lines file (many `.json` files are really JSONL).

    JSON Lines stream line by line, so memory does not grow with the file; a JSON array is parsed whole,
    element by element, and each record is numbered by the physical line it starts on. A record that
    does not parse (bad JSON, nesting too deep, a lone surrogate escape such as \\ud800 that no text
    file can hold) stops the run with file and line, or with `on_error: skip` comes as an `Unparseable`."""
    p = Path(path)
    if not p.exists():
        read_text(p, encoding)  # raises the file-not-found message
    encoding = sniff(p) or encoding
    try:
        with open_binary(p) as f:
            head = f.read(4096)
    except _broken(p) as e:
        raise _unreadable(p, e) from None
    start = head.decode("utf-16", errors="ignore") if encoding == "utf-16" else head.decode("latin-1")
    if start.lstrip("\ufeff\xef\xbb\xbf \t\r\n").startswith("["):
        try:
            with open_binary(p) as f:
                data = f.read()
        except _broken(p) as e:
            raise _unreadable(p, e) from None
        yield from _array(p, decode(data, str(p), encoding), on_error)
        return
    lines = _utf16_lines(p) if encoding == "utf-16" else _lines(p, encoding)
    for lineno, line in lines:
        try:
            record = _loads(line)
            if "\\ud" in line or "\\uD" in line:
                _no_surrogates(record)
        except _DuplicateKey as e:  # a bad record, not an unreadable file: dropped and counted
            yield lineno, _duplicate(line.rstrip("\r\n"), e)
            continue
        except (json.JSONDecodeError, RecursionError, _Surrogate) as e:
            bad = _why(e)
            if on_error == "skip":
                yield lineno, Unparseable(line.rstrip("\r\n"), bad[1], bad[0])
                continue
            raise DataError(f"{p}, line {lineno}{bad[2]}: {bad[1]}. Each line of a JSON Lines file must be one complete "
                            "JSON object; fix the line, or set data.on_error: skip to drop such lines (counted, and "
                            "written to dropped/).") from None
        yield lineno, record


class _Surrogate(ValueError):
    pass


class _DuplicateKey(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a key given twice in one object is an error, not a silent last-wins."""
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _DuplicateKey(key)
    return d


def _loads(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_pairs)


def _duplicate(raw: str, e: _DuplicateKey) -> Unparseable:
    return Unparseable(raw, f"the key {e.args[0]!r} appears twice in one object (which value is meant?)", "duplicate_key")


def _no_surrogates(value: Any) -> None:
    if isinstance(value, str):
        if any("\ud800" <= c <= "\udfff" for c in value):
            raise _Surrogate("a lone surrogate escape (\\ud800–\\udfff): not valid Unicode, cannot be written as text")
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_surrogates(k)
            _no_surrogates(v)
    elif isinstance(value, list):
        for v in value:
            _no_surrogates(v)


def _why(e: BaseException) -> tuple[str, str, str]:
    """(drop reason, message, ', column N') for a record that does not parse."""
    if isinstance(e, json.JSONDecodeError):
        return "invalid_json", f"invalid JSON ({e.msg})", f", column {e.colno}"
    if isinstance(e, RecursionError):
        return "invalid_json", "JSON nested too deeply to read (thousands of levels)", ""
    return "invalid_unicode", str(e), ""


def _array(p: Path, text: str, on_error: str) -> Iterator[tuple[int, Any]]:
    """The elements of a JSON array, each with the physical line it starts on (a minified array, all on
    one line, numbers its records 1, 2, … instead: one line number for all would point nowhere)."""
    if "\n" not in text.strip():
        yield from ((n, record) for n, (_, record) in enumerate(_elements(p, text, on_error), 1))
        return
    yield from _elements(p, text, on_error)


def _elements(p: Path, text: str, on_error: str) -> Iterator[tuple[int, Any]]:
    import re

    decoder, plain, ws = json.JSONDecoder(object_pairs_hook=_pairs), json.JSONDecoder(), re.compile(r"[ \t\r\n]*")
    i = ws.match(text, text.index("[") + 1).end()
    line, seen = 1 + text.count("\n", 0, i), i
    if text.startswith("]", i):
        return
    while True:
        line += text.count("\n", seen, i)
        seen = i
        try:
            record, end = decoder.raw_decode(text, i)
            _no_surrogates(record)
        except _DuplicateKey as e:
            _, end = plain.raw_decode(text, i)
            record = _duplicate(text[i:end], e)
        except (json.JSONDecodeError, RecursionError, _Surrogate) as e:
            reason, message, column = _why(e)
            if isinstance(e, json.JSONDecodeError):
                line, column = e.lineno, f", column {e.colno}"
            raise DataError(f"{p}, line {line}{column}: {message}. Fix the file, or convert it to JSON Lines (one object "
                            "per line) where data.on_error: skip can drop single records.") from None
        yield line, record
        i = ws.match(text, end).end()
        if text.startswith("]", i):
            return
        if not text.startswith(",", i):
            line += text.count("\n", seen, i)
            raise DataError(f"{p}, line {line}: expected ',' or ']' after a record of the JSON array. Fix the file.")
        i = ws.match(text, i + 1).end()


def _utf16_lines(p: Path) -> Iterator[tuple[int, str]]:
    """Lines of a UTF-16 file (its byte-order mark says so): decoded whole, as such files are rarely big."""
    text = decode(p.read_bytes(), str(p), "utf-16")
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield n, line


def read_csv_records(path: str | Path, encoding: str = "utf-8",
                     required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line, row dict) from a CSV file (streamed) or a `.zip` holding one CSV; checks required columns."""
    p = Path(path)
    if p.suffix == ".zip":
        with zipfile.ZipFile(p) as zf:
            inner = [n for n in zf.namelist() if not n.endswith("/")]
            yield from _csv_rows(io.StringIO(decode(zf.read(inner[0]), f"{p}!{inner[0]}", encoding), newline=""),
                                 p, required)
        return
    if not p.exists():
        read_text(p, encoding)  # raises the file-not-found message
    encoding = sniff(p) or encoding
    with p.open(encoding=encoding, newline="") as f:
        try:
            yield from _csv_rows(f, p, required)
        except UnicodeDecodeError:
            read_text(p, encoding)  # re-reads to name the line and a likely encoding
            raise


def _csv_rows(f: Any, p: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    if header and header[0].startswith("\ufeff"):
        header[0] = header[0][1:]
    if not header:
        raise DataError(f"{p}: the file is empty (no header, no rows): it holds no records. Check the dataset's path.")
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{p}, line 1: missing column(s) {missing}; the header has {header}. Rename the "
                        "columns or map them with `columns:` in the dataset's registry entry.")
    last, held = 1, None
    for row in reader:
        start, last = last + 1, reader.line_num
        if None in row:  # more cells than header columns: usually an unquoted comma
            raise DataError(f"{p}, line {reader.line_num}: {len(header) + len(row[None])} cells for "
                            f"{len(header)} columns. Quote fields that contain commas.")
        if held is not None:
            yield held[1], held[2]
        held = (start, reader.line_num, row)
    if held is not None:
        start, end, row = held
        # A quote that never closes swallows the rest of the file into the last row's cell.
        if end > start and any("\n" in (v or "") for v in row.values()) and _open_quote(p):
            raise DataError(f"{p}, line {start}: a quoted field opens here and is never closed (an unterminated \" "
                            f"quote), so lines {start}–{end} would read as one cell. Close the quote, or double a "
                            "quote that is part of the text (\"\").")
        yield end, row


def _open_quote(p: Path) -> bool:
    """Whether the file holds an odd number of quote characters (a quote that never closes)."""
    try:
        return p.read_bytes().count(b'"') % 2 == 1
    except OSError:
        return False


def read_lines(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield (line, text) for each non-empty line of a plain-text file (plain, .gz or .zst), streamed."""
    p = Path(path)
    if not p.exists():
        read_text(p, encoding)  # raises the file-not-found message
    encoding = sniff(p) or encoding
    for lineno, line in (_utf16_lines(p) if encoding == "utf-16" else _lines(p, encoding)):
        yield lineno, line.strip()


def _lines(p: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """(line number, decoded line) for each non-blank line, streamed (plain, .gz or .zst); a byte that
    does not decode raises with the line and a likely encoding; a leading BOM is dropped."""
    broken, lineno = _broken(p), 0
    with open_binary(p) as f:
        lines = enumerate(f, start=1)
        while True:
            try:
                lineno, raw = next(lines)
            except StopIteration:
                return
            except broken as e:
                raise DataError(f"{p}, after line {lineno}: {_unreadable(p, e)}") if lineno else _unreadable(p, e) from None
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                encoding, raw = "utf-8", raw[3:]  # a UTF-8 byte-order mark wins over the configured encoding
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError:
                decode(raw, f"{p}", encoding, first_line=lineno)  # raises, naming a likely encoding
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            if line.strip():
                yield lineno, line


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks (data files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write via a temporary file and rename: a reader (another rank, a crashed run's successor)
    sees the old file or the new one, never half of one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
    except BaseException:  # a full disk or a kill: no temporary file left behind
        tmp.unlink(missing_ok=True)
        raise
    return p
