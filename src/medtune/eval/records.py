"""Benchmark files → one record shape per task type. Nothing is downloaded: users point at files.

Multiple choice maps every benchmark to `MCItem(id, question, options{A..}, answer, meta)`, where
`answer` is one or more sorted letters ("C", "ACD") and `meta` keeps the breakdown fields
(exam_class, department, subject, ...). Loaders are registered by the `format:` name a task file uses:

    unified   JSONL/JSON {id, question, options{A..}, answer, meta?} (shared/data's dev samples)
    cmb       CMB-Exam {exam_type, exam_class, exam_subject, question_type, question, option{}, answer}
    cmexam    CMExam CSV: Question, Options ("A 文本" per line), Answer, annotation columns
    medqa     MedQA {question, options{}, answer (text), answer_idx, meta_info}
    cmmlu     CMMLU CSV (,Question,A,B,C,D,Answer); a file or a folder of <subject>.csv
    ceval     C-Eval CSV (id,question,A,B,C,D,answer,explanation); <subject>_{dev,val,test}.csv

A row that cannot be scored (no options, an answer letter that is not an option) is not silently
skipped: it comes back as a `Dropped(where, reason, raw)` and the run counts and writes it out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune.data import io
from medtune.errors import DataError
from medtune.registry import Registry

MC_FORMATS = Registry("multiple-choice format")


@dataclass
class MCItem:
    id: str
    question: str
    options: dict[str, str]
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def multi(self) -> bool:
        return len(self.answer) > 1


@dataclass
class Dropped:
    where: str
    reason: str
    raw: Any


Loaded = Iterator[MCItem | Dropped]


def load_mc(fmt: str, path: Path) -> tuple[list[MCItem], list[Dropped]]:
    items: list[MCItem] = []
    dropped: list[Dropped] = []
    for x in MC_FORMATS.get(fmt)(path):
        (items if isinstance(x, MCItem) else dropped).append(x)
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise DataError(f"{path}: question id {item.id!r} appears twice; ids must be unique so that models "
                            "can be compared question by question.")
        seen.add(item.id)
    return items, dropped


def _item(where: str, raw: Any, qid: str, question: Any, options: dict[str, Any], answer: Any,
          meta: dict[str, Any]) -> MCItem | Dropped:
    options = {str(k).strip().upper(): str(v).strip() for k, v in options.items()
               if v is not None and str(v).strip()}
    letters = "".join(sorted(set(re.findall(r"[A-Z]", str(answer or "").upper()))))
    if not str(question or "").strip():
        return Dropped(where, "no_question", raw)
    if len(options) < 2:
        return Dropped(where, "fewer_than_two_options", raw)
    if not letters or not set(letters) <= set(options):
        return Dropped(where, "answer_not_an_option", raw)
    return MCItem(str(qid), str(question).strip(), dict(sorted(options.items())), letters,
                  {k: v for k, v in meta.items() if v not in (None, "")})


def _need(row: dict[str, Any], keys: tuple[str, ...], where: str, fmt: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(f"{where}: field {missing[0]!r} is missing, so this is not a `{fmt}` file "
                        f"(fields found: {', '.join(map(str, row)) or 'none'}). Set the task's `format:` to match "
                        "the file (medtune ls tasks shows examples), or convert it to `unified`.")


@MC_FORMATS.register("unified", "JSONL {id, question, options{A..}, answer, meta?}")
def unified(path: Path) -> Loaded:
    for line, row in io.read_json_records(path):
        where = f"{path}:{line}"
        _need(row, ("question", "options", "answer"), where, "unified")
        meta = dict(row.get("meta") or {})
        meta.update({k: v for k, v in row.items() if k not in ("id", "question", "options", "answer", "meta",
                                                                  "options_raw") and isinstance(v, str | int)})
        answer = "".join(row["answer"]) if isinstance(row["answer"], list) else row["answer"]
        yield _item(where, row, row.get("id", f"{path.stem}-{line}"), row["question"], row["options"], answer, meta)


@MC_FORMATS.register("cmb", "CMB-Exam JSON {exam_type, exam_class, question_type, question, option{}, answer}")
def cmb(path: Path) -> Loaded:
    for line, row in io.read_json_records(path):
        where = f"{path}:{line}"
        _need(row, ("question", "option", "answer"), where, "cmb")
        meta = {k: row.get(k) for k in ("exam_type", "exam_class", "exam_subject", "question_type")}
        yield _item(where, row, row.get("id", f"cmb-{line}"), row["question"], row["option"], row["answer"], meta)


@MC_FORMATS.register("cmexam", "CMExam CSV: Question, Options ('A 文本' lines), Answer, annotations")
def cmexam(path: Path) -> Loaded:
    for line, row in io.read_csv_records(path, required=("Question", "Options", "Answer")):
        options = dict(m.groups() for m in re.finditer(r"^\s*([A-G])[\s.、．:：]+(.*?)\s*$", row["Options"], re.M))
        meta = {k: v for k, v in row.items() if k not in ("Question", "Options", "Answer", "Explanation")}
        yield _item(f"{path}:{line}", row, row.get("id") or f"cmexam-{line}", row["Question"], options,
                    row["Answer"], meta)


@MC_FORMATS.register("medqa", "MedQA JSONL {question, options{}, answer_idx, meta_info}")
def medqa(path: Path) -> Loaded:
    for line, row in io.read_json_records(path):
        where = f"{path}:{line}"
        _need(row, ("question", "options", "answer_idx"), where, "medqa")
        yield _item(where, row, row.get("id", f"medqa-{line}"), row["question"], row["options"], row["answer_idx"],
                    {"meta_info": row.get("meta_info")})


def _csv_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no .csv files in this folder.")
    return files


def _subject_csv(path: Path, fmt: str, keys: tuple[str, ...], id_key: str | None,
                 subject: Callable[[Path], str]) -> Loaded:
    for file in _csv_files(path):
        name = subject(file)
        for line, row in io.read_csv_records(file, required=keys):
            qid = row.get(id_key) if id_key else None
            yield _item(f"{file}:{line}", row, f"{fmt}-{name}-{qid if qid else line}", row[keys[0]],
                        {k: row.get(k) for k in "ABCDEFG" if row.get(k)}, row[keys[-1]], {"subject": name})


@MC_FORMATS.register("cmmlu", "CMMLU CSV (,Question,A,B,C,D,Answer): a file or a folder of <subject>.csv")
def cmmlu(path: Path) -> Loaded:
    return _subject_csv(path, "cmmlu", ("Question", "A", "B", "Answer"), "", lambda f: f.stem)


@MC_FORMATS.register("ceval", "C-Eval CSV (id,question,A,B,C,D,answer): a file or a folder of <subject>_val.csv")
def ceval(path: Path) -> Loaded:
    return _subject_csv(path, "ceval", ("question", "A", "B", "answer"), "id",
                        lambda f: re.sub(r"_(dev|val|test)$", "", f.stem))


def load_qa(path: Path, question: str = "question", answer: str | None = "answer") -> list[dict[str, Any]]:
    """Open QA / safety prompts: JSONL rows with a question (and a reference answer when `answer`)."""
    rows = []
    for line, row in io.read_json_records(path):
        where = f"{path}:{line}"
        _need(row, (question,) + ((answer,) if answer else ()), where, "question/answer JSONL")
        rows.append({"id": str(row.get("id", f"{path.stem}-{line}")), "question": str(row[question]),
                     "reference": str(row[answer]) if answer else "",
                     "meta": {k: v for k, v in row.items() if k not in ("id", question, answer)
                              and isinstance(v, str | int)}})
    return rows


def load_ranking(root: Path, split: str = "dev") -> list[dict[str, Any]]:
    """cMedQA2 candidate ranking: question.csv, answer.csv and <split>_candidates.txt
    (question_id,ans_id,cnt,label; label 1 = a correct answer) → one row per question."""
    if not root.is_dir():
        raise DataError(f"{root}: a ranking task's data must be a cMedQA2-style folder "
                        "(question.csv, answer.csv, <split>_candidates.txt).")
    questions = {r["question_id"]: r["content"] for _, r in
                 io.read_csv_records(root / "question.csv", required=("question_id", "content"))}
    answers = {r["ans_id"]: r["content"] for _, r in
               io.read_csv_records(root / "answer.csv", required=("ans_id", "question_id", "content"))}
    cand_file = next((p for p in (root / f"{split}_candidates.txt", root / f"{split}_candidates.zip") if p.exists()),
                     root / f"{split}_candidates.txt")
    groups: dict[str, dict[str, Any]] = {}
    for line, r in io.read_csv_records(cand_file, required=("question_id", "ans_id", "label")):
        if r["question_id"] not in questions or r["ans_id"] not in answers:
            raise DataError(f"{cand_file}:{line}: question {r['question_id']} or answer {r['ans_id']} is not in "
                            "question.csv / answer.csv. The candidate file and the text files must come from the "
                            "same cMedQA2 release.")
        g = groups.setdefault(r["question_id"], {"id": r["question_id"], "question": questions[r["question_id"]],
                                                 "candidates": [], "labels": []})
        g["candidates"].append(answers[r["ans_id"]])
        g["labels"].append(int(r["label"]))
    return list(groups.values())
