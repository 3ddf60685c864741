"""A training callback that watches for forgetting: general-knowledge accuracy during SFT.

Medical fine-tuning of a small model can wipe out general ability (a seed's model answered "write a
sorting program" with "go to a hospital"). With `finetune.retention.task: general_zh` the run scores
that multiple-choice task by option-letter likelihood (a forward pass per question, no generation)
before training and every `every_steps`, logs `retention_accuracy`, warns when it falls more than
`max_drop` below the starting value, and records the curve in metrics.json.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from medtune.config import Config, EvalConfig
from medtune.errors import ConfigError
from medtune.eval.scoring import LoglikScorer
from medtune.eval.tasks import load_data, load_task, render_prompt
from medtune.train.lean_loss import real_head

log = logging.getLogger(__name__)


class RetentionCallback(TrainerCallback):
    def __init__(self, cfg: Config, tokenizer: Any, template: Any) -> None:
        r = cfg.finetune.retention
        task = load_task(r.task, Path(cfg.source).parent if cfg.source else Path("."))
        if task.type != "multiple_choice":
            raise ConfigError(f"finetune.retention.task must be a multiple_choice task; {task.name} is {task.type}.")
        ev = EvalConfig(limit=r.limit, seed=cfg.eval.seed)
        items = [x for x in load_data(task, ev).items if not x.multi]
        self.prompts = [[{"role": "user", "content": render_prompt(task, question=x.question, options=x.options,
                                                                   multi=False, shots=[])}] for x in items]
        self.letters = [list(x.options) for x in items]
        self.answers = [x.answer for x in items]
        self.task, self.every, self.max_drop = task.name, r.every_steps, r.max_drop
        self.tokenizer, self.template = tokenizer, template
        self.history: list[dict[str, Any]] = []
        self.warned = False

    @property
    def before(self) -> float | None:
        return self.history[0]["accuracy"] if self.history else None

    def measure(self, model: Any) -> float:
        was_training = model.training
        model.eval()
        try:
            with real_head(model):
                scorer = LoglikScorer(model, self.tokenizer, self.template)
                scores = scorer.letters(self.prompts, self.letters)
        finally:
            model.train(was_training)
        return sum(max(s, key=lambda k: s[k]) == a for s, a in zip(scores, self.answers, strict=True)) / len(scores)

    def _record(self, step: int, model: Any) -> None:
        acc = self.measure(model)
        self.history.append({"step": step, "accuracy": acc})
        log.info("retention (%s) at step %d: accuracy %.3f", self.task, step, acc)
        if self.before is not None and self.before - acc > self.max_drop:
            self.warned = True
            log.warning("retention: %s accuracy fell from %.3f to %.3f at step %d (more than max_drop=%.3f): the "
                        "model is forgetting general knowledge. Consider a lower learning rate, fewer steps, or "
                        "mixing general data into data.mix.", self.task, self.before, acc, step, self.max_drop)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not self.history:
            self._record(state.global_step, model)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.every and state.global_step % self.every == 0:
            self._record(state.global_step, model)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.history[-1]["step"] != state.global_step:
            self._record(state.global_step, model)

    def summary(self) -> dict[str, Any]:
        return {"task": self.task, "questions": len(self.answers), "max_drop": self.max_drop,
                "before": self.before, "after": self.history[-1]["accuracy"] if self.history else None,
                "warned": self.warned, "history": self.history}
