"""Supervised fine-tuning: conversations → masked labels → Trainer → adapter (or full weights)."""

from __future__ import annotations

import logging
from typing import Any

from medtune.config import Config, dump_config
from medtune.data.prepare import load_prepared
from medtune.errors import ConfigError, MedtuneError
from medtune.model.load import load_model
from medtune.model.methods import METHODS, quantization_for
from medtune.train import STAGES
from medtune.train.common import (
    batching,
    encode_eval,
    encode_split,
    make_trainer,
    prepare_once,
    require_eval_split,
    split_eval,
    train_and_save,
    training_arguments,
)

log = logging.getLogger(__name__)


@STAGES.register("sft", "supervised fine-tuning on conversations (loss on assistant turns only)")
def run(cfg: Config) -> dict[str, Any]:
    from transformers import set_seed

    out = cfg.output_dir
    dump_config(cfg, out)
    args, resume = training_arguments(cfg)

    # Data: sources → prepared JSONL (counted, dropped rows written out) → masked token ids.
    report = prepare_once(cfg, args)
    train_rows, eval_rows = split_eval(load_prepared(report), cfg.data)
    model, tokenizer, template = load_model(cfg.model, merge_adapters=False,
                                           quantization_bits=quantization_for(cfg))
    train_set, train_too_long = encode_split(train_rows, tokenizer, template, cfg.data)
    eval_set, eval_count, eval_too_long = encode_eval(eval_rows, tokenizer, template, cfg.data)
    require_eval_split(args, bool(eval_set))
    if not train_set:
        raise MedtuneError(f"No training examples left (prepared {len(train_rows)}, {train_too_long} had no "
                           f"answer token within data.max_length={cfg.data.max_length}). See {report['output_dir']}.")

    if cfg.data.packing and cfg.finetune.method in ("prefix", "ptuning"):
        # peft drops position_ids for prompt-learning models, and without the per-sample position
        # resets packed samples would attend to each other.
        raise ConfigError(f"data.packing cannot be combined with finetune.method={cfg.finetune.method}: peft "
                          "ignores position ids for prompt learning, so packed samples would see each other.")

    # Model: the method decides what trains. Seed first: adapter weights are initialised here,
    # before the Trainer would seed, and an unseeded init makes runs irreproducible.
    set_seed(args.seed)
    model = METHODS.get(cfg.finetune.method)(model, cfg)

    train_rows_or_bins, collator = batching(train_set, tokenizer, cfg.data)
    trainer = make_trainer(cfg, model, args, tokenizer, train_rows_or_bins, eval_set, collator)
    metrics: dict[str, Any] = {"train_examples": len(train_set), "eval_examples": eval_count,
                               "train_rows": len(train_rows_or_bins),
                               "dropped_too_long": {"train": train_too_long, "eval": eval_too_long}}
    return train_and_save(trainer, tokenizer, out, metrics, resume, bool(eval_set))
