"""Continued pretraining: documents joined with EOS and cut into fixed blocks (the WiNGPT recipe),
with position ids restarting at each document so no document attends to another inside a block."""

from __future__ import annotations

import logging
from typing import Any

from medtune.config import Config
from medtune.data.packing import CountingCollator, PackedCollator
from medtune.errors import MedtuneError
from medtune.model.load import load_model
from medtune.model.methods import METHODS, quantization_for
from medtune.train import STAGES
from medtune.train.common import make_trainer, require_eval_split, start, train_and_save

log = logging.getLogger(__name__)


@STAGES.register("pt", "continued pretraining on plain text: EOS-joined documents cut into data.max_length blocks")
def run(cfg: Config) -> dict[str, Any]:
    from transformers import set_seed

    r = start(cfg)
    model, tokenizer, template = load_model(cfg.model, merge_adapters=False, quantization_bits=quantization_for(cfg))
    train_set, eval_set, docs = text_blocks(r, tokenizer, template, cfg)
    if not train_set:
        raise MedtuneError(f"No text to train on; see {r.report['output_dir']}/report.json.")
    require_eval_split(r.args, bool(eval_set))

    set_seed(r.args.seed)
    model = METHODS.get(cfg.finetune.method)(model, cfg)
    collator = CountingCollator(PackedCollator(tokenizer.pad_token_id))
    trainer = make_trainer(cfg, model, r.args, tokenizer, train_set, eval_set, collator)
    metrics: dict[str, Any] = {"train_documents": docs, "train_blocks": len(train_set),
                               "eval_blocks": len(eval_set) if eval_set else 0, "block_size": cfg.data.max_length}
    return train_and_save(cfg, trainer, tokenizer, r, metrics, bool(eval_set))


def text_blocks(r: Any, tokenizer: Any, template: Any, cfg: Config) -> tuple[Any, Any, int]:
    """Train and eval blocks over the tokenised document cache (built once, memory-mapped)."""
    from medtune.data.tokenized import cache_root, default_workers, documents
    from medtune.data.views import Blocks, split

    workers = cfg.data.num_workers or default_workers()
    root = cache_root(r.report["output_dir"])
    train_files, dev_files = r.files("train"), r.files("dev")
    with r.main_first("tokenise"):
        train_all = documents(train_files, tokenizer, template, root, workers) if train_files else None
        dev = documents(dev_files, tokenizer, template, root, workers) if dev_files else None
    if train_all is None:
        return None, None, 0
    train_idx, evals, _ = split(train_all, dev, cfg.data)
    eval_idx = sorted(int(i) for idx in evals.values() for i in idx)
    eval_src = dev if dev is not None else train_all
    eval_set = Blocks(eval_src, eval_idx, cfg.data.max_length) if eval_idx else None
    return Blocks(train_all, train_idx, cfg.data.max_length, counted=True), eval_set, len(train_idx)
