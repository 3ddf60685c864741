"""Rubric tasks: open-ended medical conversations graded by a judge against criteria, not n-grams.

An item is a conversation for the model to answer and what the judge grades the answer by:

- `criteria`: binary criteria with points, as HealthBench writes them ("mentions that chest pain with
  sweating needs an emergency visit", +5; "recommends stopping the anticoagulant", −4). The item's
  score is the points of the criteria met over the positive points available; it can be negative,
  and the task's score is the mean clipped to [0, 1] (HealthBench's aggregate).
- `aspects`: 1–5 ratings against a reference solution, as CMB-Clin grades its cases (fluency,
  relevance, completeness, medical proficiency); the item's score is the mean rating / 5.

Formats (a task's `format:`):

    rubric       JSONL {id, question | messages, rubric: [{criterion, points}], reference?}
    healthbench  HealthBench JSONL {prompt_id, prompt: [{role, content}], rubrics: [{criterion, points, tags}]}
    cmb_clin     CMB-Clin JSON [{id, title, description, QA_pairs: [{question, answer}]}]: one item per
                 question, asked after the case and the earlier questions with their reference answers

A row that cannot be graded comes back as a `Dropped` with its reason, counted and written out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medtune.data import io
from medtune.errors import DataError
from medtune.eval.records import Dropped
from medtune.registry import Registry

RUBRIC_FORMATS = Registry("rubric format")
CMB_CLIN_ASPECTS = ("fluency", "relevance", "completeness", "proficiency")
ROLE_NAMES = {"system": "系统", "user": "用户", "assistant": "助手"}

Loaded = Iterator[dict[str, Any] | Dropped]


def load_rubric(fmt: str, path: Path) -> tuple[list[dict[str, Any]], list[Dropped]]:
    items: list[dict[str, Any]] = []
    dropped: list[Dropped] = []
    for x in RUBRIC_FORMATS.get(fmt)(path):
        (dropped if isinstance(x, Dropped) else items).append(x)
    if not items:
        raise DataError(f"{path}: no gradable item ({len(dropped)} dropped"
                        + (f", first: {dropped[0].where}: {dropped[0].reason}" if dropped else "")
                        + f"). A {fmt} row needs " + {"rubric": "question or messages and a rubric list of "
                                                                "{criterion, points}",
                                                      "healthbench": "prompt (messages) and rubrics",
                                                      "cmb_clin": "description and QA_pairs"}.get(fmt, "") + ".")
    return items, dropped


def conversation_text(messages: list[dict[str, str]]) -> str:
    """A conversation as the judge reads it: one "用户：…" / "助手：…" paragraph per turn."""
    return "\n".join(f"{ROLE_NAMES.get(m['role'], m['role'])}：{m['content']}" for m in messages)


def _messages(raw: Any) -> list[dict[str, str]] | str:
    """Chat messages ending with a user turn, or the reason they are not."""
    if not isinstance(raw, list) or not raw:
        return "messages is not a non-empty list"
    for m in raw:
        if not (isinstance(m, dict) and m.get("role") in ROLE_NAMES and isinstance(m.get("content"), str)):
            return "a message is not {role: system|user|assistant, content: text}"
    if raw[-1]["role"] != "user":
        return "the last message is not the user's: there is nothing for the model to answer"
    return [{"role": m["role"], "content": m["content"]} for m in raw]


def _criteria(raw: Any) -> list[dict[str, Any]] | str:
    if not isinstance(raw, list) or not raw:
        return "the rubric is not a non-empty list of {criterion, points}"
    out = []
    for c in raw:
        if not isinstance(c, dict) or not isinstance(c.get("criterion"), str) or not c["criterion"].strip():
            return "a rubric entry has no criterion text"
        points = c.get("points")
        if isinstance(points, bool) or not isinstance(points, int | float) or points == 0:
            return f"criterion {c['criterion'][:30]!r}: points must be a non-zero number, got {points!r}"
        out.append({"criterion": c["criterion"].strip(), "points": points})
    if not any(c["points"] > 0 for c in out):
        return "no criterion has positive points: the item has no score to earn"
    return out


def _item(where: str, raw: dict[str, Any], qid: str, messages: Any, criteria: Any = None,
          aspects: tuple[str, ...] = (), reference: Any = "") -> dict[str, Any] | Dropped:
    msgs = _messages(messages)
    if isinstance(msgs, str):
        return Dropped(where, msgs, raw)
    crit: list[dict[str, Any]] = []
    if not aspects:
        got = _criteria(criteria)
        if isinstance(got, str):
            return Dropped(where, got, raw)
        crit = got
    if reference is not None and not isinstance(reference, str):
        return Dropped(where, f"reference must be text, got {type(reference).__name__}", raw)
    if aspects and not (reference or "").strip():
        return Dropped(where, "no reference answer to rate the aspects against", raw)
    return {"id": qid, "messages": msgs, "question": conversation_text(msgs), "reference": reference or "",
            "criteria": crit, "aspects": list(aspects)}


@RUBRIC_FORMATS.register("rubric", "JSONL {id, question | messages, rubric: [{criterion, points}], reference?}")
def rubric(path: Path) -> Loaded:
    for line, row in io.read_json_records(path):
        where = f"{path}:{line}"
        q = row.get("question")
        messages = row.get("messages") if "messages" in row else (
            [{"role": "user", "content": q}] if isinstance(q, str) and q.strip() else None)
        if messages is None:
            yield Dropped(where, "no question (text) or messages", row)
            continue
        yield _item(where, row, str(row.get("id", f"{path.stem}-{line}")), messages, row.get("rubric"),
                    reference=row.get("reference", ""))


@RUBRIC_FORMATS.register("healthbench", "HealthBench JSONL {prompt_id, prompt: [messages], rubrics: [...]}")
def healthbench(path: Path) -> Loaded:
    for line, row in io.read_json_records(path):
        yield _item(f"{path}:{line}", row, str(row.get("prompt_id", f"{path.stem}-{line}")), row.get("prompt"),
                    row.get("rubrics"))


@RUBRIC_FORMATS.register("cmb_clin", "CMB-Clin JSON [{id, title, description, QA_pairs: [{question, answer}]}]")
def cmb_clin(path: Path) -> Loaded:
    try:
        cases = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a CMB-Clin JSON array ({e}). Fix or re-download the file.") from None
    if not isinstance(cases, list):
        raise DataError(f"{path}: CMB-Clin is a JSON array of cases; this file holds a {type(cases).__name__}.")
    for n, case in enumerate(cases):
        where = f"{path}[{n}]"
        if not isinstance(case, dict) or not isinstance(case.get("description"), str) \
                or not isinstance(case.get("QA_pairs"), list) or not case["QA_pairs"]:
            yield Dropped(where, "a case needs a description (text) and a non-empty QA_pairs list", case)
            continue
        history: list[dict[str, str]] = []
        for j, qa in enumerate(case["QA_pairs"]):
            if not isinstance(qa, dict) or not isinstance(qa.get("question"), str) \
                    or not isinstance(qa.get("answer"), str):
                yield Dropped(f"{where}.QA_pairs[{j}]", "a QA pair needs question and answer text", qa)
                break  # later questions build on this one's answer
            ask = (case["description"].strip() + "\n\n" + qa["question"]) if j == 0 else qa["question"]
            turn = [*history, {"role": "user", "content": ask}]
            yield _item(f"{where}.QA_pairs[{j}]", qa, f"{case.get('id', n)}-{j + 1}", turn,
                        aspects=CMB_CLIN_ASPECTS, reference=qa["answer"])
            history = [*turn, {"role": "assistant", "content": qa["answer"]}]


def criteria_score(criteria: list[dict[str, Any]], met: list[bool]) -> float:
    """HealthBench's per-item score: points of the criteria met / positive points available."""
    return sum(c["points"] for c, m in zip(criteria, met, strict=True) if m) / sum(
        c["points"] for c in criteria if c["points"] > 0)


def aspects_score(ratings: dict[str, int]) -> float:
    return sum(ratings.values()) / (5 * len(ratings))
