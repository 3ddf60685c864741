"""Deduplication and decontamination: one index per run, shared across all datasets of a config.

The rule, the same for `data.engine: local` (in this process) and `datatrove` (scaled out): rows are
taken in config order (datasets, their shards, their lines) after the cleaning steps, and a row is a
duplicate when an EARLIER row has
- the same normalised text (case, whitespace and punctuation removed, so 头痛怎么办？ and 头痛 怎么办?
  collide): `duplicate_exact`, or
- the same value in one of the MinHash LSH bands over character n-grams (word-free, so it suits
  Chinese; Jaccard similarity ≥ `threshold` collides with high probability): `duplicate_near`.
`duplicate_of` names the earliest such row. "Earlier row", not "earlier kept row": the decision for
each band bucket is local (everything after the bucket's first row), so it partitions across machines
and needs no global state; a row that bridges two kept rows is dropped without unkeeping either.

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

import numpy as np

from medtune.data.steps import texts
from medtune.errors import ConfigError, DataError

_STRIP = re.compile(r"[\W_]+", re.UNICODE)
PRIME = np.uint64((1 << 61) - 1)  # the Mersenne prime of the universal hash family (as in datatrove)


def normalise(text: str) -> str:
    return _STRIP.sub("", text).lower()


def grams(text: str, n: int) -> set[str]:
    t = normalise(text)
    return {t[i:i + n] for i in range(max(1, len(t) - n + 1))} if t else set()


def band_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) with bands × rows ≤ num_perm minimising the false-positive plus
    false-negative area of the LSH S-curve around `threshold` (datasketch's choice, equal weights)."""
    s = np.linspace(0, 1, 401)
    best, params = None, (1, num_perm)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1 - (1 - s ** r) ** b  # probability that a pair of similarity s shares a band
            err = np.trapezoid(np.where(s < threshold, p, 0), s) + np.trapezoid(np.where(s >= threshold, 1 - p, 0), s)
            if best is None or err < best:
                best, params = err, (b, r)
    return params


class MinHasher:
    """MinHash band signatures: character `ngram`-grams of the normalised text, each hashed to 64 bits
    (blake2b), permuted by `(a·x + b) mod 2^61−1` with seeded parameters. Deterministic across processes
    and machines, so the scaled-out engine computes exactly the bands of the in-process one."""

    def __init__(self, threshold: float = 0.8, ngram: int = 5, num_perm: int = 64, seed: int = 1) -> None:
        if not 0 < threshold < 1 or ngram < 1 or num_perm < 2:
            raise ConfigError(f"data.dedup: threshold must be in (0, 1), ngram ≥ 1, num_perm ≥ 2; got "
                              f"threshold={threshold}, ngram={ngram}, num_perm={num_perm}.")
        self.ngram = ngram
        self.bands, self.rows = band_params(threshold, num_perm)
        gen = np.random.RandomState(seed)
        size = self.bands * self.rows
        self.a = gen.randint(1, PRIME, dtype=np.uint64, size=size)
        self.b = gen.randint(0, PRIME, dtype=np.uint64, size=size)

    def signature(self, text: str) -> np.ndarray:
        """(bands, rows) uint64, every value below 2^61−1. A text without n-grams hashes one empty gram."""
        shingles = np.fromiter((int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little")
                                for g in grams(text, self.ngram) or {""}), dtype=np.uint64)
        with np.errstate(over="ignore"):  # the products wrap modulo 2^64, as the hash family intends
            values = (shingles[:, None] * self.a + self.b) % PRIME
        return values.min(axis=0).reshape(self.bands, self.rows)


def exact_band(text: str, rows: int) -> np.ndarray:
    """The normalised text's digest as one more band of `rows` values (the exact-duplicate bucket)."""
    digest = hashlib.blake2b(normalise(text).encode(), digest_size=16).digest()  # 122 bits after the modulo
    band = np.zeros(rows, dtype=np.uint64)
    values = np.frombuffer(digest, dtype="<u8") % PRIME
    band[:min(rows, 2)] = values[:rows]
    return band


class Deduper:
    """In-process duplicate index (memory ≈ one entry per row and band: for small and mid-size data;
    `data.engine: datatrove` keeps the bands on disk)."""

    def __init__(self, exact: bool = True, near: bool = False, threshold: float = 0.8, ngram: int = 5,
                 num_perm: int = 64, on: str = "example") -> None:
        if on not in ("example", "question"):
            raise ConfigError(f"data.dedup.on must be example or question; got {on!r}.")
        self.exact, self.near, self.on = exact, near, on
        self.hasher = MinHasher(threshold, ngram, num_perm) if near else None
        self.rows = self.hasher.rows if self.hasher else 2
        self.first: dict[bytes, tuple[int, str]] = {}  # band key → (order, reference) of its first row
        self.count = 0  # rows checked

    def bands(self, key_text: str) -> list[tuple[str, np.ndarray]]:
        """(reason, band) for every bucket this text falls in: the exact one first, then the MinHash bands."""
        out = [("duplicate_exact", exact_band(key_text, self.rows))] if self.exact else []
        if self.hasher is not None:
            out += [("duplicate_near", band) for band in self.hasher.signature(key_text)]
        return out

    def check(self, key_text: str, where: str) -> tuple[str, str] | None:
        """(reason, reference of the earliest earlier row it duplicates), or None. Every row is indexed."""
        found: dict[str, tuple[int, str]] = {}
        for i, (reason, band) in enumerate(self.bands(key_text)):
            key = i.to_bytes(2, "little") + band.tobytes()
            if (hit := self.first.get(key)) is None:
                self.first[key] = (self.count, where)
            elif reason not in found or hit < found[reason]:
                found[reason] = hit
        self.count += 1
        for reason in ("duplicate_exact", "duplicate_near"):  # an exact copy is reported as exact
            if reason in found:
                return reason, found[reason][1]
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
