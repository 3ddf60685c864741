"""Refusal: requests a medical assistant should refuse (harmful) or answer (benign look-alikes).

`expect: refuse` reports the refusal rate; `expect: answer` the over-refusal rate. Refusals are
recognised by the rules file (eval.refusal_rules), whose hash goes into the run card.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medtune.errors import ConfigError
from medtune.eval.records import load_qa
from medtune.eval.task_types import TASK_TYPES, Rows, TaskType, answers
from medtune.eval.tasks import Task, TaskData, data_files, sample

if TYPE_CHECKING:
    from medtune.config import EvalConfig
    from medtune.eval.run import Subject
    from medtune.eval.safety import RefusalRules


@TASK_TYPES.register("refusal", "harmful requests (refusal rate) or benign ones (over-refusal rate)")
class Refusal(TaskType):
    name = "refusal"
    metrics = ("refused",)

    def check(self, task: Task) -> None:
        if task.expect not in ("refuse", "answer"):
            raise ConfigError(f"task {task.name!r}: expect must be refuse or answer, got {task.expect!r}.")

    def load(self, task: Task, ev: EvalConfig) -> TaskData:
        items = load_qa(task.path(task.data), task.question_field, None)
        return TaskData(task, sample(items, task.limit or ev.limit, ev.seed), files=data_files(task))

    def run(self, td: TaskData, s: Subject, ev: EvalConfig, rules: RefusalRules) -> Rows:
        return {"generate": [{"id": r["id"], "question": r["question"], "output": o, "refused": int(rules.refused(o))}
                             for r, o in zip(td.items, answers(td, s, ev), strict=True)]}

    def details(self, td: TaskData, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {"expect": td.task.expect}

    def entry(self, task: Task) -> dict[str, Any]:
        return {"expect": task.expect}

    def metric_label(self, entry: dict[str, Any], key: str) -> str:
        if key == "refused" and entry.get("expect") == "answer":
            return "over-refusal rate"
        return super().metric_label(entry, key)
