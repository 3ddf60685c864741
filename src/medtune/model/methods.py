"""Training methods: how a loaded model is made trainable (a config value, `finetune.method`)."""

from __future__ import annotations

import logging
from typing import Any

from medtune.config import Config
from medtune.errors import ConfigError
from medtune.model.load import adapter_config, apply_adapters, training_plan
from medtune.registry import Registry

METHODS = Registry("method")
log = logging.getLogger(__name__)


def quantization_for(cfg: Config) -> int | None:
    """Bits to load the base model in: qlora needs 4 or 8 (default 4); other methods as configured."""
    bits = cfg.model.quantization_bits
    if cfg.finetune.method == "qlora":
        bits = bits or 4
    if bits not in (None, 4, 8):
        raise ConfigError(f"model.quantization_bits must be 4, 8 or null; got {bits!r}.")
    return bits


@METHODS.register("lora", "LoRA adapters (peft); continues training the last of model.adapters unless finetune.new_adapter")
def lora(model: Any, cfg: Config, task_type: str = "CAUSAL_LM") -> Any:
    return _lora(model, cfg, task_type)


@METHODS.register("dora", "weight-decomposed LoRA (peft use_dora)")
def dora(model: Any, cfg: Config, task_type: str = "CAUSAL_LM") -> Any:
    return _lora(model, cfg, task_type, use_dora=True)


@METHODS.register("qlora", "LoRA on a 4-bit (or 8-bit) bitsandbytes base; export merges into a de-quantised base")
def qlora(model: Any, cfg: Config, task_type: str = "CAUSAL_LM") -> Any:
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return _lora(model, cfg, task_type)


def _lora(model: Any, cfg: Config, task_type: str, use_dora: bool = False) -> Any:
    from peft import LoraConfig, get_peft_model

    model, continued = _earlier(model, cfg, task_type)
    if not continued:  # a fresh adapter on top of every earlier one merged (stacking, or the first run)
        c = cfg.finetune.lora
        model = get_peft_model(model, LoraConfig(r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout,
                                                 target_modules=c.target_modules, use_dora=use_dora,
                                                 task_type=task_type))
    _log_trainable(model)
    return model


def _earlier(model: Any, cfg: Config, task_type: str) -> tuple[Any, str | None]:
    """Apply model.adapters as `training_plan` decides: merge the resolved chain, and keep training its
    last adapter (continue-finetuning, the seeds' cMedQA2-on-top-of-a-chat-LoRA recipe) unless
    finetune.new_adapter asks for a fresh one. Returns the model and the continued adapter (or None)."""
    merged, continued = training_plan(cfg)
    if continued and task_type == "SEQ_CLS" and adapter_config(continued).get("task_type") != "SEQ_CLS":
        raise ConfigError(f"Stage rm cannot continue {continued!r}, a chat (causal LM) adapter: set "
                          "finetune.new_adapter=true to merge it and train a reward adapter on top.")
    return apply_adapters(model, merged, cfg.model.template, reward_head=task_type == "SEQ_CLS",
                          trainable=continued), continued


@METHODS.register("full", "all parameters trainable (earlier adapters are merged first)")
def full(model: Any, cfg: Config, task_type: str = "CAUSAL_LM") -> Any:
    model, _ = _earlier(model, cfg, task_type)
    for p in model.parameters():
        p.requires_grad_(True)
    _log_trainable(model)
    return model


@METHODS.register("freeze", "train only the last finetune.freeze.trainable_layers layers (+ named modules)")
def freeze(model: Any, cfg: Config, task_type: str = "CAUSAL_LM") -> Any:
    model, _ = _earlier(model, cfg, task_type)
    c = cfg.finetune.freeze
    layers = _decoder_layers(model)
    if not 0 <= c.trainable_layers <= len(layers):
        raise ConfigError(f"finetune.freeze.trainable_layers={c.trainable_layers} but the model has {len(layers)} layers.")
    model.requires_grad_(False)
    for layer in layers[len(layers) - c.trainable_layers:]:
        layer.requires_grad_(True)
    # A reward model's new score head must always train.
    extra = [*c.trainable_modules, *(["score"] if task_type == "SEQ_CLS" else [])]
    for name, p in model.named_parameters():
        if any(m in name for m in extra):
            p.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("finetune.freeze leaves nothing trainable: raise trainable_layers or name trainable_modules.")
    _log_trainable(model)
    return model


@METHODS.register("prefix", "prefix tuning (peft PrefixTuningConfig): trainable key/value prefixes per layer")
def prefix(model: Any, cfg: Config, task_type: str = "CAUSAL_LM") -> Any:
    from peft import PrefixTuningConfig, get_peft_model

    model, continued = _earlier(model, cfg, task_type)  # earlier LoRAs merged first (they used to be ignored)
    if not continued:
        model = get_peft_model(model, PrefixTuningConfig(task_type=task_type,
                                                         num_virtual_tokens=cfg.finetune.prefix.num_virtual_tokens))
    _log_trainable(model)
    return model


@METHODS.register("ptuning", "P-tuning v2 style trainable prompt encoder (peft PromptEncoderConfig)")
def ptuning(model: Any, cfg: Config, task_type: str = "CAUSAL_LM") -> Any:
    from peft import PromptEncoderConfig, get_peft_model

    c = cfg.finetune.prefix
    model, continued = _earlier(model, cfg, task_type)
    if not continued:
        model = get_peft_model(model, PromptEncoderConfig(task_type=task_type, num_virtual_tokens=c.num_virtual_tokens,
                                                          encoder_hidden_size=c.encoder_hidden_size))
    _log_trainable(model)
    return model


def _decoder_layers(model: Any) -> Any:
    """The decoder's ModuleList of transformer blocks (`model.model.layers` for Llama/Qwen/Gemma)."""
    import torch

    candidates = [m for name, m in model.named_modules()
                  if isinstance(m, torch.nn.ModuleList) and name.split(".")[-1] in ("layers", "h", "blocks")]
    if not candidates:
        raise ConfigError("method freeze: cannot find the model's decoder layers; use finetune.freeze.trainable_modules.")
    return max(candidates, key=len)


def _log_trainable(model: Any) -> None:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
