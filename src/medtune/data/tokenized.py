"""The tokenised dataset cache: prepared JSONL → token ids and labels as memory-mapped Arrow files.

Tokenising is the slow step before step 1 (200k rows took 2.5 min in one process, and every rank did
it again). Here it runs once: the prepared files are cut into byte ranges, `data.num_workers`
processes encode them (the template rendered once per row, the fast tokenizer called on a batch of
rows at a time) through `datasets.Dataset.from_generator`, and the result is saved under a key that
fingerprints everything that changes the ids: the prepared files' content, the tokenizer (its full
serialisation), the template source, max_length, the label mask policy and the stage. Later runs and
other ranks load the same folder memory-mapped, so a trainer's memory does not grow with the rows.
The folder is built aside and committed with a COMPLETE marker (medtune.folders): a killed build is
never used, and a cache whose fingerprint file disagrees with its key is rebuilt.

Rows are encoded exactly as `encode.encode_messages` does one at a time (same text, same offsets,
same labels); a row with no supervised token within max_length is kept as an empty row so the
split (`medtune.data.views`) sees the same row numbers, then filtered and counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from medtune.data.encode import IGNORE_INDEX, assistant_spans, encode_messages, special_tokens
from medtune.folders import MARKER, staged

log = logging.getLogger(__name__)
ENCODER_VERSION = 1  # bump when the encoding itself changes: every old cache becomes a miss
BATCH = 256  # rows per tokenizer call


def default_workers() -> int:
    """The CPUs this process may use (cgroup/affinity aware), the default of data.num_workers."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def fingerprint(files: list[str], tokenizer: Any, template: Any, settings: dict[str, Any]) -> str:
    """sha256 over the inputs of the encoding (16 hex)."""
    h = _digest(files)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(tokenizer.get_vocab())).encode())
    h.update(json.dumps(special_tokens(tokenizer), sort_keys=True).encode())
    h.update(template.source.encode())
    h.update(json.dumps({**settings, "encoder": ENCODER_VERSION}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _digest(files: list[str], *parts: Any) -> Any:
    """A sha256 over the prepared files' content (and `parts`), to be extended by the caller."""
    from medtune.data.io import file_sha256

    h = hashlib.sha256(json.dumps([*parts, ENCODER_VERSION], sort_keys=True).encode())
    for f in files:
        h.update(f"{Path(f).name}:{file_sha256(f)}\n".encode())
    return h


def cache_root(prepared: str | Path) -> Path:
    """Where tokenised caches live: beside the prepared data (every rank sees the run's folder)."""
    return Path(prepared).parent / "tokenized"


def byte_ranges(files: list[str], parts: int) -> list[tuple[str, int, int]]:
    """(file, start, end) ranges of roughly equal size; a line belongs to the range its first byte is in."""
    sizes = [(f, os.path.getsize(f)) for f in files]
    total = sum(s for _, s in sizes) or 1
    out: list[tuple[str, int, int]] = []
    for f, size in sizes:
        n = max(1, round(parts * size / total))
        step = max(1, -(-size // n))
        out += [(f, a, min(a + step, size)) for a in range(0, max(size, 1), step)]
    return out


def _lines(path: str, start: int, end: int) -> Any:
    """The lines whose first byte lies in [start, end): each line belongs to exactly one range."""
    with open(path, "rb") as f:
        if start:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                f.readline()  # the line that began before `start` belongs to the previous range
        while f.tell() < end:
            line = f.readline()
            if not line:
                return
            if line.strip():
                yield json.loads(line)


def encode_batch(tokenizer: Any, template: Any, rows: list[dict[str, Any]], max_length: int,
                 mask: str) -> list[dict[str, Any]]:
    """encode_messages for many rows with one tokenizer call; too-long rows come back empty.

    The Rust tokenizer is called directly (the transformers wrapper's per-row conversion of every
    offset costs as much as the tokenising), and a span's tokens are found from two lookups at its
    boundaries (`char_to_token`), instead of testing every token against every span: the same ids and
    labels as the one-row encoder, tested on every shipped template."""
    specials = special_tokens(tokenizer)
    rendered = [assistant_spans(template, r["messages"], specials, mask) for r in rows]
    texts = [t for t, _ in rendered]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow (Python) tokenizer: the one-row encoder, row by row
        return [_row(encode_messages(tokenizer, template, r["messages"], max_length, mask), r) for r in rows]
    out = []
    for row, (text, spans), enc in zip(rows, rendered, backend.encode_batch(texts, add_special_tokens=False),
                                       strict=True):
        ids = enc.ids
        labels = [IGNORE_INDEX] * len(ids)
        bounds = [(_first_at(enc, s, len(text), len(ids)), _first_at(enc, e, len(text), len(ids))) for s, e in spans]
        if any(a is None or b is None for a, b in bounds):  # a boundary no token covers: test every token
            labels = [tok if any(s <= a < e for s, e in spans) else IGNORE_INDEX
                      for tok, (a, _) in zip(ids, enc.offsets, strict=True)]
            supervised = any(lab != IGNORE_INDEX for lab in labels[:max_length])
        else:
            for a, b in bounds:
                labels[a:b] = ids[a:b]
            supervised = any(a < min(b, max_length) for a, b in bounds)
        ids, labels = ids[:max_length], labels[:max_length]
        out.append(_row({"input_ids": ids, "labels": labels} if supervised else None, row))
    return out


def _first_at(enc: Any, char: int, text_len: int, n_tokens: int) -> int | None:
    """Index of the first token whose start offset is >= `char` (offsets only grow along a fast
    tokenizer's encoding), from two lookups instead of reading every offset; None when no token covers
    that character (then the caller falls back to the per-token test)."""
    if char >= text_len:
        return n_tokens
    t = enc.char_to_token(char)
    if t is None:
        return None
    return t if enc.token_to_chars(t)[0] >= char else t + 1


def _row(enc: dict[str, list[int]] | None, row: dict[str, Any]) -> dict[str, Any]:
    ids, labels = (enc["input_ids"], enc["labels"]) if enc else ([], [])
    return {"input_ids": ids, "labels": labels, "length": len(ids), "dataset": row.get("meta", {}).get("dataset", "")}


def _batches(ranges: list[tuple[str, int, int]]) -> Any:
    """The rows of `ranges`, BATCH at a time (a tokenizer call per batch)."""
    for path, start, end in ranges:
        batch: list[dict[str, Any]] = []
        for row in _lines(path, start, end):
            batch.append(row)
            if len(batch) == BATCH:
                yield batch
                batch = []
        if batch:
            yield batch


def _encode_ranges(ranges: list[tuple[str, int, int]], tokenizer: Any, template: Any, max_length: int,
                   mask: str) -> Any:
    for batch in _batches(ranges):
        yield from encode_batch(tokenizer, template, batch, max_length, mask)


def encoded(files: list[str], tokenizer: Any, template: Any, max_length: int, mask: str, root: Path,
            workers: int, stage: str = "sft") -> Any:
    """The encoded rows of `files` (in file order) as a memory-mapped `datasets.Dataset`, built once."""
    return _build(files, tokenizer, template, {"max_length": max_length, "mask": mask, "stage": stage}, root,
                  workers, _encode_ranges, {"tokenizer": tokenizer, "template": template, "max_length": max_length,
                                            "mask": mask})


def _build(files: list[str], tokenizer: Any, template: Any, settings: dict[str, Any], root: Path, workers: int,
           generator: Any, kwargs: dict[str, Any]) -> Any:
    from datasets import Features, Sequence, Value

    features = Features({"input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32")),
                         "length": Value("int32"), "dataset": Value("string")})
    return _cached(root / f"{settings['stage']}-{fingerprint(files, tokenizer, template, settings)}", files, workers,
                   generator, kwargs, {"files": files, **settings}, features)


def _cached(folder: Path, files: list[str], workers: int, generator: Any, kwargs: dict[str, Any],
            record: dict[str, Any], features: Any = None) -> Any:
    """The dataset committed in `folder` (named by its fingerprint), or built there from `generator` over
    byte ranges of `files` by `workers` processes, built aside and committed with its marker."""
    from datasets import Dataset

    key = folder.name.rsplit("-", 1)[1]
    if _valid(folder, key):
        log.info("tokenised cache hit: %s", folder)
        return _load(folder)
    workers = max(1, workers)
    log.info("tokenising %d file(s) with %d worker(s) into %s", len(files), workers, folder)
    with staged(folder) as tmp:
        ds = Dataset.from_generator(generator, features=features, cache_dir=str(tmp / ".build"),
                                    num_proc=workers if workers > 1 else None, split="train",
                                    gen_kwargs={"ranges": byte_ranges(files, parts=workers * 4), **kwargs})
        _commit(ds, tmp, {"key": key, **record})
    return _load(folder)


def _commit(ds: Any, tmp: Path, record: dict[str, Any]) -> None:
    """Move the Arrow shards the generator wrote into `data/` (no second copy of a GB-sized dataset:
    `save_to_disk` would rewrite every byte) and record their order and sizes."""
    parts = [c["filename"] for c in ds.cache_files]
    del ds
    (tmp / "data").mkdir()
    names = []
    for k, f in enumerate(parts):
        name = f"part-{k:05d}.arrow"
        os.replace(f, tmp / "data" / name)
        names.append(name)
    shutil.rmtree(tmp / ".build", ignore_errors=True)
    (tmp / "fingerprint.json").write_text(json.dumps({**record, "parts": names, "sizes": _sizes(tmp / "data")},
                                                     indent=1))


def _load(folder: Path) -> Any:
    """The committed shards, memory-mapped, in order, as one dataset."""
    from datasets import Dataset, concatenate_datasets

    parts = json.loads((folder / "fingerprint.json").read_text())["parts"]
    shards = [Dataset.from_file(str(folder / "data" / p)) for p in parts]
    return shards[0] if len(shards) == 1 else concatenate_datasets(shards)


def _sizes(data: Path) -> dict[str, int]:
    """Byte size of every file of a saved dataset: a cache truncated after its commit is caught on load."""
    return {str(p.relative_to(data)): p.stat().st_size for p in sorted(data.rglob("*")) if p.is_file()}


def _valid(folder: Path, key: str) -> bool:
    """A committed cache whose recorded fingerprint is its key; a torn or mismatched one is removed."""
    if not folder.exists():
        return False
    try:
        recorded = json.loads((folder / "fingerprint.json").read_text())
        ok = (folder / MARKER).exists() and recorded["key"] == key and recorded["sizes"] == _sizes(folder / "data")
    except (OSError, ValueError, KeyError):
        ok = False
    if not ok:
        log.warning("tokenised cache %s is incomplete, truncated or was built from other inputs: rebuilding it",
                    folder)
        shutil.rmtree(folder, ignore_errors=True)
    return ok


def _doc_ranges(ranges: list[tuple[str, int, int]], tokenizer: Any) -> Any:
    """Documents → token ids (+ EOS, BOS when the tokenizer adds one), a batch per tokenizer call."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False) \
        else []
    for batch in _batches(ranges):
        for row, ids in zip(batch, tokenizer([r["text"] for r in batch], add_special_tokens=False)["input_ids"],
                            strict=True):
            full = [*bos, *ids, tokenizer.eos_token_id]
            yield {"input_ids": full, "labels": full, "length": len(full),
                   "dataset": row.get("meta", {}).get("dataset", "")}


def documents(files: list[str], tokenizer: Any, template: Any, root: Path, workers: int) -> Any:
    """Pretraining documents tokenised (one row per document) into the cache, like `encoded`."""
    return _build(files, tokenizer, template, {"stage": "pt"}, root, workers, _doc_ranges, {"tokenizer": tokenizer})


def _record_ranges(ranges: list[tuple[str, int, int]], keys: tuple[str, ...], kto: bool) -> Any:
    """Prepared rows reduced to the fields a TRL trainer reads (+ the dataset name and a length of 1)."""
    for path, start, end in ranges:
        for row in _lines(path, start, end):
            name = row.get("meta", {}).get("dataset", "")
            if kto:  # each pair becomes one desirable and one undesirable example
                for key in ("chosen", "rejected"):
                    yield {"prompt": row["prompt"], "completion": row[key], "label": key == "chosen",
                           "dataset": name, "length": 1}
            elif keys == ("prompt",) and "messages" in row:  # GRPO prompts from conversations
                yield {"prompt": row["messages"][:-1], "dataset": name, "length": 1}
            else:
                yield {**{k: row[k] for k in keys}, "dataset": name, "length": 1}


def records(files: list[str], keys: list[str], root: Path, workers: int, kto: bool = False) -> Any:
    """Prepared rows as a memory-mapped Arrow dataset for the stages TRL tokenises itself (rm, dpo, orpo,
    simpo, kto: pairs; grpo: prompts), cached like the token ids; TRL's own `map` then caches its ids
    beside it. Keyed by the files' content and the fields kept."""
    key = _digest(files, {"keys": keys, "kto": kto}).hexdigest()[:16]
    # a tuple: datasets shards every list in gen_kwargs across processes
    return _cached(root / f"rows-{key}", files, workers, _record_ranges, {"keys": tuple(keys), "kto": kto},
                   {"files": files, "keys": keys})
