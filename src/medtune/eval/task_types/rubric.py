"""Rubric: open-ended conversations graded by the LLM judge against criteria (HealthBench, CMB-Clin,
a user's rubric JSONL). The formats and the scoring rule live in `medtune.eval.rubric`; the judge
(`medtune.eval.judge`) adds each answer's `rubric_score` after all models have answered."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medtune.eval.rubric import load_rubric
from medtune.eval.task_types import TASK_TYPES, Rows, TaskType
from medtune.eval.tasks import Task, TaskData, data_files, sample

if TYPE_CHECKING:
    from medtune.config import EvalConfig
    from medtune.eval.run import Subject
    from medtune.eval.safety import RefusalRules


@TASK_TYPES.register("rubric", "conversations graded by the judge against criteria (HealthBench, CMB-Clin)")
class Rubric(TaskType):
    name = "rubric"
    metrics = ("rubric_score", "refused")
    labels = {"rubric_score": "rubric score (judge; clipped mean)"}
    clipped = frozenset({"rubric_score"})  # an item can score below 0 (harmful criteria met); HealthBench clips the mean
    judged = True
    needs_judge = True

    def load(self, task: Task, ev: EvalConfig) -> TaskData:
        # Conversations are asked as written (no prompt template).
        items, dropped = load_rubric("rubric" if task.format == "unified" else task.format, task.path(task.data))
        return TaskData(task, sample(items, task.limit or ev.limit, ev.seed), dropped=dropped, files=data_files(task))

    def run(self, td: TaskData, s: Subject, ev: EvalConfig, rules: RefusalRules) -> Rows:
        """Each conversation answered as written; the judge grades the answers afterwards."""
        rows = td.items
        outputs = s.generate(td.task.name, [r["id"] for r in rows], [r["messages"] for r in rows],
                             ev.max_new_tokens, ev.batch_size)
        return {"generate": [{"id": r["id"], "question": r["question"], "reference": r["reference"], "output": o,
                              "refused": int(rules.refused(o))} for r, o in zip(rows, outputs, strict=True)]}
