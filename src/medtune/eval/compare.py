"""`medtune compare CONFIG`: the seeds' base-vs-tuned table, with the eval loss of the run.

Medical fine-tuning projects judge their models by a table of the same questions answered by the
base and the tuned model. This writes that table for held-out questions (never trained on),
together with eval loss before and after training from the run's `metrics.json`.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
from pathlib import Path
from typing import Any

from medtune.config import Config
from medtune.errors import ConfigError
from medtune.infer.engine import ChatEngine
from medtune.model.load import tuned_model

log = logging.getLogger(__name__)


def run(cfg: Config) -> Path:
    out = cfg.output_dir
    questions = _questions(cfg)
    tuned_cfg = tuned_model(cfg, cfg.compare.adapters)
    answers: dict[str, list[str]] = {}
    for label, model_cfg in (("base", dataclasses.replace(cfg.model, adapters=[])), ("tuned", tuned_cfg)):
        engine = ChatEngine(model_cfg, cfg.generation)
        log.info("%s model: answering %d questions (batched)", label, len(questions))
        answers[label] = engine.chat_many([[{"role": "user", "content": q["question"]}] for q in questions])
        del engine
        gc.collect()
    metrics_file = out / "metrics.json"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.exists() else {}
    report = Path(cfg.compare.report) if cfg.compare.report else out / "report.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render(cfg, tuned_cfg, questions, answers, metrics), encoding="utf-8")
    (report.with_suffix(".json")).write_text(json.dumps(
        {"metrics": metrics, "rows": [{**q, "base": b, "tuned": t} for q, b, t in
                                      zip(questions, answers["base"], answers["tuned"], strict=True)]},
        ensure_ascii=False, indent=2), encoding="utf-8")
    return report


def _questions(cfg: Config) -> list[dict[str, Any]]:
    if not cfg.compare.questions:
        raise ConfigError("compare.questions is not set: point it at a JSONL file with a `question` per line.")
    path = Path(cfg.compare.questions)
    if not path.is_file():
        raise ConfigError(f"compare.questions file {str(path)!r} does not exist.")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[: cfg.compare.num_questions]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or "*(empty)*"


def render(cfg: Config, tuned_cfg, questions: list[dict[str, Any]], answers: dict[str, list[str]],
           metrics: dict[str, Any]) -> str:
    g = cfg.generation
    lines = [
        "# medtune report: base vs tuned", "",
        f"- base model: `{cfg.model.name_or_path}`; tuned: `{', '.join(tuned_cfg.adapters) or tuned_cfg.name_or_path}`",
        f"- stage / method: {cfg.finetune.stage} / {cfg.finetune.method}; template: `{cfg.model.template}`",
        f"- datasets: {', '.join(cfg.data.datasets)}; questions: `{cfg.compare.questions}` (held out, not trained on)",
        f"- decoding: do_sample={g.do_sample}, max_new_tokens={g.max_new_tokens}, "
        f"repetition_penalty={g.repetition_penalty}, num_beams={g.num_beams}, seed={g.seed}", "",
        "## Eval loss", "",
    ]
    if "eval_loss_before" in metrics and "eval_loss_after" in metrics:
        before, after = metrics["eval_loss_before"], metrics["eval_loss_after"]
        lines += ["| before training | after training | change |", "|---|---|---|",
                  f"| {before:.4f} | {after:.4f} | {after - before:+.4f} |", "",
                  f"{metrics.get('eval_examples', '?')} held-out examples; {metrics.get('train_examples', '?')} "
                  f"training examples, {metrics.get('global_step', '?')} steps.", ""]
    else:
        lines += ["(no eval split in this run: set data.test_size to measure eval loss)", ""]
    lines += ["## Answers", "", "| # | question | base | tuned | reference |", "|---|---|---|---|---|"]
    for i, (q, b, t) in enumerate(zip(questions, answers["base"], answers["tuned"], strict=True), 1):
        lines.append(f"| {i} | {_cell(q['question'])} | {_cell(b)} | {_cell(t)} | {_cell(q.get('reference', ''))} |")
    lines += ["", "Answers come from models trained on forum data; they are not medical advice.", ""]
    return "\n".join(lines)
