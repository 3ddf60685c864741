"""Stage `grpo`: optimise the policy against the reward model trained by stage `rm`.

Why GRPO and not PPO: TRL 1.16 ships no PPOTrainer, and a hand-written PPO (policy, value model,
reference, reward model, GAE) is exactly the kind of fragile loop medtune should not own. GRPO
(TRL's GRPOTrainer) needs no value model: it samples `num_generations` answers per prompt, scores
them with the reward model and uses each answer's reward relative to its group as the advantage,
with a KL penalty to the starting policy (`train.beta`). TRL takes a sequence-classification model
directly as a reward function, so the `rm` output plugs in as is (`finetune.reward_model: DIR`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from medtune.config import Config
from medtune.errors import ConfigError, MedtuneError
from medtune.model.load import load_model
from medtune.model.methods import METHODS, quantization_for
from medtune.train import STAGES
from medtune.train.common import require_eval_split, start, train_and_save

log = logging.getLogger(__name__)
# Small generation groups: CPU-sized GRPO (a group of 4 answers per prompt, one prompt group per batch).
GRPO_DEFAULTS = {"max_completion_length": 64, "num_generations": 4, "per_device_train_batch_size": 4}


@STAGES.register("grpo", "RL against the rm stage's reward model (TRL GRPOTrainer; no value model needed)")
def run(cfg: Config) -> dict[str, Any]:
    from transformers import set_seed
    from trl import GRPOConfig, GRPOTrainer

    if not cfg.finetune.reward_model:
        raise ConfigError("Stage grpo needs finetune.reward_model: the train.output_dir of an `rm` run.")
    r = start(cfg, GRPOConfig, **GRPO_DEFAULTS)
    from medtune.data.views import trl_splits

    train_rows, eval_rows, _ = trl_splits(r, ["prompt"], cfg.data)  # prompts of pairs, or conversations minus the answer
    if not train_rows:
        raise MedtuneError("No prompts to train on.")
    require_eval_split(r.args, eval_rows is not None)

    reward_model, reward_tokenizer, _ = load_model(_reward_model_config(cfg), reward_head=True)
    model, tokenizer, _ = load_model(cfg.model, merge_adapters=False, quantization_bits=quantization_for(cfg))
    set_seed(r.args.seed)
    model = METHODS.get(cfg.finetune.method)(model, cfg)
    trainer = GRPOTrainer(model=model, reward_funcs=reward_model, args=r.args,
                          train_dataset=train_rows, eval_dataset=eval_rows,
                          processing_class=tokenizer, reward_processing_classes=reward_tokenizer)
    metrics: dict[str, Any] = {"train_prompts": len(train_rows), "eval_prompts": len(eval_rows) if eval_rows else 0}
    return train_and_save(cfg, trainer, tokenizer, r, metrics, eval_rows is not None)


def _reward_model_config(cfg: Config):
    """The reward model: an rm run's output dir (a LoRA adapter + score head, or full weights)."""
    from pathlib import Path

    rm = Path(cfg.finetune.reward_model)
    if (rm / "adapter_config.json").exists():
        return dataclasses.replace(cfg.model, adapters=[str(rm)])
    if (rm / "config.json").exists():
        return dataclasses.replace(cfg.model, name_or_path=str(rm), adapters=[])
    raise ConfigError(f"finetune.reward_model {str(rm)!r} holds no reward model: run stage rm first.")
