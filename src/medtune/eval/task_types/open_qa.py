"""Open QA: a question and a reference answer (Huatuo-26M, cMedQA2, CMtMedQA), scored on characters.

BLEU and ROUGE-L over characters measure how close the answer is to the reference's wording: a
regression signal between models, not answer quality (the LLM judge, eval.judge, compares answers).
Over-refusal is counted too: a medical assistant that refuses ordinary questions is broken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medtune.eval import metrics
from medtune.eval.markup import Block, pct
from medtune.eval.records import load_qa
from medtune.eval.task_types import TASK_TYPES, Rows, TaskType, answers
from medtune.eval.tasks import Task, TaskData, data_files, sample

if TYPE_CHECKING:
    from medtune.config import EvalConfig
    from medtune.eval.run import Subject
    from medtune.eval.safety import RefusalRules


@TASK_TYPES.register("open_qa", "question + reference answer: BLEU, ROUGE-L (characters), over-refusal; judged")
class OpenQA(TaskType):
    name = "open_qa"
    metrics = ("rouge_l", "bleu1", "bleu4", "refused")
    labels = {"rouge_l": "ROUGE-L", "bleu1": "BLEU-1", "bleu4": "BLEU-4", "refused": "over-refusal rate"}
    judged = True

    def load(self, task: Task, ev: EvalConfig) -> TaskData:
        items = load_qa(task.path(task.data), task.question_field, task.answer_field)
        return TaskData(task, sample(items, task.limit or ev.limit, ev.seed), files=data_files(task))

    def run(self, td: TaskData, s: Subject, ev: EvalConfig, rules: RefusalRules) -> Rows:
        return {"generate": [{"id": r["id"], "question": r["question"], "reference": r["reference"], "output": o,
                              "bleu1": metrics.bleu(o, r["reference"], 1), "bleu4": metrics.bleu(o, r["reference"], 4),
                              "rouge_l": metrics.rouge_l(o, r["reference"]), "refused": int(rules.refused(o))}
                             for r, o in zip(td.items, answers(td, s, ev), strict=True)]}

    def headline(self, mode: str) -> list[str]:
        return [k for k in self.metric_keys(mode) if k != "bleu1"]  # BLEU-1 lives in the details table

    def details(self, td: TaskData, rows: list[dict[str, Any]]) -> dict[str, Any]:
        outputs, refs = [r["output"] for r in rows], [r["reference"] for r in rows]
        return {"distinct1": metrics.distinct(outputs, 1), "distinct2": metrics.distinct(outputs, 2),
                "length_ratio": metrics.length_ratio(outputs, refs),
                "mean_chars": sum(len(metrics.chars(o)) for o in outputs) / max(len(outputs), 1)}

    def report(self, summary: dict[str, Any], charts: dict[str, str]) -> list[Block]:
        rows = []
        for name, task in summary["tasks"].items():
            if task["type"] == self.name:
                for m, d in task["modes"]["generate"]["models"].items():
                    rows.append([name, m, *[pct(d["metrics"][k]["value"]) for k in ("bleu1", "bleu4", "rouge_l")],
                                 pct(d["distinct1"]), pct(d["distinct2"]), f"{d['length_ratio']:.2f}",
                                 f"{d['mean_chars']:.0f}"])
        if not rows:
            return []
        return [("h", 2, "Open QA (character level)"),
                ("p", "BLEU/ROUGE reward copying the reference's style and length: read them as a regression "
                      "signal between these models, not as answer quality."),
                ("table", ["task", "model", "BLEU-1", "BLEU-4", "ROUGE-L", "Distinct-1", "Distinct-2",
                           "length ratio", "mean chars"], rows)]
