"""Deduplication and decontamination: one index per run, shared across all datasets of a config.

Exact duplicates are found by a hash of the normalised text (case, whitespace and punctuation
removed, so 头痛怎么办？ and 头痛 怎么办? collide). Near duplicates are found by MinHash LSH over
character n-grams (datasketch): word-free, so it suits Chinese, and a few changed characters or
rephrased punctuation keep the Jaccard similarity above the threshold. The first occurrence is kept
(streaming; datasets are read in config order) and every dropped row records which row it duplicates.

GroupSplitter assigns train / dev / test by question group, exact and near-duplicate questions together.

Decontamination checks every training row against evaluation files (exam stems, QA test questions):
an exact normalised-stem match, or a share of the benchmark item's character n-grams found in the
row at or above `threshold`, marks the row; it is dropped or flagged per benchmark.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from medtune.data.steps import texts
from medtune.errors import ConfigError, DataError

_STRIP = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    return _STRIP.sub("", text).lower()


def grams(text: str, n: int) -> set[str]:
    t = normalise(text)
    return {t[i:i + n] for i in range(max(1, len(t) - n + 1))} if t else set()


class Deduper:
    def __init__(self, exact: bool = True, near: bool = False, threshold: float = 0.8, ngram: int = 5,
                 num_perm: int = 64, on: str = "example") -> None:
        if on not in ("example", "question"):
            raise ConfigError(f"data.dedup.on must be example or question; got {on!r}.")
        self.exact, self.near, self.ngram, self.num_perm, self.on = exact, near, ngram, num_perm, on
        self.seen: dict[bytes, str] = {}
        self.lsh = None
        if near:
            try:
                from datasketch import MinHash, MinHashLSH
            except ImportError:
                raise ConfigError("data.dedup.near needs datasketch: pip install 'medtune[data]'.") from None
            self.lsh, self.minhash = MinHashLSH(threshold=threshold, num_perm=num_perm), MinHash
        self.count = 0

    def check(self, key_text: str, where: str) -> tuple[str, str] | None:
        """(reason, where of the kept row it duplicates), or None and the row is indexed as kept."""
        digest = hashlib.blake2b(normalise(key_text).encode(), digest_size=12).digest()
        if self.exact and digest in self.seen:
            return "duplicate_exact", self.seen[digest]
        if self.lsh is not None:
            mh = self.minhash(num_perm=self.num_perm)
            mh.update_batch([g.encode() for g in grams(key_text, self.ngram)])
            hits = self.lsh.query(mh)
            if hits:
                return "duplicate_near", hits[0]
            self.lsh.insert(where, mh)
        self.seen[digest] = where
        self.count += 1
        return None


class Decontaminator:
    def __init__(self, benchmarks: list[str], ngram: int = 10, threshold: float = 0.5, action: str = "drop") -> None:
        if action not in ("drop", "flag"):
            raise ConfigError(f"data.decontaminate.action must be drop or flag; got {action!r}.")
        self.ngram, self.threshold, self.action = ngram, threshold, action
        self.exact: dict[str, str] = {}
        self.index: dict[str, set[tuple[str, int]]] = defaultdict(set)
        self.sizes: dict[tuple[str, int], int] = {}
        for path in benchmarks:
            name = Path(path).stem
            for i, stem in enumerate(_stems(Path(path))):
                self.exact.setdefault(normalise(stem), name)
                g = grams(stem, ngram)
                self.sizes[(name, i)] = len(g)
                for x in g:
                    self.index[x].add((name, i))

    def check(self, text: str) -> str | None:
        """The benchmark a training text overlaps with, or None."""
        if not self.sizes:
            return None
        if (name := self.exact.get(normalise(text))) is not None:  # the row is the stem
            return name
        hits: dict[tuple[str, int], int] = defaultdict(int)
        for g in grams(text, self.ngram):
            for item in self.index.get(g, ()):
                hits[item] += 1
        for item, n in hits.items():
            if n / max(self.sizes[item], 1) >= self.threshold:
                return item[0]
        return None


def _stems(path: Path) -> list[str]:
    """Question stems of an evaluation file: JSONL/JSON records with question / query / prompt / instruction."""
    if not path.is_file():
        raise ConfigError(f"data.decontaminate.benchmarks: {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not JSON or JSON Lines ({e}).") from None
    stems = []
    for i, r in enumerate(records, 1):
        stem = next((r[k] for k in ("question", "query", "prompt", "instruction", "Question") if isinstance(r, dict) and r.get(k)), None)
        if stem is None:
            raise DataError(f"{path}, record {i}: no question/query/prompt/instruction field to check against.")
        stems.append(str(stem))
    return stems


def key_text(row: dict[str, Any], on: str) -> str:
    """The text a row is deduplicated on: the first user turn (question) or everything (example)."""
    if on == "question":
        user = texts(row, "user")
        return user[0] if user else " ".join(texts(row))
    return "\n".join(texts(row))


class GroupSplitter:
    """train / dev / test by question group, so no question — nor a near-duplicate of it — sits in two
    splits. A question's split is a hash of its normalised text; with datasketch installed, a question
    that is a near-duplicate (MinHash LSH, Jaccard ≥ `threshold` on character n-grams) of an earlier
    one joins that one's split instead."""

    def __init__(self, shares: dict[str, float], threshold: float = 0.7, ngram: int = 4, num_perm: int = 64) -> None:
        shares = dict(shares)
        self.threshold = shares.pop("near_threshold", threshold)
        if set(shares) - {"dev", "test"} or sum(shares.values()) >= 1:
            raise ConfigError(f"data.split takes dev and test shares summing below 1 (and near_threshold); got {shares}.")
        self.dev, self.test, self.ngram, self.num_perm = shares.get("dev", 0.0), shares.get("test", 0.0), ngram, num_perm
        self.splits: list[str] = []
        self.exact: dict[bytes, str] = {}
        try:
            from datasketch import MinHash, MinHashLSH

            self.lsh, self.minhash = MinHashLSH(threshold=self.threshold, num_perm=num_perm), MinHash
        except ImportError:
            self.lsh = None

    def __call__(self, row: dict[str, Any]) -> str:
        question = key_text(row, "question")
        digest = hashlib.blake2b(normalise(question).encode(), digest_size=8).digest()
        if digest in self.exact:  # the same question (up to case, spaces, punctuation): same split
            return self.exact[digest]
        u = int.from_bytes(digest, "big") / 2**64
        split = "dev" if u < self.dev else "test" if u < self.dev + self.test else "train"
        if self.lsh is not None:
            mh = self.minhash(num_perm=self.num_perm)
            mh.update_batch([g.encode() for g in grams(question, self.ngram)])
            if hits := self.lsh.query(mh):
                split = self.splits[min(int(h) for h in hits)]  # the earliest near-duplicate's split
            else:
                self.lsh.insert(str(len(self.splits)), mh)
                self.splits.append(split)
        self.exact[digest] = split
        return split
