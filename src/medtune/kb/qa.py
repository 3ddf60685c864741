"""Grounded SFT data (kb.qa): QA pairs + the knowledge base → conversations whose user turn is exactly
what the engine will send at serving time for that question (the same retriever, top_k, context budget
and template), so the tuned model learns to answer from the passages it is given and to say so when
they do not hold the answer.

    input         JSONL rows: question, answer, passage (the gold passage's text, or the id of a knowledge-base
                  record (kb.id_field), chunk or document file)
    answerable    the retriever's top kb.top_k for the question, the gold chunk put in place of the last hit
                  when it was not retrieved; the other passages are hard negatives (they share its words)
    unanswerable  a seeded share (kb.qa.unanswerable) of input rows: the top kb.top_k from *other* documents,
                  answered with NOT_FOUND; and every question of kb.qa.absent (questions the documents
                  do not answer), with its plain top kb.top_k
    output        data.jsonl (format: openai; meta: source row, gold id, answerable, passage ids),
                  dropped.jsonl (by reason), datasets.yaml (a registry entry) and report.json
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from medtune.data.io import read_json_records
from medtune.errors import ConfigError
from medtune.folders import staged
from medtune.kb.ground import NOT_FOUND, Grounder
from medtune.kb.retrieve import Hit, words
from medtune.schema import KbConfig

DEPTH = 50  # how far down the ranking an unanswerable row looks for chunks of other documents


def output_dir(kb: KbConfig) -> Path:
    return Path(kb.qa.output) if kb.qa.output else Path(f"{kb.index}-qa")


def build_qa(kb: KbConfig) -> dict[str, Any]:
    q = kb.qa
    if not q.input and not q.absent:
        raise ConfigError("kb.qa.input is not set: a JSONL of question / answer / passage rows.")
    if not 0 <= q.unanswerable <= 1:
        raise ConfigError(f"kb.qa.unanswerable must be a share from 0 to 1; got {q.unanswerable}.")
    g = Grounder(kb)
    by_doc: dict[str, list[dict[str, Any]]] = {}
    for c in g.kb.chunks:
        for key in {c.get("doc"), c["source"]} - {None}:
            by_doc.setdefault(key, []).append(c)
    by_id = {c["id"]: c for c in g.kb.chunks}
    rows, dropped = [], []
    for line, r in read_json_records(q.input) if q.input else ():
        where = f"{q.input}:{line}"
        values = {f: r.get(f) if isinstance(r, dict) else None for f in (q.question_field, q.answer_field, q.passage_field)}
        if missing := [f for f, v in values.items() if not _text(v)]:
            dropped.append({"where": where, "reason": "missing_field", "detail": f"no usable {', '.join(missing)}"})
            continue
        question, answer, passage = (str(v).strip() for v in values.values())
        gold = _gold(passage, answer, by_doc, by_id)
        if gold is None:
            dropped.append({"where": where, "reason": "unknown_passage",
                            "detail": f"{passage[:40]!r} is neither a record, chunk or file id of {kb.index} nor text"})
            continue
        rng = random.Random(int(hashlib.sha256(f"{q.seed}:{where}".encode()).hexdigest()[:12], 16))
        if rng.random() < q.unanswerable:
            gold_doc = gold.get("doc") or gold["source"]
            hits = [h for h in g.retrieve(question, DEPTH) if (h.chunk.get("doc") or h.chunk["source"]) != gold_doc]
            rows.append(_row(g, question, NOT_FOUND, g.select(hits[: kb.top_k]), where, gold["id"]))
            continue
        hits = g.retrieve(question)
        if gold["id"] not in {h.chunk["id"] for h in hits}:
            hits = [*hits[: kb.top_k - 1], Hit(gold, 0.0, kb.top_k)]
        rows.append(_row(g, question, answer, g.select(hits), where, gold["id"]))
    for line, r in read_json_records(q.absent) if q.absent else ():
        question = r.get(q.question_field) if isinstance(r, dict) else None
        if not _text(question):
            dropped.append({"where": f"{q.absent}:{line}", "reason": "missing_field", "detail": f"no {q.question_field}"})
            continue
        rows.append(_row(g, str(question).strip(), NOT_FOUND, g.passages(str(question).strip()), f"{q.absent}:{line}", None))
    if not rows:
        raise ConfigError(f"kb.qa: no usable rows in {q.input or q.absent} "
                          f"({dict(Counter(d['reason'] for d in dropped))}). Nothing was written.")
    return _write(kb, rows, dropped)


def _row(g: Grounder, question: str, answer: str, hits: list[Hit], where: str, gold: str | None) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": g.render(question, hits)}, {"role": "assistant", "content": answer}],
            "meta": {"kb_qa": {"source": where, "gold": gold, "answerable": answer != NOT_FOUND,
                               "passages": [h.chunk["id"] for h in hits]}}}


def _write(kb: KbConfig, rows: list[dict[str, Any]], dropped: list[dict[str, Any]]) -> dict[str, Any]:
    q, out = kb.qa, output_dir(kb)
    report = {"rows": len(rows), "answerable": sum(r["meta"]["kb_qa"]["answerable"] for r in rows),
              "dropped": dict(Counter(d["reason"] for d in dropped)), "input": q.input, "absent": q.absent,
              "index": str(kb.index), "retriever": kb.retriever, "top_k": kb.top_k, "template": kb.template}
    with staged(out) as tmp:
        (tmp / "data.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        (tmp / "dropped.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dropped),
                                           encoding="utf-8")
        (tmp / "datasets.yaml").write_text(
            f"# Written by medtune kb: data.registries: [{out / 'datasets.yaml'}], data.datasets: [kb_qa]\n"
            f"kb_qa:\n  path: data.jsonl\n  format: openai\n"
            f"  license: that of {q.input or q.absent} and of the knowledge-base documents\n"
            f"  source: medtune kb qa from {q.input or q.absent} over {kb.index}\n", encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    return {**report, "output": str(out)}


def _text(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool) and bool(str(value).strip())


def _gold(passage: str, answer: str, by_doc: dict[str, list[dict[str, Any]]],
          by_id: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The gold chunk: a chunk id; of a record or file id, its chunk sharing most words with the answer;
    or the passage text itself (a chunk of its own, not in the index)."""
    if passage in by_id:
        return by_id[passage]
    if passage in by_doc:
        answer_words = set(words(answer))
        return max(by_doc[passage], key=lambda c: len(answer_words & set(c["words"])))
    if len(passage) >= 8:  # text, not a mistyped id
        return {"id": "passage:" + hashlib.sha256(passage.encode()).hexdigest()[:12], "text": passage,
                "title": "参考资料", "source": "input"}
    return None
