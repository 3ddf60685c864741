"""Grounded QA: open QA against a knowledge base, for models with and without retrieval in one report
(`eval.models[].kb` grounds a model's prompts). On top of open QA's metrics, `supported` is the share of
the answer's character bigrams found in the passages the task's knowledge base (`kb:`) retrieves for
the question (the top 3 of its first retriever): one definition for every model, so a model that
answers from the documents scores higher than one that answers from memory or invents.

"Says it does not know when the answer is absent" is a refusal task (expect: refuse) over questions
the knowledge base cannot answer: refusal.yaml counts "参考资料中没有相关信息" as declining.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medtune.errors import ConfigError
from medtune.eval.task_types import TASK_TYPES, Rows
from medtune.eval.task_types.open_qa import OpenQA
from medtune.eval.tasks import Task, TaskData

if TYPE_CHECKING:
    from medtune.config import EvalConfig
    from medtune.eval.run import Subject
    from medtune.eval.safety import RefusalRules

SUPPORT_K = 3


@TASK_TYPES.register("grounded_qa", "open QA over a knowledge base: ROUGE-L, BLEU, supported by the KB, refusals")
class GroundedQA(OpenQA):
    name = "grounded_qa"
    metrics = ("rouge_l", "supported", "bleu1", "bleu4", "refused")
    labels = {**OpenQA.labels, "supported": "supported by the KB", "refused": "declined / refused"}
    judged = False

    def check(self, task: Task) -> None:
        if not task.kb:
            raise ConfigError(f"task {task.name!r}: a grounded_qa task needs `kb:` (the index its answers are "
                              "checked against, built by medtune kb).")

    def run(self, td: TaskData, s: Subject, ev: EvalConfig, rules: RefusalRules) -> Rows:
        from medtune.kb.retrieve import KnowledgeBase
        from medtune.synth.tasks import grounding

        rows = super().run(td, s, ev, rules)["generate"]
        kb = KnowledgeBase.open(td.task.path(td.task.kb))
        for r in rows:
            passages = " ".join(h.chunk["text"] for h in kb.search(r["question"], SUPPORT_K, td.task.retrievers[0]))
            r["supported"] = grounding(r["output"], passages)
            if (ctx := s.contexts.get((td.task.name, r["id"]))) is not None:
                r["context"] = [c["id"] for c in ctx]
        return {"generate": rows}
