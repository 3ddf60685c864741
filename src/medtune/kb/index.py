"""`medtune kb CONFIG`: documents → an index folder, rebuilt incrementally.

    manifest.json   format, segmenter, embedding model and dimension, chunking, one entry per document
                    (sha256, chunk count): what the next build compares against
    chunks.jsonl    one chunk per line: id, text, title, source file, line or page, its document's id,
                    and its BM25 words (so an unchanged document is never segmented again)
    bm25/           the bm25s index over those words
    embeddings.npy  + dense.faiss   with kb.embedding_model: normalised embeddings, one row per chunk
    skipped.jsonl   documents and records that gave no text, with the reason
    report.json     what this build did: documents added / changed / removed / unchanged, chunks, skips

A rebuild reads and chunks only new or changed documents (by sha256), and embeds only their chunks;
BM25's statistics are corpus-wide, so its index is recomputed from the stored words (seconds at 100k
chunks). The folder is built aside and swapped in whole (`medtune.folders.staged`): a failed build
leaves the previous index.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from medtune.data.io import file_sha256
from medtune.errors import ConfigError
from medtune.folders import staged
from medtune.kb import documents
from medtune.kb.chunking import chunk
from medtune.kb.retrieve import FORMAT, embed, encoder, segmenter_name, words
from medtune.schema import KbConfig

log = logging.getLogger(__name__)


def build(kb: KbConfig) -> dict[str, Any]:
    if not kb.documents:
        raise ConfigError("kb.documents is empty: list the files or folders (txt, md, jsonl, json, pdf) to index.")
    if not kb.index:
        raise ConfigError("kb.index is not set: the folder to write the knowledge base to, e.g. kb.index=outputs/kb.")
    if not 0 <= kb.overlap_chars < kb.chunk_chars:
        raise ConfigError(f"kb.overlap_chars ({kb.overlap_chars}) must be at least 0 and below kb.chunk_chars "
                          f"({kb.chunk_chars}).")
    started = time.time()
    out = Path(kb.index)
    old = _previous(out, kb)
    files = documents.expand(kb.documents)
    fields = documents.Fields(kb.text_field, kb.title_field, kb.id_field)
    base = _common_root(files)
    entries: dict[str, Any] = {}
    chunks: list[dict[str, Any]] = []
    vectors: list[Any] = []  # per chunk: a reused embedding row, or None (to embed)
    skipped: list[dict[str, Any]] = []
    seen: dict[str, str] = {}  # content hash → the first document with it
    status = Counter()
    for path in files:
        name = str(path.relative_to(base)) if base else str(path)
        sha = file_sha256(path)
        if sha in seen:
            skipped.append({"file": name, "reason": "duplicate_document", "detail": f"same bytes as {seen[sha]}"})
            continue
        seen[sha] = name
        prior = old["documents"].get(name)
        if prior and prior["sha256"] == sha:
            mine = old["chunks"].get(name, [])
            chunks += mine
            vectors += [old["vectors"][c["n"]] if old["vectors"] is not None else None for c in mine]
            skipped += prior.get("skipped", [])
            entries[name] = prior
            status["unchanged"] += 1
            continue
        status["changed" if prior else "added"] += 1
        try:
            passages, skips = documents.read(path, fields)
        except documents.Skip as e:
            skipped.append({"file": name, "reason": e.reason, "detail": e.detail})
            entries[name] = {"sha256": sha, "chunks": 0, "skipped": [skipped[-1]]}
            continue
        for s in skips:
            s["file"] = name
        mine = _chunks(name, passages, kb)
        chunks += mine
        vectors += [None] * len(mine)
        skipped += skips
        entries[name] = {"sha256": sha, "chunks": len(mine), "skipped": skips}
    status["removed"] = len(set(old["documents"]) - set(entries) - {s["file"] for s in skipped})
    if not chunks:
        raise ConfigError(f"kb.documents: no text in any of the {len(files)} file(s) "
                          f"({dict(Counter(s['reason'] for s in skipped)) or 'no files'}). Nothing was written.")
    for n, c in enumerate(chunks):
        c["n"] = n
    report = {"documents": sum(1 for e in entries.values() if e["chunks"]), "chunks": len(chunks), "added": status["added"], "changed": status["changed"],
              "unchanged": status["unchanged"], "removed": status["removed"],
              "skipped": dict(Counter(s["reason"] for s in skipped)), "embedded": 0}
    with staged(out) as tmp:
        _write_bm25(tmp, chunks)
        embedding = None
        if kb.embedding_model:
            embedding, report["embedded"] = _write_dense(tmp, chunks, vectors, kb.embedding_model)
        manifest = {"format": FORMAT, "segmenter": segmenter_name(), "embedding": embedding,
                    "chunking": _chunking(kb),
                    "fields": vars(fields), "root": str(base) if base else None, "documents": entries}
        (tmp / "chunks.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chunks),
                                          encoding="utf-8")
        (tmp / "skipped.jsonl").write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in skipped),
                                           encoding="utf-8")
        (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
        report["seconds"] = round(time.time() - started, 2)
        (tmp / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    log.info("knowledge base %s: %s", out, report)
    return {**report, "index": str(out)}


def _chunks(name: str, passages: list[documents.Passage], kb: KbConfig) -> list[dict[str, Any]]:
    out = []
    for p in passages:
        for text in chunk(p.text, kb.chunk_chars, kb.overlap_chars):
            c = {"id": f"{name}#{len(out)}", "text": text, "title": p.title, "source": name, "line": p.line,
                 "page": p.page, "doc": p.doc, "words": words(f"{p.title} {text}")}
            out.append({k: v for k, v in c.items() if v is not None})
    return out


def _chunking(kb: KbConfig) -> dict[str, Any]:
    """What a document's chunks depend on besides its bytes: a change re-reads every document."""
    return {"chunk_chars": kb.chunk_chars, "overlap_chars": kb.overlap_chars, "readers": documents.VERSION}


def _previous(out: Path, kb: KbConfig) -> dict[str, Any]:
    """The last complete build's documents, chunks and embeddings, when its settings still hold."""
    empty = {"documents": {}, "chunks": {}, "vectors": None}
    if not (out / "manifest.json").is_file() or not (out / "COMPLETE").is_file():
        return empty
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    same = (manifest.get("format") == FORMAT and manifest.get("segmenter") == segmenter_name()
            and manifest.get("chunking") == _chunking(kb)
            and manifest.get("fields") == vars(documents.Fields(kb.text_field, kb.title_field, kb.id_field)))
    if not same:
        log.info("%s: segmenter, chunking, readers or fields changed: re-reading every document", out)
        return empty
    by_doc: dict[str, list[dict[str, Any]]] = {}
    for line in (out / "chunks.jsonl").read_text(encoding="utf-8").splitlines():
        c = json.loads(line)
        by_doc.setdefault(c["source"], []).append(c)
    vectors = None
    built = (manifest.get("embedding") or {}).get("model")
    if kb.embedding_model and built == str(kb.embedding_model) and (out / "embeddings.npy").is_file():
        import numpy as np

        vectors = np.load(out / "embeddings.npy")
    return {"documents": manifest["documents"], "chunks": by_doc, "vectors": vectors}


def _write_bm25(folder: Path, chunks: list[dict[str, Any]]) -> None:
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    retriever = bm25s.BM25()
    retriever.index([c["words"] or ["∅"] for c in chunks], show_progress=False)
    retriever.save(str(folder / "bm25"))


def _write_dense(folder: Path, chunks: list[dict[str, Any]], reused: list[Any], model_path: str) -> tuple[dict, int]:
    import faiss
    import numpy as np

    todo = [i for i, v in enumerate(reused) if v is None]
    model = encoder(str(model_path))
    fresh = embed(model, [f"{chunks[i]['title']} {chunks[i]['text']}" for i in todo]) if todo else None
    dim = fresh.shape[1] if fresh is not None else len(next(v for v in reused if v is not None))
    matrix = np.zeros((len(chunks), dim), dtype="float32")
    for i, v in enumerate(reused):
        if v is not None:
            matrix[i] = v
    if fresh is not None:
        matrix[todo] = fresh
    np.save(folder / "embeddings.npy", matrix)
    index = faiss.IndexFlatIP(dim)
    index.add(matrix)
    faiss.write_index(index, str(folder / "dense.faiss"))
    return {"model": str(model_path), "dim": int(dim)}, len(todo)


def _common_root(files: list[Path]) -> Path | None:
    """Documents are named relative to their common folder, so a moved knowledge base keeps its ids."""
    import os

    if not files:
        return None
    root = Path(os.path.commonpath([f.parent for f in files]))
    return root
