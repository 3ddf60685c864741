"""What every stage shares: trainer arguments with CPU-sane defaults, encoding, the loss plot."""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
from pathlib import Path
from typing import Any

from medtune.config import Config, DataConfig
from medtune.data.encode import IGNORE_INDEX
from medtune.data.io import atomic_write_text
from medtune.data.packing import CountingCollator, PackedCollator
from medtune.data.templates import ChatTemplate
from medtune.errors import ConfigError
from medtune.train.samplers import LengthGrouped, Permutation

log = logging.getLogger(__name__)

# medtune's defaults under the user's `train:` block (on CPU there is no bf16: see training_arguments);
# `remove_unused_columns` would drop our labels.
DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,
    "num_train_epochs": 1,
    "learning_rate": 2e-4,
    "logging_steps": 5,
    "save_strategy": "steps",
    "save_steps": 100,
    "save_total_limit": 3,
    "report_to": "none",
    "remove_unused_columns": False,
    "dataloader_num_workers": 0,
    "seed": 42,
}


def training_arguments(cfg: Config, config_class: Any = None, **stage_defaults: Any) -> tuple[Any, Any]:
    """Trainer arguments from `train:` and the resume target.

    `config_class` is transformers.TrainingArguments or a TRL config (DPOConfig, RewardConfig, ...);
    the `train:` keys are validated against its real fields, so a typo fails before any work.
    `stage_defaults` are the stage's own defaults, under the user's values.
    """
    import torch
    from transformers import TrainingArguments

    from medtune.train.checkpoints import resolve_resume

    config_class = config_class or TrainingArguments
    user = dict(cfg.train)
    resume = user.pop("resume_from_checkpoint", None)
    known = {f.name for f in dataclasses.fields(config_class)}
    for key in user:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean 'train.{close[0]}'?" if close else ""
            raise ConfigError(f"Unknown config key 'train.{key}'.{hint} The train: block takes "
                              f"{config_class.__module__.split('.')[0]}.{config_class.__name__} fields.")
    user = {k: _typed(config_class, k, v) for k, v in user.items()}
    args = {**DEFAULTS, **{k: v for k, v in stage_defaults.items() if k in known}, **user}
    if "save_total_limit" not in user:
        log.info("keeping the newest %s checkpoints (medtune's default; set train.save_total_limit to change, "
                 "null keeps all)", DEFAULTS["save_total_limit"])
    if "gradient_checkpointing" in known and "gradient_checkpointing" not in user and config_class is not TrainingArguments:
        args["gradient_checkpointing"] = False  # TRL turns it on by default; at CPU sizes it only costs time
    if not torch.cuda.is_available():
        args.update(use_cpu=True, bf16=False, fp16=False)
    elif "bf16" not in user and "fp16" not in user and torch.cuda.is_bf16_supported():
        args["bf16"] = True  # mixed precision by default on GPUs that have bf16 (Ampere and later)
    if kernels(cfg) == "liger" and "use_liger_kernel" in known:
        args["use_liger_kernel"] = True
    if args.get("eval_strategy", "no") != "no" and "eval_steps" not in args:
        args["eval_steps"] = args.get("save_steps")
    try:
        parsed = config_class(**args)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"Invalid train: settings: {e}") from None
    return parsed, resolve_resume(resume, parsed.output_dir)


def kernels(cfg: Config) -> str | None:
    """`finetune.kernels`, resolved: "liger" or None. auto takes Liger Kernel where it runs (CUDA, the
    package installed); an explicit liger without them is a config error, before any work."""
    import importlib.util

    import torch

    setting = cfg.finetune.kernels
    usable = torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None
    if setting == "liger" and not usable:
        need = "pip install liger-kernel" if torch.cuda.is_available() else "a CUDA GPU (Triton kernels)"
        raise ConfigError(f"finetune.kernels=liger needs {need}. On CPU leave finetune.kernels=auto: the lean "
                          "loss (finetune.loss_chunk_size) is the fast path there.")
    return "liger" if setting == "liger" or (setting == "auto" and usable) else None


def _typed(config_class: Any, key: str, value: Any) -> Any:
    """Check one `train:` value against the field's declared type (the trainer checks few itself:
    `learning_rate: abc` used to pass and fail as a traceback from the optimiser, mid-run)."""
    import typing

    from medtune.config import check_value

    try:
        tp = typing.get_type_hints(config_class)[key]
    except Exception:
        return value
    if typing.get_origin(tp) is list and not isinstance(value, list):
        tp = typing.get_args(tp)[0]  # TRL's list fields (loss_type) take one value too
    try:
        return check_value(tp, value, f"train.{key}")
    except ConfigError as e:
        raise ConfigError(f"{e} (train: takes {config_class.__module__.split('.')[0]}.{config_class.__name__} "
                          "fields with their types.)") from None


@dataclasses.dataclass
class Run:
    """What every stage starts from: where it writes, its trainer arguments, and its prepared data as
    files on disk (`encoded`, `pt.text_blocks` and `tokenized.trl_splits` turn them into cached,
    memory-mapped Arrow datasets: no stage holds the rows in Python lists)."""

    out: Path
    args: Any
    resume: Any
    report: dict[str, Any]
    data: DataConfig

    def main_first(self, desc: str) -> Any:
        """The main process works first, the other ranks wait (no trainer arguments: `medtune prepare`)."""
        import contextlib

        return self.args.main_process_first(desc=desc, local=False) if self.args is not None \
            else contextlib.nullcontext()

    def files(self, split: str) -> list[str]:
        """Prepared files of a split: `dev`, or `train` (every file without a split, and `*.train`)."""
        def split_of(name: str) -> str:
            return name.rsplit(".", 1)[1] if "." in name else "train"
        return [p for name, p in self.report["files"].items() if split_of(name) == split]


@dataclasses.dataclass
class Encoded:
    """The data an LM stage trains on: lazy views over the tokenised cache, and what was dropped."""

    train: Any
    eval: Any  # one view, a {dataset: view} dict (the Trainer logs eval_<dataset>_loss), or None
    eval_count: int
    too_long: dict[str, int]
    prepared: dict[str, int]


def encoded(r: Run, tokenizer: Any, template: ChatTemplate, data: DataConfig) -> Encoded:
    """The one data boundary of sft: prepared files → cached, memory-mapped token ids (built once, by the
    main process; other ranks and later runs load it) → train / eval views (split, mixture, packing)."""
    from medtune.data.encode import label_policy
    from medtune.data.packing import pack_bins
    from medtune.data.tokenized import cache_root, default_workers
    from medtune.data.tokenized import encoded as encode_files
    from medtune.data.views import Rows, split

    root = cache_root(r.report["output_dir"])
    workers = data.num_workers or default_workers()
    train_files, dev_files = r.files("train"), r.files("dev")
    with r.main_first("tokenise"):
        policy = label_policy(data.mask, data.thinking)
        train_all = encode_files(train_files, tokenizer, template, data.max_length, policy, root, workers) \
            if train_files else None
        dev = encode_files(dev_files, tokenizer, template, data.max_length, policy, root, workers) \
            if dev_files else None
    if train_all is None:
        return Encoded(None, None, 0, {"train": 0, "eval": 0}, {"train": 0, "eval": 0})
    train_idx, evals, too_long = split(train_all, dev, data)
    eval_src = dev if dev is not None else train_all
    views = {name: Rows(eval_src, idx) for name, idx in evals.items()}
    if data.packing:
        lengths = train_all.data.column("length").to_numpy()  # the column alone, not the rows
        bins = pack_bins([lengths[int(i)] for i in train_idx], data.max_length)
    else:
        bins = None
    train = Rows(train_all, train_idx, bins, counted=True)
    count = sum(len(v) for v in views.values())
    prepared = {"train": len(train_all) - (0 if dev is not None else count + too_long["eval"]),
                "eval": count + too_long["eval"]}
    ev = views if len(views) > 1 else next(iter(views.values()), None)
    return Encoded(train, ev, count, too_long, prepared)


def collator_for(tokenizer: Any, data: DataConfig) -> CountingCollator:
    """Padded batches (or packed rows without cross-attention), counting real vs processed tokens."""
    from transformers import DataCollatorForSeq2Seq

    inner = PackedCollator(tokenizer.pad_token_id) if data.packing else \
        DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
    return CountingCollator(inner)


def start(cfg: Config, config_class: Any = None, prepare: bool = True, **stage_defaults: Any) -> Run:
    """The preamble every stage shares: resolved config written, arguments validated (before any
    work), data prepared once (main process). `prepare=False` (streaming pt): the datasets are read
    as they are, and the report only lists them (for the lineage and the model card)."""
    from medtune.config import dump_config
    from medtune.train.checks import preflight

    preflight(cfg, train_args=False)  # template, stage, method, model, adapters, data shape: before any work
    out = cfg.output_dir
    from medtune.folders import check_room

    check_room(out / "x", 0)  # the output folder is writable (a read-only disk fails here, not at the first save)
    args, resume = training_arguments(cfg, config_class, **stage_defaults)
    dump_config(cfg, out)
    report = prepare_once(cfg, args) if prepare else streamed_report(cfg)
    return Run(out, args, resume, report, cfg.data)


def streamed_report(cfg: Config) -> dict[str, Any]:
    """What a streamed run trains on, in the shape of a prepare report (no counts: nothing was prepared)."""
    from medtune.data.datasets import resolve

    return {"output_dir": None, "files": {}, "datasets": {s.name: {"license": s.license, "source": s.source, "path": s.path}
                                                        for s in resolve(cfg.data.datasets, cfg.data.registries)}}


def prepare_once(cfg: Config, args: Any) -> dict[str, Any]:
    """Prepare the data on the main process only (or reuse an up-to-date prepared folder); the other
    ranks wait, then read its report. (Every rank writing the same streamed files at once would
    interleave their rows.)"""
    from medtune.data.prepare import prepare, prepared_dir, up_to_date

    with args.main_process_first(desc="prepare data", local=False):
        if args.process_index == 0:
            if report := up_to_date(cfg):
                log.info("prepared data in %s is up to date (same data config and inputs): reused", report["output_dir"])
                return report
            return prepare(cfg)
        from medtune.folders import require_complete

        require_complete(prepared_dir(cfg), "Prepared data")
        return json.loads((prepared_dir(cfg) / "report.json").read_text(encoding="utf-8"))


def require_eval_split(args: Any, has_eval: bool) -> None:
    """Fail before any work when evaluation is scheduled but nothing was held out."""
    if not has_eval and args.eval_strategy != "no":
        raise ConfigError(f"train.eval_strategy={args.eval_strategy.value} but there is no eval split. Set "
                          "data.test_size (e.g. 0.05 or 32), use a dataset with an official dev split, or set "
                          "train.eval_strategy=no.")


def make_trainer(cfg: Config, model: Any, args: Any, tokenizer: Any, train_set: Any, eval_set: Any,
                 collator: Any) -> Any:
    """transformers Trainer for the LM stages (sft, pt), with the lean loss when configured."""
    from transformers import Trainer

    from medtune.train.lean_loss import chunk_size_for, install

    loss_func = restore = None
    # Liger's fused linear cross-entropy is the GPU's lean loss; it needs the labels inside the model's forward.
    if kernels(cfg) != "liger" and (chunk := chunk_size_for(model, cfg.finetune.loss_chunk_size)):
        loss_func, restore = install(model, chunk)
    trainer = trainer_class(Trainer)(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set or None,
                                      data_collator=collator, processing_class=tokenizer, compute_loss_func=loss_func)
    trainer.restore_head = restore  # put the real LM head back before saving
    trainer.lengths = train_set.lengths() if cfg.data.group_by_length and hasattr(train_set, "lengths") else None
    if cfg.finetune.retention.task:
        from medtune.data.templates import load_template
        from medtune.eval.retention import RetentionCallback

        trainer.add_callback(RetentionCallback(cfg, tokenizer, load_template(cfg.model.template)))
    return trainer


def trainer_class(base: Any) -> Any:
    """The Trainer with shuffling samplers that do not hold the epoch's order as a Python list:
    length-grouped when the trainer has the rows' `lengths` (data.group_by_length), else a permutation."""

    class MedtuneTrainer(base):
        lengths: Any = None

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            from transformers.trainer_utils import has_length

            ds = self.train_dataset if train_dataset is None else train_dataset
            if ds is not None and has_length(ds) and self.args.train_sampling_strategy == "random":
                seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
                if self.lengths is not None and ds is self.train_dataset:
                    # Grouped by the rows of one optimiser step, which accelerate deals out to the ranks and
                    # micro-batches in order: 2 ranks × 4 rows, or 4 accumulated micro-batches of 2, train
                    # exactly the step 1 process × 8 rows trains.
                    step_rows = self._train_batch_size * self.args.world_size * self.args.gradient_accumulation_steps
                    return LengthGrouped(self.lengths, step_rows, seed)
                return Permutation(len(ds), seed)
            return super()._get_train_sampler(train_dataset)

        def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
            from medtune.train.lean_loss import real_head

            with real_head(self.model):
                super()._save(output_dir, state_dict)

    return MedtuneTrainer


def train_and_save(cfg: Config, trainer: Any, tokenizer: Any, r: Run, metrics: dict[str, Any],
                   has_eval: bool) -> dict[str, Any]:
    """The tail every stage shares: lineage → eval → train → eval, then weights, tokenizer (with the
    chat template), trainer state, loss plot, metrics.json and the model card (README.md) into `r.out`."""
    from medtune.folders import mark_complete, unmark
    from medtune.model.card import model_card
    from medtune.train.checkpoints import CommitCheckpoints, finished_at, training_loss

    out, resume = r.out, r.resume
    lineage = run_lineage(cfg, trainer.model, r.report)
    if trainer.is_world_process_zero():  # before training, so every checkpoint-N inherits it
        from medtune.model.lineage import write as write_lineage

        unmark(out)  # the folder is a run in progress until its final save is whole
        write_lineage(out, lineage)
    commit = CommitCheckpoints(resume)
    trainer.add_callback(commit)
    if has_eval and not resume:  # after a resume, "before" would measure a fresh model, not the run
        metrics.update({f"{k}_before": v for k, v in trainer.evaluate().items() if _reported(k)})
    if resume:  # the "before" numbers of the run's first session, kept across resumes
        metrics.update({k: v for k, v in _read_json(out / "metrics.before.json").items() if k not in metrics})
    elif trainer.is_world_process_zero():
        write_json(out / "metrics.before.json", {k: v for k, v in metrics.items() if k.endswith("_before")})
    if resume and finished_at(resume, trainer.args):
        # The checkpoint is the run's last step. transformers would train one step more (it checks the
        # step budget only after a step): load the checkpoint instead, so the result is the straight run's.
        from transformers import TrainerState

        trainer._load_from_checkpoint(resume)
        trainer.state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
        global_step = trainer.state.global_step
    else:
        global_step = trainer.train(resume_from_checkpoint=resume).global_step
    # Over every step of the run, whatever the sessions: the Trainer's own numbers cover the last session only.
    metrics.update(train_loss=training_loss(trainer.state.log_history), global_step=global_step,
                   train_runtime=round(commit.elapsed(), 3), resumed_from=resume)
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]  # RL stages log one per step
    if rewards:
        metrics.update(reward_first=rewards[0], reward_last=rewards[-1])
    collator = trainer.data_collator
    if getattr(collator, "efficiency", None) is not None:  # a CountingCollator: real vs processed tokens
        metrics.update(padding_efficiency=collator.efficiency, train_tokens=collator.real,
                       processed_tokens=collator.processed)
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "RetentionCallback":
            metrics["retention"] = callback.summary()
    if has_eval:
        metrics.update({f"{k}_after": v for k, v in trainer.evaluate().items() if _reported(k)})
    if getattr(trainer, "restore_head", None):
        trainer.restore_head()
    trainer.save_model(str(out))  # the Trainer saves on the main process only
    trainer.save_state()
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out))
        plot_loss(trainer.state.log_history, out / "loss.png", metrics.get("eval_loss_before"))
        write_json(out / "metrics.json", metrics)
        # peft's save writes an empty model-card template; the run's card says what these weights are.
        atomic_write_text(out / "README.md", model_card(lineage, metrics))
        mark_complete(out)  # last: a kill or a full disk before this leaves a folder loading refuses
    log.info("saved to %s: %s", out, {k: v for k, v in metrics.items() if "loss" in k})
    return metrics


def run_lineage(cfg: Config, model: Any, report: dict[str, Any]) -> dict[str, Any]:
    """What this run's weights will contain: which adapters were merged or continued, every dataset."""
    from medtune.model.lineage import arch_of, for_run
    from medtune.model.load import training_plan

    merged, continued = training_plan(cfg)
    kind = "full" if cfg.finetune.method in ("full", "freeze") else "adapter"
    chain = [*merged, *([continued] if continued else [])]
    datasets = [{"name": name, "license": d.get("license"), "source": d.get("source"), "kept": d.get("kept")}
                for name, d in report.get("datasets", {}).items()]
    return for_run(cfg.model.name_or_path, chain, continued, cfg.output_dir, kind, cfg.finetune.stage, cfg.finetune.method,
                   cfg.model.template, arch_of(model.config), datasets)


def _reported(key: str) -> bool:
    return key.startswith("eval_") and not key.endswith(("runtime", "per_second", "preparation_time"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, ensure_ascii=False, indent=2))


def plot_loss(log_history: list[dict[str, Any]], path: Path, eval_before: float | None = None) -> Path:
    """Plot training (and eval) loss against steps; the file every run leaves next to its weights.

    `eval_before` (the eval loss before training) is drawn at step 0: Trainer.train() starts a fresh
    log history, so the pre-training evaluation would otherwise be missing from the curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    eval_keys = sorted({k for h in log_history for k in h if k.startswith("eval_") and k.endswith("_loss")})
    for key in ["loss", *eval_keys]:
        points = [(h["step"], h[key]) for h in log_history if key in h]
        if key == "eval_loss" and eval_before is not None:
            points = [(0, eval_before), *points]
        label = "train loss" if key == "loss" else key.removeprefix("eval_").replace("_", " ")
        if points:
            ax.plot(*zip(*points, strict=True), marker="o" if key != "loss" else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if ax.lines:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def tokenize_ahead(cfg: Config, report: dict[str, Any]) -> str:
    """`medtune prepare` with `data.tokenize: true`: build the tokenised cache of `finetune.stage` now, so a
    cluster job (every rank, every restart) starts at step 1. Loads the tokenizer only, not the model."""
    from medtune.data.templates import load_template
    from medtune.data.tokenized import cache_root, default_workers, records
    from medtune.model.load import load_tokenizer, resolve_model_path

    template = load_template(cfg.model.template)
    tokenizer = load_tokenizer(resolve_model_path(cfg.model.name_or_path), template, cfg.model.trust_remote_code)
    r = Run(Path(report["output_dir"]).parent, None, None, report, cfg.data)
    stage = cfg.finetune.stage
    if stage == "sft":
        encoded(r, tokenizer, template, cfg.data)
    elif stage == "pt":
        from medtune.train.pt import text_blocks

        text_blocks(r, tokenizer, template, cfg)
    else:  # the TRL stages tokenise inside their trainer; their Arrow rows can still be built ahead
        keys = ["prompt"] if stage == "grpo" else ["prompt", "chosen", "rejected"]
        for split in ("train", "dev"):
            if r.files(split):
                records(r.files(split), keys, cache_root(report["output_dir"]),
                        cfg.data.num_workers or default_workers(), kto=False)
    return str(cache_root(report["output_dir"]))
