"""Retrievers over a built index folder: BM25 (bm25s over jieba words), dense (a sentence-transformers
model folder + a faiss inner-product index over normalised embeddings) and hybrid (reciprocal rank
fusion of both). `KnowledgeBase.open` refuses an index built with another segmenter or embedding
model than the one in use: its scores would be meaningless, and silently so.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from medtune.errors import ConfigError
from medtune.registry import Registry

RETRIEVERS = Registry("retriever")
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009)
FORMAT = 1


def segmenter_name() -> str:
    import jieba

    return f"jieba {jieba.__version__} search-mode, lowercased, punctuation dropped"


def words(text: str) -> list[str]:
    """BM25's terms: jieba's search-mode words (long words and their sub-words), lowercased, no punctuation."""
    import jieba

    jieba.setLogLevel(60)
    return [w for w in (x.strip().lower() for x in jieba.lcut_for_search(text)) if w and not _punct(w)]


def _punct(word: str) -> bool:
    return all(unicodedata.category(c)[0] in "PSZ" for c in word)


@dataclass
class Hit:
    chunk: dict[str, Any]
    score: float
    rank: int

    def citation(self) -> dict[str, Any]:
        """What a reader needs to check an answer: the chunk's id, text and where it is in which file."""
        c = self.chunk
        out = {"id": c["id"], "title": c["title"], "source": c["source"], "score": round(self.score, 4),
               "text": c["text"]}
        for key in ("line", "page", "doc"):
            if c.get(key) is not None:
                out[key] = c[key]
        return out

    def where(self) -> str:
        c = self.chunk
        at = f", page {c['page']}" if c.get("page") else f", line {c['line']}" if c.get("line") else ""
        return f"{c['title']} ({c['source']}{at})"


class KnowledgeBase:
    """A built index folder, opened for search."""

    def __init__(self, folder: Path, manifest: dict[str, Any], chunks: list[dict[str, Any]],
                 embedding_model: str | None) -> None:
        self.folder, self.manifest, self.chunks = folder, manifest, chunks
        self.embedding_model = embedding_model
        self._bm25: Any = None
        self._dense: Any = None

    @classmethod
    def open(cls, folder: str | Path, embedding_model: str | None = None) -> KnowledgeBase:
        from medtune.folders import require_complete

        d = Path(folder)
        if not (d / "manifest.json").is_file():
            raise ConfigError(f"kb.index {str(d)!r} is not a knowledge base folder (no manifest.json). Build it "
                              "with `medtune kb CONFIG` first.")
        require_complete(d, "knowledge base")
        manifest = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT:
            raise ConfigError(f"{d} was written by another medtune version (format {manifest.get('format')}); "
                              "rebuild it with `medtune kb CONFIG`.")
        if manifest["segmenter"] != segmenter_name():
            raise ConfigError(f"{d} was segmented with {manifest['segmenter']!r}, but this installation segments "
                              f"with {segmenter_name()!r}: BM25 scores would not match its words. Rebuild the "
                              "index with `medtune kb CONFIG`.")
        built = (manifest.get("embedding") or {}).get("model")
        if embedding_model and built and Path(built) != Path(embedding_model):
            raise ConfigError(f"{d} holds embeddings of {built}, but kb.embedding_model is {embedding_model}: "
                              "queries and passages would live in different spaces. Rebuild with `medtune kb CONFIG` "
                              "or set kb.embedding_model back.")
        chunks = [json.loads(x) for x in (d / "chunks.jsonl").read_text(encoding="utf-8").splitlines() if x]
        return cls(d, manifest, chunks, embedding_model or built)

    def search(self, query: str, k: int, retriever: str = "bm25") -> list[Hit]:
        if not self.chunks or k < 1:
            return []
        return RETRIEVERS.get(retriever)(self, query, k)

    # -- the two underlying indexes, loaded on first use --
    def bm25(self) -> Any:
        if self._bm25 is None:
            import bm25s

            self._bm25 = bm25s.BM25.load(str(self.folder / "bm25"))
        return self._bm25

    def dense(self) -> tuple[Any, Any]:
        if self._dense is None:
            if not (self.folder / "dense.faiss").is_file():
                raise ConfigError(f"{self.folder} has no dense index: set kb.embedding_model (a sentence-transformers "
                                  "model folder) and rebuild with `medtune kb CONFIG`, or use kb.retriever: bm25.")
            import faiss

            self._dense = (faiss.read_index(str(self.folder / "dense.faiss")), encoder(self.embedding_model))
        return self._dense


@lru_cache(maxsize=2)
def encoder(path: str | None) -> Any:
    if not path:
        raise ConfigError("Dense retrieval needs kb.embedding_model: a sentence-transformers model folder.")
    if not Path(path).exists():
        raise ConfigError(f"kb.embedding_model {path!r} does not exist. Point it at a local sentence-transformers "
                          "model folder (models are not downloaded at run time).")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError("Dense retrieval needs sentence-transformers and faiss: pip install 'medtune[kb]'.") from None
    return SentenceTransformer(str(path), device="cpu")


def embed(model: Any, texts: list[str], batch_size: int = 32) -> Any:
    import numpy as np

    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    return np.ascontiguousarray(vectors, dtype="float32")


@RETRIEVERS.register("bm25", "BM25 (bm25s) over jieba words: no model, exact terms such as drug names")
def bm25(kb: KnowledgeBase, query: str, k: int) -> list[Hit]:
    terms = words(query)
    if not terms:
        return []
    ids, scores = kb.bm25().retrieve([terms], k=min(k, len(kb.chunks)), show_progress=False)
    return [Hit(kb.chunks[int(i)], float(s), r) for r, (i, s) in enumerate(zip(ids[0], scores[0], strict=True), 1)
            if s > 0]


@RETRIEVERS.register("dense", "cosine similarity of sentence-transformers embeddings (faiss): paraphrases")
def dense(kb: KnowledgeBase, query: str, k: int) -> list[Hit]:
    index, model = kb.dense()
    scores, ids = index.search(embed(model, [query]), min(k, len(kb.chunks)))
    return [Hit(kb.chunks[int(i)], float(s), r) for r, (i, s) in enumerate(zip(ids[0], scores[0], strict=True), 1)
            if i >= 0]


@RETRIEVERS.register("hybrid", "reciprocal rank fusion of bm25 and dense")
def hybrid(kb: KnowledgeBase, query: str, k: int) -> list[Hit]:
    fused: dict[str, float] = {}
    chunks: dict[str, dict[str, Any]] = {}
    for hits in (bm25(kb, query, 4 * k), dense(kb, query, 4 * k)):
        for h in hits:
            fused[h.chunk["id"]] = fused.get(h.chunk["id"], 0.0) + 1.0 / (RRF_K + h.rank)
            chunks[h.chunk["id"]] = h.chunk
    best = sorted(fused, key=lambda i: -fused[i])[:k]
    return [Hit(chunks[i], fused[i], r) for r, i in enumerate(best, 1)]


def clip_query(query: str, limit: int) -> str:
    """Queries are clipped (a pasted record can be thousands of characters): BM25 on its start is enough."""
    return re.sub(r"\s+", " ", query).strip()[:limit]
