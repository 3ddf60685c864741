"""Supervised fine-tuning: conversations → masked labels → Trainer → adapter (or full weights)."""

from __future__ import annotations

import logging
from typing import Any

from medtune.config import Config
from medtune.errors import ConfigError, MedtuneError
from medtune.model.load import load_model
from medtune.model.methods import METHODS, quantization_for
from medtune.train import STAGES
from medtune.train.common import (
    collator_for,
    encoded,
    make_trainer,
    require_eval_split,
    start,
    train_and_save,
)

log = logging.getLogger(__name__)


@STAGES.register("sft", "supervised fine-tuning on conversations (loss on assistant turns only)")
def run(cfg: Config) -> dict[str, Any]:
    from transformers import set_seed

    if cfg.data.packing and cfg.finetune.method in ("prefix", "ptuning"):
        # peft drops position_ids for prompt-learning models, and without the per-sample position
        # resets packed samples would attend to each other.
        raise ConfigError(f"data.packing cannot be combined with finetune.method={cfg.finetune.method}: peft "
                          "ignores position ids for prompt learning, so packed samples would see each other.")

    # Data: sources → prepared JSONL (counted, dropped rows written out) → cached token ids (Arrow).
    r = start(cfg)
    model, tokenizer, template = load_model(cfg.model, merge_adapters=False, quantization_bits=quantization_for(cfg))
    data = encoded(r, tokenizer, template, cfg.data)
    require_eval_split(r.args, data.eval is not None)
    if data.train is None or not len(data.train):
        raise MedtuneError(f"No training examples left (prepared {data.prepared['train']}, {data.too_long['train']} had "
                           f"no answer token within data.max_length={cfg.data.max_length}). See {r.report['output_dir']}.")

    # Model: the method decides what trains. Seed first: adapter weights are initialised here,
    # before the Trainer would seed, and an unseeded init makes runs irreproducible.
    set_seed(r.args.seed)
    model = METHODS.get(cfg.finetune.method)(model, cfg)

    trainer = make_trainer(cfg, model, r.args, tokenizer, data.train, data.eval, collator_for(tokenizer, cfg.data))
    examples = len(data.train.indices)
    metrics: dict[str, Any] = {"train_examples": examples, "eval_examples": data.eval_count, "train_rows": len(data.train),
                               "dropped_too_long": data.too_long}
    return train_and_save(cfg, trainer, tokenizer, r, metrics, data.eval is not None)
