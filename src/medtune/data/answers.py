"""Several answers to one question (cMedQA2-style): keep the first, the longest, merge them, or keep all.

Two streaming passes over a dataset. The first indexes each normalised question (how many answers,
where the first, the last and the longest are): memory grows with distinct questions, not rows. The
second decides row by row; for `merge`, answers are held only while their question's group is still
open and the merged row is emitted at the group's last row. Rows not kept are dropped as
`merged_answer` with a pointer to the row that carries their question. Multi-turn rows pass through.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from medtune.data.dedup import normalise
from medtune.errors import ConfigError

POLICIES = ("all", "first", "longest", "merge")


@dataclass
class _Group:
    count: int = 0
    first: int = -1
    last: int = -1
    longest: int = -1
    longest_len: int = -1


def _qa(example: dict[str, Any] | None) -> tuple[str, str] | None:
    """(question, answer) of a single-turn example, else None."""
    if not example or "messages" not in example:
        return None
    body = [m for m in example["messages"] if m["role"] != "system"]
    if len(body) != 2:
        return None
    return body[0]["content"], body[1]["content"]


class AnswerGroups:
    def __init__(self, policy: str) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"data.answers must be one of {', '.join(POLICIES)}; got {policy!r}.")
        self.policy = policy
        self.groups: dict[str, _Group] = {}
        self.open: dict[str, list[str]] = {}

    def scan(self, items: Iterable[Any]) -> None:
        """First pass: index every single-turn row by its normalised question."""
        for index, item in enumerate(items):
            qa = _qa(item.example)
            if qa is None:
                continue
            g = self.groups.setdefault(normalise(qa[0]), _Group())
            g.count += 1
            g.first = index if g.first < 0 else g.first
            g.last = index
            if len(qa[1]) > g.longest_len:
                g.longest, g.longest_len = index, len(qa[1])

    def decide(self, index: int, example: dict[str, Any] | None) -> tuple[dict[str, Any] | None, int | None]:
        """Second pass: (row to keep, None), or (None, index of the row that carries this question)."""
        qa = _qa(example)
        if self.policy == "all" or qa is None:
            return example, None
        key = normalise(qa[0])
        g = self.groups[key]
        if g.count == 1:
            return example, None
        if self.policy in ("first", "longest"):
            keep = g.first if self.policy == "first" else g.longest
            return (example, None) if index == keep else (None, keep)
        answers = self.open.setdefault(key, [])  # merge
        answers.append(qa[1])
        if index != g.last:
            return None, g.last
        merged = "\n".join(self.open.pop(key))
        messages = [*example["messages"][:-1], {**example["messages"][-1], "content": merged}]
        return {**example, "messages": messages}, None
