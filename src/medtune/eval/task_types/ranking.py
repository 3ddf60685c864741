"""Ranking: a question and candidate answers labelled good or bad (cMedQA2's candidate pools).

Each candidate is scored by the model's log-likelihood of it as the reply; MAP and P@1 say whether
the good answers rank first. Needs weights: an endpoint or a predictions file is skipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medtune.eval import metrics
from medtune.eval.records import load_ranking
from medtune.eval.task_types import TASK_TYPES, Rows, TaskType, user
from medtune.eval.tasks import Task, TaskData, data_files, render_prompt, sample

if TYPE_CHECKING:
    from medtune.config import EvalConfig
    from medtune.eval.run import Subject
    from medtune.eval.safety import RefusalRules


@TASK_TYPES.register("ranking", "candidate answers ranked by log-likelihood: MAP, P@1")
class Ranking(TaskType):
    name = "ranking"
    metrics = ("ap", "p_at_1")
    labels = {"ap": "MAP", "p_at_1": "P@1"}

    def load(self, task: Task, ev: EvalConfig) -> TaskData:
        items = load_ranking(task.path(task.data), task.split)
        return TaskData(task, sample(items, task.limit or ev.limit, ev.seed), files=data_files(task))

    def run(self, td: TaskData, s: Subject, ev: EvalConfig, rules: RefusalRules) -> Rows:
        if s.scorer is None:
            return {}
        rows = td.items
        prompts = [user(render_prompt(td.task, question=r["question"])) for r in rows for _ in r["candidates"]]
        scores = iter(s.scorer.candidates(prompts, [c for r in rows for c in r["candidates"]]))
        out = []
        for r in rows:
            sc = [next(scores) for _ in r["candidates"]]
            out.append({"id": r["id"], "p_at_1": metrics.precision_at_1(sc, r["labels"]),
                        "ap": metrics.average_precision(sc, r["labels"]), "scores": [round(x, 4) for x in sc]})
        return {"loglik": out}
