"""Continued pretraining: documents joined with EOS and cut into fixed blocks (the WiNGPT recipe),
with position ids restarting at each document so no document attends to another inside a block."""

from __future__ import annotations

import logging
from typing import Any

from medtune.config import Config
from medtune.data.packing import COUNT, CountingCollator, PackedCollator, concat
from medtune.errors import ConfigError, MedtuneError
from medtune.model.load import load_model
from medtune.model.methods import METHODS, quantization_for
from medtune.train import STAGES
from medtune.train.common import make_trainer, require_eval_split, start, train_and_save

log = logging.getLogger(__name__)


@STAGES.register("pt", "continued pretraining on plain text: EOS-joined documents cut into data.max_length blocks")
def run(cfg: Config) -> dict[str, Any]:
    from transformers import set_seed

    r = start(cfg)
    train_docs, eval_docs = r.train_rows, r.eval_rows
    if any("text" not in d for d in train_docs + eval_docs):
        raise ConfigError("Stage pt trains on plain text: every dataset must have format `text` "
                          f"(got {', '.join(cfg.data.datasets)}; see `medtune ls formats`).")
    model, tokenizer, _ = load_model(cfg.model, merge_adapters=False, quantization_bits=quantization_for(cfg))
    train_set, eval_set = (blocks(tokenizer, docs, cfg.data.max_length) for docs in (train_docs, eval_docs))
    if not train_set:
        raise MedtuneError(f"No text to train on; see {r.report['output_dir']}/report.json.")
    require_eval_split(r.args, bool(eval_set))

    set_seed(r.args.seed)
    model = METHODS.get(cfg.finetune.method)(model, cfg)
    collator = CountingCollator(PackedCollator(tokenizer.pad_token_id))
    trainer = make_trainer(cfg, model, r.args, tokenizer, [{**b, COUNT: True} for b in train_set], eval_set, collator)
    metrics: dict[str, Any] = {"train_documents": len(train_docs), "train_blocks": len(train_set),
                               "eval_blocks": len(eval_set), "block_size": cfg.data.max_length}
    return train_and_save(cfg, trainer, tokenizer, r, metrics, bool(eval_set))


def blocks(tokenizer: Any, docs: list[dict[str, Any]], size: int) -> list[dict[str, list[int]]]:
    """Tokenise documents (+ EOS), stream them into blocks of exactly `size` tokens (the last may be
    shorter); a document longer than the room left continues in the next block."""
    rows, pieces, room = [], [], size
    for doc in docs:
        ids = tokenizer(doc["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
            ids = [tokenizer.bos_token_id, *ids]
        while ids:
            piece, ids = ids[:room], ids[room:]
            pieces.append({"input_ids": piece, "labels": piece})
            room -= len(piece)
            if room == 0:
                rows.append(concat(pieces))
                pieces, room = [], size
    if pieces:
        rows.append(concat(pieces))
    return rows
