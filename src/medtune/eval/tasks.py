"""Eval tasks are YAML files: what data, which type, which prompt, how to break results down.

    name: cmb_exam_sample
    type: multiple_choice        # multiple_choice | open_qa | ranking | refusal | rubric
    data: samples/cmb_exam_dev.jsonl   # relative to this file
    format: unified              # multiple_choice loaders: medtune.eval.records
    group: medical               # medical | general (retention) | safety
    category: apollo_source      # meta field for per-category tables and charts

Built-in tasks live in `medtune/eval/tasks/` (`medtune ls tasks`); a config can name them, point at
its own task files, or write a task inline (paths then relative to the config file).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from medtune.config import EvalConfig, load_yaml, parse_dataclass
from medtune.errors import ConfigError
from medtune.eval.records import Dropped, MCItem, load_mc, load_qa, load_ranking

TASK_DIR = Path(__file__).parent / "tasks"
PROMPT_DIR = Path(__file__).parent / "prompts"
TYPES = ("multiple_choice", "open_qa", "ranking", "refusal", "rubric")
DEFAULT_PROMPTS = {"multiple_choice": "mc_zh.jinja", "open_qa": "question.jinja", "ranking": "question.jinja",
                   "refusal": "question.jinja", "rubric": "question.jinja"}


@dataclass
class Task:
    name: str
    type: str
    data: str
    format: str = "unified"
    group: str = "medical"
    prompt: str | None = None  # a file in medtune/eval/prompts, a path, or inline Jinja
    cloze_prompt: str = "cloze_zh.jinja"  # multiple choice, cloze mode: the question without its options
    prompt_vars: dict[str, Any] = field(default_factory=dict)
    category: str | None = None
    # refusal tasks: refuse (harmful requests: refusal rate) | answer (benign: over-refusal rate)
    expect: str = "refuse"
    question_field: str = "question"
    answer_field: str = "answer"
    split: str = "dev"  # ranking: <split>_candidates.txt
    fewshot_data: str | None = None
    limit: int | None = None  # overrides eval.limit for this task
    description: str = ""
    license: str = ""
    source: str = ""
    base: str = field(default=".", metadata={"internal": True})  # folder relative paths start from

    def path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else Path(self.base) / p


def available() -> dict[str, str]:
    return {p.stem: _read(p).description for p in sorted(TASK_DIR.glob("*.yaml"))}


def load_task(spec: Any, config_dir: Path) -> Task:
    """A built-in name, a task YAML path, or an inline mapping (relative to the config's folder)."""
    if isinstance(spec, dict):
        task = parse_dataclass(Task, spec, "eval.tasks[]")
        task.base = str(config_dir)
    elif isinstance(spec, str) and (TASK_DIR / f"{spec}.yaml").is_file():
        task = _read(TASK_DIR / f"{spec}.yaml")
    elif isinstance(spec, str) and (p := config_dir / spec if not Path(spec).is_absolute() else Path(spec)).is_file():
        task = _read(p)
    else:
        raise ConfigError(f"eval.tasks: {spec!r} is neither a built-in task ({', '.join(available())}) nor a task "
                          "YAML file. Write a task file (see `medtune ls tasks` and the README) or fix the name.")
    if task.type not in TYPES:
        raise ConfigError(f"task {task.name!r}: type {task.type!r} is not one of {', '.join(TYPES)}.")
    if task.expect not in ("refuse", "answer"):
        raise ConfigError(f"task {task.name!r}: expect must be refuse or answer, got {task.expect!r}.")
    if not task.path(task.data).exists():
        raise ConfigError(f"task {task.name!r}: data {str(task.path(task.data))!r} does not exist. Point `data:` at "
                          "the benchmark file (relative paths start from the task file's folder).")
    return task


def _read(path: Path) -> Task:
    raw = load_yaml(path.read_text(encoding="utf-8")) or {}
    task = parse_dataclass(Task, raw, str(path))
    task.base = str(path.parent)
    return task


@dataclass
class TaskData:
    """A task's items after few-shot selection, sampling and option permutation."""

    task: Task
    items: list[Any]
    shots: list[MCItem] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def load_data(task: Task, ev: EvalConfig) -> TaskData:
    data = task.path(task.data)
    files = sorted(data.rglob("*")) if data.is_dir() else [data]
    files = [f for f in files if f.is_file()]
    if task.type == "multiple_choice":
        items, dropped = load_mc(task.format, data)
        shots: list[MCItem] = []
        if ev.shots:
            if task.fewshot_data:
                shots = load_mc(task.format, task.path(task.fewshot_data))[0][: ev.shots]
                files.append(task.path(task.fewshot_data))
            else:  # the first k items become the examples and are not scored
                shots, items = items[: ev.shots], items[ev.shots:]
        items = _sample(items, task.limit or ev.limit, ev.seed)
        return TaskData(task, permuted(items, ev.permutations), shots, dropped, files)
    if task.type == "rubric":  # conversations asked as written (no prompt template), graded by the judge
        from medtune.eval.rubric import load_rubric

        items, dropped = load_rubric("rubric" if task.format == "unified" else task.format, data)
        return TaskData(task, _sample(items, task.limit or ev.limit, ev.seed), dropped=dropped, files=files)
    if task.type == "ranking":
        return TaskData(task, _sample(load_ranking(data, task.split), task.limit or ev.limit, ev.seed), files=files)
    answer = task.answer_field if task.type == "open_qa" else None
    return TaskData(task, _sample(load_qa(data, task.question_field, answer), task.limit or ev.limit, ev.seed),
                    files=files)


def _sample(items: list[Any], limit: int | None, seed: int) -> list[Any]:
    """At most `limit` items, a seeded sample kept in file order (files are often sorted by subject)."""
    if not limit or limit >= len(items):
        return items
    keep = set(random.Random(seed).sample(range(len(items)), limit))
    return [x for i, x in enumerate(items) if i in keep]


def permuted(items: list[MCItem], n: int) -> list[MCItem]:
    """Each question in `n` option orders (cyclic shifts; shift 0 = as given). A model that knows the
    answer picks it in every order; one that favours a position does not."""
    out = []
    for item in items:
        letters = list(item.options)
        for shift in range(min(n, len(letters))):
            texts = [item.options[letters[(i + shift) % len(letters)]] for i in range(len(letters))]
            answer = "".join(sorted(letters[(letters.index(a) - shift) % len(letters)] for a in item.answer))
            out.append(replace(item, options=dict(zip(letters, texts, strict=True)), answer=answer,
                               meta={**item.meta, "_base_id": item.id, "_shift": shift},
                               id=item.id if shift == 0 else f"{item.id}#{shift}"))
    return out


def render_prompt(task: Task, cloze: bool = False, **values: Any) -> str:
    spec = task.cloze_prompt if cloze else task.prompt or DEFAULT_PROMPTS[task.type]
    return _compile(_prompt_source(task, spec)).render(**task.prompt_vars, **values)


def _prompt_source(task: Task, spec: str) -> str:
    if "{{" in spec:
        return spec
    for candidate in (PROMPT_DIR / spec, task.path(spec)):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    raise ConfigError(f"task {task.name!r}: prompt {spec!r} is not inline Jinja, a built-in prompt "
                      f"({', '.join(p.name for p in PROMPT_DIR.glob('*.jinja'))}) or a file.")


@lru_cache(maxsize=32)
def _compile(source: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined,
                                        keep_trailing_newline=False)
    return env.from_string(source)
