"""Eval tasks are YAML files: what data, which type, which prompt, how to break results down.

    name: cmb_exam_sample
    type: multiple_choice        # a task type: medtune/eval/task_types/ (multiple_choice, open_qa, …)
    data: samples/cmb_exam_dev.jsonl   # relative to this file
    format: unified              # multiple_choice loaders: medtune.eval.records
    group: medical               # medical | general (retention) | safety
    category: apollo_source      # meta field for per-category tables and charts

Built-in tasks live in `medtune/eval/tasks/` (`medtune ls tasks`); a config can name them, point at
its own task files, or write a task inline (paths then relative to the config file).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from medtune.config import EvalConfig, load_yaml, parse_dataclass
from medtune.errors import ConfigError
from medtune.eval import task_types
from medtune.eval.records import Dropped, MCItem

TASK_DIR = Path(__file__).parent / "tasks"
PROMPT_DIR = Path(__file__).parent / "prompts"


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
    # retrieval tasks: the knowledge-base index (built by medtune kb), the retrievers compared (each a mode),
    # and the field naming the gold record / chunk id(s)
    kb: str | None = None
    retrievers: list[str] = field(default_factory=lambda: ["bm25"])
    gold_field: str = "gold"
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
    if task.type not in task_types.names():
        raise ConfigError(f"task {task.name!r}: type {task.type!r} is not one of {', '.join(task_types.names())}.")
    task_types.task_type(task.type).check(task)
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
    return task_types.task_type(task.type).load(task, ev)


def data_files(task: Task) -> list[Path]:
    """The files a task reads (hashed into the run card)."""
    data = task.path(task.data)
    return [f for f in (sorted(data.rglob("*")) if data.is_dir() else [data]) if f.is_file()]


def sample(items: list[Any], limit: int | None, seed: int) -> list[Any]:
    """At most `limit` items, a seeded sample kept in file order (files are often sorted by subject)."""
    if not limit or limit >= len(items):
        return items
    keep = set(random.Random(seed).sample(range(len(items)), limit))
    return [x for i, x in enumerate(items) if i in keep]


def render_prompt(task: Task, cloze: bool = False, **values: Any) -> str:
    spec = task.cloze_prompt if cloze else task.prompt or task_types.task_type(task.type).prompt
    return compile_template(prompt_source(task, spec)).render(**task.prompt_vars, **values)


def prompt_source(task: Task, spec: str) -> str:
    """A prompt spec's Jinja text: inline, a built-in prompt file, or a file beside the task."""
    if "{{" in spec:
        return spec
    for candidate in (PROMPT_DIR / spec, task.path(spec)):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    raise ConfigError(f"task {task.name!r}: prompt {spec!r} is not inline Jinja, a built-in prompt "
                      f"({', '.join(p.name for p in PROMPT_DIR.glob('*.jinja'))}) or a file.")


@lru_cache(maxsize=32)
def compile_template(source: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined,
                                        keep_trailing_newline=False)
    return env.from_string(source)
