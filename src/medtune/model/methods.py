"""Training methods: how a loaded model is made trainable (a config value, `finetune.method`)."""

from __future__ import annotations

import logging
from typing import Any

from medtune.config import Config
from medtune.model.load import apply_adapters
from medtune.registry import Registry

METHODS = Registry("method")
log = logging.getLogger(__name__)


@METHODS.register("lora", "LoRA adapters (peft); continues training the last of model.adapters if given")
def lora(model: Any, cfg: Config) -> Any:
    from peft import LoraConfig, get_peft_model

    if cfg.model.adapters:
        # Continue-finetuning (the seeds' cMedQA2-on-top-of-a-chat-LoRA recipe): earlier adapters
        # are merged, the last one keeps training with its own rank and targets.
        model = apply_adapters(model, cfg.model.adapters, cfg.model.template, merge=False)
    else:
        c = cfg.finetune.lora
        model = get_peft_model(model, LoraConfig(r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout,
                                                 target_modules=c.target_modules, task_type="CAUSAL_LM"))
    _log_trainable(model)
    return model


@METHODS.register("full", "all parameters trainable (earlier adapters are merged first)")
def full(model: Any, cfg: Config) -> Any:
    model = apply_adapters(model, cfg.model.adapters, cfg.model.template, merge=True)
    for p in model.parameters():
        p.requires_grad_(True)
    _log_trainable(model)
    return model


def _log_trainable(model: Any) -> None:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
