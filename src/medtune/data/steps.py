"""Cleaning steps: small functions `row → row | None`, configured as a list in `data.steps`.

    data:
      steps:
        - normalize                      # full-width letters/digits → half-width, control chars, spaces
        - length: {min_answer: 10, max_answer: 4000}
        - language: {min_cjk_ratio: 0.3}
        - quality: {min_content: 8}      # drop boilerplate-only answers (quality_rules.yaml)
        - redact                         # PII/PHI → consistent placeholders (medtune.data.pii)

Each step returns `(row, None)` unchanged, `(row, reason)` changed (counted as such), or
`(None, reason)` dropped. `stats` collects audit counts (e.g. PII replaced per type).
Steps see every text of a row: messages, preference prompt/answers, or pretraining text.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from medtune.data import pii
from medtune.errors import ConfigError
from medtune.registry import Registry

STEPS = Registry("cleaning step")
Row = dict[str, Any]
Step = Callable[[Row, Counter], tuple[Row | None, str | None]]


def build(config: list[Any]) -> list[tuple[str, Step]]:
    """`data.steps` entries (a name, or {name: options}) → named step functions."""
    steps = []
    for entry in config:
        name, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
        if not isinstance(options, dict):
            raise ConfigError(f"data.steps: options of {name!r} must be a mapping, got {options!r}.")
        try:
            steps.append((name, STEPS.get(name)(**options)))
        except TypeError as e:
            raise ConfigError(f"data.steps: bad options for {name!r}: {e}") from None
    return steps


def texts(row: Row, role: str | None = None) -> list[str]:
    """The texts of a row (optionally only one role's)."""
    if "text" in row:
        return [row["text"]] if role in (None, "user") else []
    turns = row.get("messages") or [*row.get("prompt", []), *row.get("chosen", []), *row.get("rejected", [])]
    return [m["content"] for m in turns if role is None or m["role"] == role]


def map_texts(row: Row, fn: Callable[[str], str]) -> Row:
    """A copy of `row` with `fn` applied to every text (an assistant's reasoning too: redaction covers it)."""
    if "text" in row:
        return {**row, "text": fn(row["text"])}
    out = dict(row)
    for key in ("messages", "prompt", "chosen", "rejected"):
        if key in row:
            out[key] = [{**m, "content": fn(m["content"]),
                         **({"reasoning_content": fn(m["reasoning_content"])} if "reasoning_content" in m else {})}
                        for m in row[key]]
    return out


_FULL_WIDTH = {c: c - 0xFEE0 for c in [*range(0xFF10, 0xFF1A), *range(0xFF21, 0xFF3B), *range(0xFF41, 0xFF5B)]}
_FULL_WIDTH[0x3000] = 0x20  # ideographic space
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\ufeff]")
_SPACES = re.compile(r"[ \t]{2,}")
_LATIN1 = re.compile(r"[\u0080-\u00ff]")


@STEPS.register("normalize", "repair mojibake, full-width letters/digits → half-width, control characters out, spaces collapsed")
def normalize(keep_punctuation: bool = True, fix_encoding: bool = True) -> Step:
    """Chinese punctuation (，。？) is kept: NFKC would turn it into ASCII and change the text's style.
    Mojibake (UTF-8 read as Latin-1/cp1252: é«\x98è¡\x80… → 高血压) is repaired with ftfy's
    fix_encoding when ftfy is installed; UTF-8 misread as GBK loses bytes and cannot be repaired."""
    try:
        from ftfy import fix_encoding as repair
    except ImportError:
        repair = None

    def fix(text: str) -> str:
        # Only text with Latin-1 range characters can be mojibake of UTF-8 (its lead bytes land there);
        # checking first keeps ftfy's ~15 µs per text off clean rows.
        if fix_encoding and repair is not None and _LATIN1.search(text):
            text = repair(text)
        text = unicodedata.normalize("NFC", text)
        text = text.translate(_FULL_WIDTH) if keep_punctuation else unicodedata.normalize("NFKC", text)
        return _SPACES.sub(" ", _CONTROL.sub("", text)).strip()

    def step(row: Row, stats: Counter) -> tuple[Row | None, str | None]:
        new = map_texts(row, fix)
        return new, ("normalized" if new != row else None)

    return step


@STEPS.register("length", "drop rows whose questions or answers are too short or too long (characters)")
def length(min_question: int = 2, max_question: int = 4000, min_answer: int = 2, max_answer: int = 8000) -> Step:
    def step(row: Row, stats: Counter) -> tuple[Row | None, str | None]:
        if "text" in row:
            n = len(row["text"])
            return (row, None) if min_answer <= n <= max_answer else (None, "length_text")
        for role, lo, hi in (("user", min_question, max_question), ("assistant", min_answer, max_answer)):
            for t in texts(row, role):
                if len(t) < lo:
                    return None, f"too_short_{'question' if role == 'user' else 'answer'}"
                if len(t) > hi:
                    return None, f"too_long_{'question' if role == 'user' else 'answer'}"
        return row, None

    return step


_CJK = re.compile(r"[\u4e00-\u9fff]")
_LETTERS = re.compile(r"[\u4e00-\u9fffA-Za-z]")


@STEPS.register("language", "drop rows whose share of Chinese characters (among letters) is below min_cjk_ratio")
def language(min_cjk_ratio: float = 0.3) -> Step:
    def step(row: Row, stats: Counter) -> tuple[Row | None, str | None]:
        joined = "".join(texts(row))
        letters = len(_LETTERS.findall(joined))
        if letters and len(_CJK.findall(joined)) / letters < min_cjk_ratio:
            return None, "not_chinese"
        return row, None

    return step


@STEPS.register("quality", "drop answers that are only thanks / 'see a doctor' boilerplate (quality_rules.yaml)")
def quality(min_content: int = 8, rules: str | None = None) -> Step:
    path = Path(rules) if rules else Path(__file__).parent / "quality_rules.yaml"
    patterns = [re.compile(p) for p in yaml.safe_load(path.read_text(encoding="utf-8"))["boilerplate"]]
    punct = re.compile(r"[\s，。、！？!?,.；;：:~～…]+")

    def content(text: str) -> str:
        for p in patterns:
            text = p.sub("", text)
        return punct.sub("", text)

    def step(row: Row, stats: Counter) -> tuple[Row | None, str | None]:
        answers = texts(row, "assistant")
        if answers and any(len(content(a)) < min_content for a in answers):
            return None, "boilerplate_answer"
        return row, None

    return step


@STEPS.register("redact", "replace PII/PHI with consistent placeholders (<NAME_1>, <PHONE_1>, …); audit counts per type")
def redact(model: str | None = None, labels: dict[str, str] | None = None, min_score: float = 0.5) -> Step:
    """`redact`, or `{redact: {model: PATH}}` to add a token-classification model's entities to the rules'
    (`labels` maps its entity names to medtune's types; see pii.MODEL_LABELS)."""
    detector = pii.ModelDetector(model, labels, min_score) if model else None

    def step(row: Row, stats: Counter) -> tuple[Row | None, str | None]:
        placeholders: dict[tuple[str, str], str] = {}  # one numbering per document
        counts: Counter[str] = Counter()

        def fix(text: str) -> str:
            new, c = pii.redact(text, placeholders, detector)
            counts.update(c)
            return new

        new = map_texts(row, fix)
        stats.update({f"pii_{k}": v for k, v in counts.items()})
        return new, ("redacted" if counts else None)

    return step
