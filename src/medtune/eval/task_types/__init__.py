"""Eval task types: one registered object per type says everything the harness needs to know about it.

A type (multiple_choice, open_qa, refusal, ranking, rubric) is a `TaskType` subclass in its own
module of this folder, registered by name:

    load      task file → `TaskData` (items, few-shot examples, dropped rows)
    run       one model's answers and per-item rows, by mode (loglik, cloze, generate)
    metrics   the per-item metrics that get a CI and a paired difference (the first is the headline)
    scores    per-item rows → item id → metric → value (what the bootstrap resamples)
    details   the type's breakdowns beside the metrics in results.json (histograms, categories …)
    report    the type's own report section (multiple-choice details, open-QA details)

`tasks.py`, `run.py`, `summary.py`, `report.py` and `judge.py` read these objects instead of
branching on the type's name, so a new type is one new file here (modules are found on import).
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

from medtune.registry import Registry

if TYPE_CHECKING:
    from medtune.config import EvalConfig
    from medtune.eval.markup import Block
    from medtune.eval.run import Subject
    from medtune.eval.safety import RefusalRules
    from medtune.eval.tasks import Task, TaskData

TASK_TYPES = Registry("eval task type")
# Metric names every type shares; a type adds or overrides its own in `labels`.
LABELS = {"refused": "refusal rate"}
Rows = dict[str, list[dict[str, Any]]]  # mode → per-item rows


class TaskType:
    """Defaults for a generation task scored per item; subclasses override what differs."""

    name: ClassVar[str] = ""
    prompt: ClassVar[str] = "question.jinja"  # the default prompt file (medtune/eval/prompts)
    metrics: ClassVar[tuple[str, ...]] = ()
    mode_metrics: ClassVar[dict[str, tuple[str, ...]]] = {}  # a mode that reports other metrics
    labels: ClassVar[dict[str, str]] = {}
    clipped: ClassVar[frozenset[str]] = frozenset()  # task means clipped to [0, 1] (HealthBench's aggregate)
    judged: ClassVar[bool] = False  # the pairwise judge compares its answers
    needs_judge: ClassVar[bool] = False  # unscorable without eval.judge (rubric grading)
    # The report shows a seeded sample of generate-mode rows next to each other: their id and output
    # (question, reference and refused when present).
    side_by_side: ClassVar[bool] = True
    exports: ClassVar[tuple[str, ...]] = ()  # eval.export formats that can write this type
    needs_model: ClassVar[bool] = True  # retrieval scores a knowledge base: a run of only such tasks loads no model

    def check(self, task: Task) -> None:
        """Type-specific task-file checks, before any data or model is loaded."""

    def load(self, task: Task, ev: EvalConfig) -> TaskData:
        raise NotImplementedError

    def run(self, td: TaskData, s: Subject, ev: EvalConfig, rules: RefusalRules) -> Rows:
        raise NotImplementedError

    def metric_keys(self, mode: str) -> list[str]:
        return list(self.mode_metrics.get(mode, self.metrics))

    def headline(self, mode: str) -> list[str]:
        """The metrics in the report's headline table."""
        return self.metric_keys(mode)

    def scores(self, task: Task, rows: list[dict[str, Any]], mode: str) -> dict[str, dict[str, float]]:
        """Item id → metric → score. An item without a score (a judge verdict that did not parse) is left out."""
        keys = self.metric_keys(mode)
        return {r["id"]: {k: float(r[k]) for k in keys} for r in rows if all(r.get(k) is not None for k in keys)}

    def count(self, td: TaskData) -> int:
        return len(td.items)

    def details(self, td: TaskData, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {}

    def entry(self, task: Task) -> dict[str, Any]:
        """Fields of the task's results.json entry beyond those every type has."""
        return {}

    def metric_label(self, entry: dict[str, Any], key: str) -> str:
        return {**LABELS, **self.labels}.get(key, key)

    def report(self, summary: dict[str, Any], charts: dict[str, str]) -> list[Block]:
        return []


def task_type(name: str) -> TaskType:
    _discover()
    return _instance(name)


def names() -> list[str]:
    _discover()
    return TASK_TYPES.names()


@cache
def _instance(name: str) -> TaskType:
    return TASK_TYPES.get(name)()


@lru_cache(maxsize=1)
def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def answers(td: TaskData, s: Subject, ev: EvalConfig) -> list[str]:
    """The model's answer to each question of a task asked through its prompt template."""
    from medtune.eval.tasks import render_prompt

    prompts = [user(render_prompt(td.task, question=r["question"])) for r in td.items]
    return s.generate(td.task.name, [r["id"] for r in td.items], prompts, ev.max_new_tokens, ev.batch_size)

