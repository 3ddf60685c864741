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
    batching,
    encode_eval,
    encode_split,
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

    # Data: sources → prepared JSONL (counted, dropped rows written out) → masked token ids.
    r = start(cfg)
    model, tokenizer, template = load_model(cfg.model, merge_adapters=False, quantization_bits=quantization_for(cfg))
    train_set, train_too_long = encode_split(r.train_rows, tokenizer, template, cfg.data)
    eval_set, eval_count, eval_too_long = encode_eval(r.eval_rows, tokenizer, template, cfg.data)
    require_eval_split(r.args, bool(eval_set))
    if not train_set:
        raise MedtuneError(f"No training examples left (prepared {len(r.train_rows)}, {train_too_long} had no "
                           f"answer token within data.max_length={cfg.data.max_length}). See {r.report['output_dir']}.")

    # Model: the method decides what trains. Seed first: adapter weights are initialised here,
    # before the Trainer would seed, and an unseeded init makes runs irreproducible.
    set_seed(r.args.seed)
    model = METHODS.get(cfg.finetune.method)(model, cfg)

    train_rows_or_bins, collator = batching(train_set, tokenizer, cfg.data)
    trainer = make_trainer(cfg, model, r.args, tokenizer, train_rows_or_bins, eval_set, collator)
    metrics: dict[str, Any] = {"train_examples": len(train_set), "eval_examples": eval_count,
                               "train_rows": len(train_rows_or_bins),
                               "dropped_too_long": {"train": train_too_long, "eval": eval_too_long}}
    return train_and_save(cfg, trainer, tokenizer, r, metrics, bool(eval_set))
