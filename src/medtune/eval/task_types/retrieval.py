"""Retrieval: does the knowledge base find the passage that answers a question? Each item names its gold
record id, chunk id or document file name(s); each retriever of the task (bm25, dense, hybrid) is a mode, scored on recall@1,
recall@5 and MRR (reciprocal rank of the first gold hit within the top 10, else 0).

The model under test plays no part (every model gets the same rows), so the index is searched once
per task and retriever and reused for the other models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medtune.data.io import read_json_records
from medtune.errors import ConfigError
from medtune.eval.records import Dropped
from medtune.eval.task_types import TASK_TYPES, Rows, TaskType
from medtune.eval.tasks import Task, TaskData, data_files, sample

if TYPE_CHECKING:
    from medtune.config import EvalConfig
    from medtune.eval.run import Subject
    from medtune.eval.safety import RefusalRules

DEPTH = 10


@TASK_TYPES.register("retrieval", "question + gold passage id against a knowledge base: recall@1, recall@5, MRR")
class Retrieval(TaskType):
    name = "retrieval"
    metrics = ("recall_at_5", "recall_at_1", "mrr")
    labels = {"recall_at_1": "recall@1", "recall_at_5": "recall@5", "mrr": "MRR@10"}
    side_by_side = False
    needs_model = False

    def __init__(self) -> None:
        self.done: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def check(self, task: Task) -> None:
        from medtune.kb.retrieve import RETRIEVERS

        if not task.kb:
            raise ConfigError(f"task {task.name!r}: a retrieval task needs `kb:` (an index folder built by medtune kb).")
        for r in task.retrievers:
            RETRIEVERS.get(r)

    def load(self, task: Task, ev: EvalConfig) -> TaskData:
        items, dropped = [], []
        path = task.path(task.data)
        for line, r in read_json_records(path):
            gold = r.get(task.gold_field) if isinstance(r, dict) else None
            gold = [gold] if isinstance(gold, (str, int)) and not isinstance(gold, bool) else gold
            question = r.get(task.question_field) if isinstance(r, dict) else None
            if not isinstance(question, str) or not question.strip() or not isinstance(gold, list) or not gold:
                dropped.append(Dropped(f"{path}:{line}", f"needs {task.question_field} and {task.gold_field}", r))
                continue
            items.append({"id": str(r.get("id", line)), "question": question, "gold": [str(g) for g in gold]})
        return TaskData(task, sample(items, task.limit or ev.limit, ev.seed), dropped=dropped, files=data_files(task))

    def run(self, td: TaskData, s: Subject, ev: EvalConfig, rules: RefusalRules) -> Rows:
        from medtune.kb.retrieve import KnowledgeBase

        t = td.task
        kb = None
        out: Rows = {}
        for retriever in t.retrievers:
            key = (t.name, retriever)
            if key not in self.done:
                kb = kb or KnowledgeBase.open(t.path(t.kb))
                self.done[key] = [self._score(r, kb.search(r["question"], DEPTH, retriever)) for r in td.items]
            out[retriever] = self.done[key]
        return out

    @staticmethod
    def _score(item: dict[str, Any], hits: list[Any]) -> dict[str, Any]:
        gold = set(item["gold"])
        ranks = [h.rank for h in hits if {h.chunk["id"], h.chunk.get("doc"), h.chunk["source"]} & gold]
        first = min(ranks, default=None)
        return {"id": item["id"], "question": item["question"], "recall_at_1": int(first == 1),
                "recall_at_5": int(first is not None and first <= 5), "mrr": 1.0 / first if first else 0.0,
                "retrieved": [h.chunk.get("doc") or h.chunk["id"] for h in hits[:5]]}
