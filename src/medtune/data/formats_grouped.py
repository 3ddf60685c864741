"""Source formats that build an example from several files or rows: cMedQA2 and per-turn dialogues.

Registered in the same FORMATS registry as medtune.data.formats (which imports this module).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from medtune.data import io
from medtune.data.formats import (
    _SHAREGPT_ROLES,
    FORMATS,
    Item,
    WrongType,
    _check_turns,
    _columns,
    _field,
    _qa,
    _text,
)
from medtune.errors import DataError

if TYPE_CHECKING:
    from medtune.data.datasets import DatasetSpec


@FORMATS.register("cmedqa2", "cMedQA2 folder: question.csv, answer.csv, {train,dev,test}_candidates.txt (official split)")
def cmedqa2(spec: DatasetSpec) -> Iterator[Item]:
    """cMedQA2 with its official split honoured and every question in exactly one split.

    Options (registry `options:`): `answers` first | all | merge | longest; `instruction` none | pool |
    persona; `persona` (text); `splits` (which to emit, default all three). Each example gets
    `split` so `prepare` writes one file per split and `train` evaluates on `dev`.
    """
    root = Path(spec.path)
    policy = spec.options.get("answers", "first")
    mode = spec.options.get("instruction", "none")
    if policy not in ("first", "all", "merge", "longest") or mode not in ("none", "pool", "persona"):
        raise DataError(f"{spec.name}: options.answers must be first|all|merge|longest and options.instruction "
                        f"none|pool|persona; got answers={policy!r}, instruction={mode!r}.")
    prompts = yaml.safe_load((Path(__file__).parent / "prompts" / "cmedqa2.yaml").read_text(encoding="utf-8"))
    persona = spec.options.get("persona", prompts["persona"])
    wanted = spec.options.get("splits", ["train", "dev", "test"])

    split_of: dict[str, str] = {}
    conflicts: dict[str, list[str]] = {}
    if not any(_split_file(root, split) for split in ("train", "dev", "test")):
        raise DataError(f"{root}: no train/dev/test_candidates file (.txt, .csv or .zip): without them no question "
                        "has a split. A cMedQA2 folder holds question.csv, answer.csv and the three candidate files.")
    # Evaluation splits win a conflict: a question that is also listed for training must not leak.
    for split in ("test", "dev", "train"):
        for qid in _split_ids(root, split, spec.encoding):
            if qid in split_of and split_of[qid] != split:
                conflicts.setdefault(qid, [split_of[qid]]).append(split)
            split_of.setdefault(qid, split)

    answers: dict[str, list[str]] = {}
    answer_ids: dict[str, int] = {}
    for line, row in io.read_csv_records(_csv(root, "answer"), spec.encoding, ("ans_id", "question_id", "content")):
        if row["ans_id"] in answer_ids:
            raise DataError(f"{_csv(root, 'answer')}, line {line}: ans_id {row['ans_id']} already appears on line "
                            f"{answer_ids[row['ans_id']]}; answer ids must be unique. Fix or deduplicate the file.")
        answer_ids[row["ans_id"]] = line
        answers.setdefault(row["question_id"], []).append(_text(row["content"]))

    seen_questions: dict[str, int] = {}
    for line, row in io.read_csv_records(_csv(root, "question"), spec.encoding, ("question_id", "content")):
        where, qid = f"{_csv(root, 'question')}:{line}", row["question_id"]
        if qid in seen_questions:  # the same id twice: the first row stands, the later one is dropped
            yield Item(where, reason="duplicate_question_id", raw=row, detail={"first_line": seen_questions[qid]})
            continue
        seen_questions[qid] = line
        split = split_of.get(qid)
        meta = {"question_id": qid, "split": split}
        if split is None:
            yield Item(where, reason="not_in_any_split", raw=row)
            continue
        if split not in wanted:
            continue
        if qid in conflicts:
            meta["also_listed_in"] = conflicts[qid][1:]
        question = _text(row["content"])
        outs = [a for a in answers.get(qid, []) if a]
        if not outs:
            yield Item(where, reason="no_answer", raw=row)
            continue
        outs = {"first": outs[:1], "all": outs, "merge": ["\n".join(outs)],
                "longest": [max(outs, key=len)]}[policy]
        rng = random.Random(int(hashlib.md5(qid.encode()).hexdigest(), 16))  # stable per question
        for answer in outs:
            system, user = None, question
            if mode == "pool":
                user = f"{rng.choice(prompts['pool'])}\n{prompts['prefix']}{question}{prompts['suffix']}"
            elif mode == "persona":
                system = persona
            item = _qa(user, answer, where, row, system=system, meta=meta)
            if item.example:
                item.example["split"] = split
            yield item


def _csv(root: Path, stem: str) -> Path:
    for name in (f"{stem}.csv", f"{stem}.zip"):
        if (root / name).exists():
            return root / name
    raise DataError(f"{root}: no {stem}.csv (or {stem}.zip). A cMedQA2 folder holds question.csv, "
                    "answer.csv and the train/dev/test_candidates split files.")


def _split_file(root: Path, split: str) -> Path | None:
    return next((root / n for n in (f"{split}_candidates.txt", f"{split}_candidates.zip", f"{split}_candidates.csv")
                 if (root / n).exists()), None)


def _split_ids(root: Path, split: str, encoding: str) -> Iterator[str]:
    """Question ids of a split file, its schema checked: train lists (question_id, pos_ans_id, neg_ans_id),
    dev and test (question_id, ans_id, cnt, label) with labels 0 or 1."""
    path = _split_file(root, split)
    if path is None:
        return
    required = ("question_id", "pos_ans_id", "neg_ans_id") if split == "train" else ("question_id", "ans_id", "label")
    for line, row in io.read_csv_records(path, encoding, required):
        if split != "train" and row["label"].strip() not in ("0", "1"):
            raise DataError(f"{path}, line {line}: label {row['label']!r}; cMedQA2 candidate labels are 0 (a wrong "
                            "answer) or 1 (the right one). Fix the file.")
        yield row["question_id"]


@FORMATS.register("turns", "one row per turn (JSONL/CSV) with a dialogue id: rows sharing an id become one conversation")
def turns(spec: DatasetSpec) -> Iterator[Item]:
    """Multi-turn reconstruction where ids allow it.

    Each row holds one exchange (`question` + `answer`) or one message (`role` + `content`), a dialogue
    id (`dialogue_id`) and optionally a turn number (`turn`; file order otherwise). Rows of a dialogue
    must be contiguous, which is how dialogue dumps are written; a dialogue whose rows are split by
    another one cannot be rebuilt while streaming and stops with the two line numbers.
    """
    id_col, turn_col = spec.columns.get("dialogue_id", "dialogue_id"), spec.columns.get("turn", "turn")
    rows = (io.read_csv_records(spec.path, spec.encoding) if Path(spec.path).suffix == ".csv"
            else io.read_json_records(spec.path, spec.encoding))
    finished: dict[str, int] = {}
    current: str | None = None
    group: list[tuple[int, int, dict[str, Any]]] = []
    for line, row in rows:
        where = f"{spec.path}:{line}"
        key = str(_field(row, spec, "dialogue_id", where, default=id_col))
        if key != current:
            if current is not None:
                yield _dialogue(group, spec)
                finished[current] = group[-1][0]
            if key in finished:
                raise DataError(f"{where}: dialogue {key!r} continues after other dialogues (it ended at line "
                                f"{finished[key]}). Sort the file by {id_col!r} so each dialogue's rows are together.")
            current, group = key, []
        turn = row.get(turn_col)
        group.append((line, int(turn) if turn not in (None, "") else len(group), row))
    if current is not None:
        yield _dialogue(group, spec)


def _dialogue(group: list[tuple[int, int, dict[str, Any]]], spec: DatasetSpec) -> Item:
    try:
        return _rebuild(group, spec)
    except WrongType as e:
        first = group[0][0]
        return Item(f"{spec.path}:{first}", reason="wrong_type", raw=[g[2] for g in group],
                    detail={"field": e.column, "type": type(e.value).__name__})


def _rebuild(group: list[tuple[int, int, dict[str, Any]]], spec: DatasetSpec) -> Item:
    first = group[0][0]
    where = f"{spec.path}:{first}-{group[-1][0]}" if len(group) > 1 else f"{spec.path}:{first}"
    messages: list[dict[str, str]] = []
    for line, _, row in sorted(group, key=lambda g: g[1]):
        w = f"{spec.path}:{line}"
        if any(c in row for c in _columns(spec, "question", None)):
            messages += [{"role": "user", "content": _text(_field(row, spec, "question", w), "question")},
                         {"role": "assistant", "content": _text(_field(row, spec, "answer", w), "answer")}]
        else:
            role = _SHAREGPT_ROLES.get(_text(_field(row, spec, "role", w), "role"))
            if role is None:
                return Item(where, reason="unknown_role", raw=[g[2] for g in group])
            messages.append({"role": role, "content": _text(_field(row, spec, "content", w), "content")})
    return _check_turns(Item(where, {"messages": messages}, raw=[g[2] for g in group],
                             meta={"dialogue_id": str(_field(group[0][2], spec, "dialogue_id", where))}))
