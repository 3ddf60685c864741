"""Everything a run can get wrong in its config, checked before any data is prepared or model loaded.

`medtune validate` and the start of every stage call `preflight`: a misspelt template, method,
stage or model, a `train:` value of the wrong type, or preference data given to `sft` used to
surface only after minutes of data preparation (or as a `KeyError: 'messages'` traceback).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from medtune.config import Config
from medtune.errors import ConfigError

# What each stage trains on (the shapes of medtune.data.formats.SHAPES).
STAGE_DATA = {"sft": {"messages"}, "pt": {"text"}, "rm": {"pairwise"}, "dpo": {"pairwise"}, "orpo": {"pairwise"},
              "simpo": {"pairwise"}, "kto": {"pairwise"}, "grpo": {"messages", "pairwise"}}
_FORMAT_HINT = {"messages": "a conversation format (alpaca, sharegpt, openai, toyhom, ...)", "text": "format `text`",
                "pairwise": "format `pairwise` (prompt / chosen / rejected)"}


def stage_arguments(cfg: Config) -> tuple[Any, dict[str, Any]]:
    """The HF/TRL arguments class a stage's `train:` block is validated against, and the stage's own
    defaults under the user's values (the same pair the stage passes to `start`)."""
    stage = cfg.finetune.stage
    if stage in ("sft", "pt"):
        from transformers import TrainingArguments

        return TrainingArguments, {}
    if stage == "grpo":
        from trl import GRPOConfig

        from medtune.train.rl import GRPO_DEFAULTS

        return GRPOConfig, GRPO_DEFAULTS
    from medtune.train.preference import TRAINERS

    module, _, name = TRAINERS[stage][1].partition(":")
    return getattr(importlib.import_module(module), name), {"max_length": cfg.data.max_length, **TRAINERS[stage][2]}


def preflight(cfg: Config, training: bool = True, train_args: bool = True) -> None:
    """Fail fast, with one message naming the key, the value and the fix."""
    from medtune.data.datasets import resolve
    from medtune.data.formats import FORMATS, SHAPES
    from medtune.data.templates import load_template
    from medtune.model.load import check_adapter, check_model_source
    from medtune.model.methods import METHODS
    from medtune.train import load_stages

    load_template(cfg.model.template)
    check_model_source(cfg.model.name_or_path)
    for adapter in cfg.model.adapters:
        check_adapter(adapter, cfg.model.template, reward_head=training and cfg.finetune.stage == "rm")
    if not training:
        return
    load_stages().get(cfg.finetune.stage)
    METHODS.get(cfg.finetune.method)
    if cfg.data.streaming and cfg.finetune.stage != "pt":
        raise ConfigError(f"data.streaming is for finetune.stage pt (plain text in blocks); stage "
                          f"{cfg.finetune.stage} reads prepared, tokenised data: set data.streaming=false.")
    need = STAGE_DATA.get(cfg.finetune.stage, set())
    for spec in resolve(cfg.data.datasets, cfg.data.registries):
        FORMATS.get(spec.format)
        if "://" not in spec.path and not any(ch in spec.path for ch in "*?[") and not Path(spec.path).exists():
            raise ConfigError(f"dataset {spec.name!r}: path {spec.path} does not exist (fix `path:` in its registry).")
        if any(ch in spec.path for ch in "*?["):
            from medtune.data.io import shards

            shards(spec.path)  # a glob that matches nothing fails here, before any work
        shape = SHAPES.get(spec.format)
        if need and shape and shape not in need:
            wanted = " or ".join(_FORMAT_HINT[n] for n in sorted(need))
            raise ConfigError(f"Stage {cfg.finetune.stage} trains on {wanted}, but dataset {spec.name!r} has format "
                              f"{spec.format!r} ({_FORMAT_HINT[shape]}). Pick another finetune.stage or dataset "
                              "(`medtune ls stages`, `medtune ls formats`).")
    if train_args:
        from medtune.train.common import training_arguments

        config_class, defaults = stage_arguments(cfg)
        training_arguments(cfg, config_class, **defaults)
