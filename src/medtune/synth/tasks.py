"""Synthesis tasks: source rows → a prompt (a Jinja file in synth/prompts) → parsed training examples.

Each task reads its own kind of source, renders its prompt, and parses the model's reply into
medtune's message shape, raising `Reject(reason)` when the reply is unusable. Parsers accept JSON
anywhere in the reply (models wrap it in prose or ```json fences), never guess at free text.

    self_instruct       passage → 1–N questions with answers grounded in the passage
    multi_turn          a single QA pair → a multi-turn doctor–patient consultation
    refusal             an out-of-scope or harmful request → a polite, helpful refusal
    kg_qa               knowledge-graph triples of one entity (疾病, 症状, 发热) → QA pairs
    report_structuring  an imaging report → structured fields (few-shot prompt)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from medtune.config import SynthConfig
from medtune.data import io
from medtune.errors import ConfigError, DataError
from medtune.registry import Registry

PROMPT_DIR = Path(__file__).parent / "prompts"
SYNTH_TASKS = Registry("synthesis task")
USER_ROLES = {"user", "patient", "患者", "病人", "用户"}
ASSISTANT_ROLES = {"assistant", "doctor", "医生", "助手"}


class Reject(Exception):
    """A reply that cannot become training data; `reason` names the rejection bucket."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


@dataclass
class Source:
    id: str  # stable hash of the task and the row's content: the resume key
    where: str  # file:line
    fields: dict[str, Any]


@dataclass
class SynthTask:
    name: str
    prompt: str  # default prompt file
    read: Callable[[Path, SynthConfig], Iterator[Source]]
    parse: Callable[[str, Source, SynthConfig], list[list[dict[str, str]]]]  # raises Reject for the whole reply
    # Per-conversation gate: a rejection reason, or None to keep it.
    check: Callable[[list[dict[str, str]], Source, SynthConfig], str | None] = lambda conv, s, cfg: None


def get(name: str) -> SynthTask:
    return SYNTH_TASKS.get(name)()


def source_id(task: str, fields: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps([task, fields], ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]


def prompt_source(task: SynthTask, cfg: SynthConfig) -> tuple[str, str]:
    """(file name, text) of the prompt this run uses."""
    path = Path(cfg.prompt) if cfg.prompt else PROMPT_DIR / task.prompt
    if not path.is_file():
        raise ConfigError(f"synth.prompt {str(path)!r} does not exist.")
    return str(path), path.read_text(encoding="utf-8")


def render(text: str, source: Source, cfg: SynthConfig) -> list[dict[str, str]]:
    content = _compile(text).render(**source.fields, n=cfg.questions_per_passage, turns=cfg.turns).strip()
    return [{"role": "user", "content": content}]


@lru_cache(maxsize=16)
def _compile(text: str):
    return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined
                                         ).from_string(text)


# ---- reading sources ----------------------------------------------------------------------------

def _rows(path: Path, cfg: SynthConfig, wanted: tuple[str, ...], task: str) -> Iterator[Source]:
    """JSONL/JSON or CSV rows with the task's fields (renamed through synth.fields)."""
    cols = {k: cfg.fields.get(k, k) for k in wanted}
    rows = io.read_csv_records(path) if path.suffix == ".csv" else io.read_json_records(path)
    for line, row in rows:
        missing = [c for c in cols.values() if not isinstance(row, dict) or c not in row]
        if missing:
            raise DataError(f"{path}:{line}: field {missing[0]!r} is missing (the row has "
                            f"{sorted(row) if isinstance(row, dict) else type(row).__name__}). Map it with "
                            f"synth.fields, e.g. {{{next(k for k, c in cols.items() if c == missing[0])}: <column>}}.")
        fields = {k: str(row[c]).strip() for k, c in cols.items()}
        yield Source(source_id(task, fields), f"{path}:{line}", fields)


def _texts(path: Path, cfg: SynthConfig, key: str, task: str) -> Iterator[Source]:
    """Plain text: paragraphs separated by blank lines (one per line when there are none); or JSONL."""
    if path.suffix not in (".txt", ".md"):
        yield from _rows(path, cfg, (key,), task)
        return
    lines = io.read_text(path).splitlines()
    by_paragraph = any(not line.strip() for line in lines)
    block: list[str] = []
    start = 0
    for i, line in enumerate([*lines, ""], 1):
        if line.strip():
            start = start if block else i
            block.append(line.strip())
            if by_paragraph:
                continue
        if block:
            fields = {key: "\n".join(block)}
            yield Source(source_id(task, fields), f"{path}:{start}", fields)
            block = []


def _triples(path: Path, cfg: SynthConfig, task: str) -> Iterator[Source]:
    """(head, relation, tail) rows grouped by head entity: one prompt per entity."""
    groups: dict[str, list[tuple[str, str]]] = {}
    first: dict[str, str] = {}
    for s in _rows(path, cfg, ("head", "relation", "tail"), task):
        groups.setdefault(s.fields["head"], []).append((s.fields["relation"], s.fields["tail"]))
        first.setdefault(s.fields["head"], s.where)
    for head, pairs in groups.items():
        fields = {"entity": head, "triples": [list(p) for p in pairs]}
        yield Source(source_id(task, fields), first[head], fields)


# ---- parsing replies ----------------------------------------------------------------------------

def find_json(reply: str, kind: type) -> Any:
    """The first JSON array/object in `reply` (fences and prose around it are fine)."""
    opener = "[" if kind is list else "{"
    decoder = json.JSONDecoder()
    for m in re.finditer(re.escape(opener), reply):
        try:
            value, _ = decoder.raw_decode(reply[m.start():])
        except json.JSONDecodeError:
            continue
        if isinstance(value, kind):
            return value
    raise Reject("no_json", f"no JSON {kind.__name__} in the reply")


def _qa_pairs(reply: str) -> list[list[dict[str, str]]]:
    pairs = find_json(reply, list)
    out = []
    for p in pairs:
        if not isinstance(p, dict) or not str(p.get("question", "")).strip() or not str(p.get("answer", "")).strip():
            raise Reject("bad_schema", "each item needs a non-empty question and answer")
        out.append([{"role": "user", "content": str(p["question"]).strip()},
                    {"role": "assistant", "content": str(p["answer"]).strip()}])
    if not out:
        raise Reject("empty")
    return out


def grounding(answer: str, source: str) -> float:
    """Share of the answer's character bigrams that occur in the source text."""
    a = {answer[i:i + 2] for i in range(len(answer) - 1) if not answer[i:i + 2].isspace()}
    return sum(g in source for g in a) / len(a) if a else 0.0


@SYNTH_TASKS.register("self_instruct", "passage (.txt paragraphs or JSONL `text`) → grounded QA pairs")
def _self_instruct() -> SynthTask:
    def check(conv: list[dict[str, str]], s: Source, cfg: SynthConfig) -> str | None:
        return "ungrounded" if grounding(conv[1]["content"], s.fields["text"]) < cfg.min_grounding else None

    return SynthTask("self_instruct", "self_instruct.jinja", lambda p, c: _texts(p, c, "text", "self_instruct"),
                     lambda reply, s, cfg: _qa_pairs(reply)[: cfg.questions_per_passage], check)


@SYNTH_TASKS.register("multi_turn", "QA pair (JSONL `question`, `answer`) → multi-turn consultation")
def _multi_turn() -> SynthTask:
    def parse(reply: str, s: Source, cfg: SynthConfig) -> list[list[dict[str, str]]]:
        turns = find_json(reply, list)
        messages = []
        for t in turns:
            role = str(t.get("role", "")).strip().lower() if isinstance(t, dict) else ""
            content = str(t.get("content", "")).strip() if isinstance(t, dict) else ""
            if role not in USER_ROLES | ASSISTANT_ROLES or not content:
                raise Reject("bad_schema", "each turn needs role 患者/医生 (user/assistant) and content")
            messages.append({"role": "user" if role in USER_ROLES else "assistant", "content": content})
        if len(messages) < 4 or any(m["role"] != ("user", "assistant")[i % 2] for i, m in enumerate(messages)) \
                or messages[-1]["role"] != "assistant":
            raise Reject("too_few_turns", "needs ≥ 2 alternating rounds, patient first, doctor last")
        return [messages]

    return SynthTask("multi_turn", "multi_turn.jinja",
                     lambda p, c: _rows(p, c, ("question", "answer"), "multi_turn"), parse)


@SYNTH_TASKS.register("refusal", "request (.txt lines or JSONL `prompt`) → polite refusal")
def _refusal() -> SynthTask:
    def parse(reply: str, s: Source, cfg: SynthConfig) -> list[list[dict[str, str]]]:
        text = reply.strip()
        if len(text) < 8:
            raise Reject("empty")
        if not _refusal_rules().refused(text):  # the same rules the eval's refusal rate uses
            raise Reject("not_a_refusal", "the reply does not decline (eval refusal rules)")
        return [[{"role": "user", "content": s.fields["prompt"]}, {"role": "assistant", "content": text}]]

    return SynthTask("refusal", "refusal.jinja", lambda p, c: _texts(p, c, "prompt", "refusal"), parse)


@SYNTH_TASKS.register("kg_qa", "triples (CSV/JSONL head, relation, tail), one prompt per entity → QA pairs")
def _kg_qa() -> SynthTask:
    def check(conv: list[dict[str, str]], s: Source, cfg: SynthConfig) -> str | None:
        # Grounded in the graph: the answer names at least one of the entity's facts.
        return None if any(tail in conv[1]["content"] for _, tail in s.fields["triples"]) else "ungrounded"

    return SynthTask("kg_qa", "kg_qa.jinja", lambda p, c: _triples(p, c, "kg_qa"),
                     lambda reply, s, cfg: _qa_pairs(reply)[: cfg.questions_per_passage], check)


@lru_cache(maxsize=1)
def _refusal_rules():
    from medtune.eval.safety import RefusalRules

    return RefusalRules.load()


REPORT_FIELDS = ("检查部位", "影像所见", "诊断意见")


@SYNTH_TASKS.register("report_structuring", "imaging report (.txt or JSONL `report`) → structured fields")
def _report() -> SynthTask:
    def parse(reply: str, s: Source, cfg: SynthConfig) -> list[list[dict[str, str]]]:
        obj = find_json(reply, dict)
        missing = [f for f in REPORT_FIELDS if not str(obj.get(f, "")).strip()]
        if missing:
            raise Reject("missing_fields", f"missing {missing}")
        if grounding("".join(str(obj[f]) for f in REPORT_FIELDS), s.fields["report"]) < cfg.min_grounding:
            raise Reject("ungrounded", "the fields do not come from the report")
        answer = json.dumps({f: obj[f] for f in REPORT_FIELDS}, ensure_ascii=False, indent=1)
        return [[{"role": "user", "content": f"请将以下影像报告整理为结构化字段（{'、'.join(REPORT_FIELDS)}），以 JSON 输出。\n"
                                              f"{s.fields['report']}"}, {"role": "assistant", "content": answer}]]

    return SynthTask("report_structuring", "report_structuring.jinja",
                     lambda p, c: _texts(p, c, "report", "report_structuring"), parse)
