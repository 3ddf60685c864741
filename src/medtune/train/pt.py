"""Continued pretraining: documents joined with EOS and cut into fixed blocks (the WiNGPT recipe),
with position ids restarting at each document so no document attends to another inside a block."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medtune.config import Config
from medtune.data.packing import CountingCollator, PackedCollator
from medtune.errors import ConfigError, MedtuneError
from medtune.model.load import load_model
from medtune.model.methods import METHODS, quantization_for
from medtune.train import STAGES
from medtune.train.common import make_trainer, require_eval_split, start, train_and_save

log = logging.getLogger(__name__)


@STAGES.register("pt", "continued pretraining on plain text: EOS-joined documents cut into data.max_length blocks")
def run(cfg: Config) -> dict[str, Any]:
    from transformers import set_seed

    r = start(cfg, prepare=not cfg.data.streaming)
    model, tokenizer, template = load_model(cfg.model, merge_adapters=False, quantization_bits=quantization_for(cfg))
    if cfg.data.streaming:
        return streamed(cfg, r, model, tokenizer)
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


def streamed(cfg: Config, r: Any, model: Any, tokenizer: Any) -> dict[str, Any]:
    """`data.streaming: true`: blocks straight from the shards (no prepared copy, no cache), resumable at
    the exact block (see medtune.data.stream)."""
    from transformers import set_seed

    from medtune.data.datasets import resolve
    from medtune.data.stream import checkpoint_callback, eval_and_train, read_state

    if r.args.max_steps is None or r.args.max_steps <= 0:
        raise ConfigError("data.streaming: a stream has no length; set train.max_steps (the number of optimizer steps).")
    if r.args.dataloader_num_workers:
        raise ConfigError("data.streaming reads the shards in the main process (its position is saved with each "
                          "checkpoint); set train.dataloader_num_workers=0.")
    test_size = cfg.data.test_size
    if test_size and (test_size < 1 or test_size != int(test_size)):
        raise ConfigError(f"data.streaming holds out the first N documents for eval: data.test_size must be a "
                          f"document count (e.g. 200), not the fraction {test_size}.")
    r.args.ignore_data_skip = True  # the stream resumes at its saved position; the Trainer must not skip again
    resume = read_state(r.resume) if r.resume else None
    specs = resolve(cfg.data.datasets, cfg.data.registries)
    eval_set, stream = eval_and_train(specs, tokenizer, cfg.data.max_length, cfg.data.steps, int(test_size), resume)
    if r.resume:
        from transformers import TrainerState

        stream.resumed_step = TrainerState.load_from_json(str(Path(r.resume) / "trainer_state.json")).global_step
    require_eval_split(r.args, bool(eval_set))
    set_seed(r.args.seed)
    model = METHODS.get(cfg.finetune.method)(model, cfg)
    collator = CountingCollator(PackedCollator(tokenizer.pad_token_id))
    trainer = make_trainer(cfg, model, r.args, tokenizer, stream, eval_set, collator)
    trainer.add_callback(checkpoint_callback(stream, trainer, r.resume))  # before train_and_save's CommitCheckpoints
    metrics: dict[str, Any] = {"streaming": True, "eval_blocks": len(eval_set) if eval_set else 0,
                               "block_size": cfg.data.max_length}
    out = train_and_save(cfg, trainer, tokenizer, r, metrics, bool(eval_set))
    if stream.starts:  # where the run stopped (what it would read next), for the record
        last = stream.starts[-1][1]
        out["stream_end"] = {"epoch": last.epoch, "shard": last.shard, "record": last.record,
                             "documents": last.documents, "dropped": last.dropped}
    return out


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
