"""Passages → chunks of about `size` characters on sentence boundaries, consecutive chunks sharing up
to `overlap` characters (whole sentences), so an answer that straddles a boundary is whole in one.

Chinese sentences end at 。！？；… as well as the Western marks and at line breaks; a sentence longer
than `size` is cut at `size`. Sizes are characters, not tokens: the index does not depend on a model.
"""

from __future__ import annotations

import re

SENTENCE_END = re.compile(r"(?<=[。！？；!?;…])|(?<=\n)|(?<=[.] )")


def sentences(text: str) -> list[str]:
    """The sentences of a text, whitespace kept (joined back, they give the text)."""
    return [s for s in SENTENCE_END.split(text) if s.strip()]


def chunk(text: str, size: int, overlap: int) -> list[str]:
    """Chunks of at most `size` characters (a single longer sentence is cut); each after the first
    starts with the previous chunk's last sentences up to `overlap` characters."""
    pieces: list[str] = []
    for s in sentences(text):
        pieces += [s[i: i + size] for i in range(0, len(s), size)]
    chunks: list[str] = []
    current: list[str] = []
    for piece in pieces:
        if current and len("".join(current)) + len(piece) > size:
            chunks.append("".join(current).strip())
            carried: list[str] = []
            for prev in reversed(current):
                if len("".join(carried)) + len(prev) > overlap:
                    break
                carried.insert(0, prev)
            current = carried if len("".join(carried)) + len(piece) <= size else []
        current.append(piece)
    if current:
        chunks.append("".join(current).strip())
    return chunks
