"""Preference stages on TRL: a reward model (`rm`) and direct alignment (`dpo`, `orpo`, `simpo`, `kto`).

All read medtune's pairwise shape `{"prompt": [...], "chosen": [...], "rejected": [...]}`, which is
TRL's conversational preference format, rendered by the tokenizer's chat template (ours). Each stage
is one row of `TRAINERS`: which TRL trainer and config run it, and the config values that make the
stage what it is (SimPO is TRL's CPO with `loss_type=simpo`). The `train:` block is validated
against that TRL config, so stage knobs such as `train.beta` or `train.loss_type` pass straight through.
"""

from __future__ import annotations

import importlib
import logging
from functools import partial
from typing import Any

from medtune.config import Config
from medtune.errors import MedtuneError
from medtune.model.load import load_model
from medtune.model.methods import METHODS, quantization_for
from medtune.train import STAGES
from medtune.train.common import require_eval_split, start, train_and_save, trainer_class
from medtune.train.fused_pairs import fused

log = logging.getLogger(__name__)

# stage: (trainer, config, stage-defining defaults, help)
TRAINERS: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "rm": ("trl:RewardTrainer", "trl:RewardConfig", {},
           "reward model on preference pairs (sequence-classification head); reports pairwise accuracy"),
    "dpo": ("trl:DPOTrainer", "trl:DPOConfig", {}, "direct preference optimisation (TRL DPOTrainer)"),
    "orpo": ("trl.experimental.orpo:ORPOTrainer", "trl.experimental.orpo:ORPOConfig", {},
             "odds-ratio preference optimisation, no reference model (TRL ORPOTrainer)"),
    "simpo": ("trl.experimental.cpo:CPOTrainer", "trl.experimental.cpo:CPOConfig",
              {"loss_type": "simpo", "cpo_alpha": 0.0}, "SimPO: length-normalised, reference-free (TRL CPO, loss_type=simpo)"),
    "kto": ("trl:KTOTrainer", "trl:KTOConfig", {},
            "KTO on unpaired good/bad answers (each pair becomes one desirable and one undesirable row)"),
}

# Their TRL trainers take full logits; medtune gives them TRL's fused LM head (train/fused_pairs.py) unless
# finetune.loss_chunk_size is null, the switch that also turns SFT's lean loss off.
FUSED_STAGES = ("orpo", "simpo")


def run(cfg: Config, stage: str) -> dict[str, Any]:
    from transformers import set_seed

    from medtune.data.views import trl_splits

    trainer_path, config_path, stage_defaults, _ = TRAINERS[stage]
    trainer_cls, config_cls = _import(trainer_path), _import(config_path)
    r = start(cfg, config_cls, max_length=cfg.data.max_length, **stage_defaults)
    # Memory-mapped Arrow rows (not Python lists); TRL tokenises them with its own cached `map`.
    train_rows, eval_rows, _ = trl_splits(r, ["prompt", "chosen", "rejected"], cfg.data, kto=stage == "kto")
    if not train_rows:
        raise MedtuneError(f"No preference pairs to train on; see {r.report['output_dir']}/report.json.")
    require_eval_split(r.args, eval_rows is not None)

    model, tokenizer, _ = load_model(cfg.model, merge_adapters=False, quantization_bits=quantization_for(cfg),
                                     reward_head=stage == "rm")
    set_seed(r.args.seed)
    model = METHODS.get(cfg.finetune.method)(model, cfg, task_type="SEQ_CLS" if stage == "rm" else "CAUSAL_LM")
    # KTO keeps its own sampler: its KL term pairs each row with a mismatched completion by position.
    grouped = cfg.data.group_by_length and stage != "kto"
    if stage in FUSED_STAGES and cfg.finetune.loss_chunk_size:  # DPO and KTO have TRL's fused head already
        trainer_cls = fused(trainer_cls)
    trainer = (trainer_class(trainer_cls) if grouped else trainer_cls)(
        model=model, args=r.args, train_dataset=train_rows, eval_dataset=eval_rows, processing_class=tokenizer)
    if grouped:  # pairs of similar length in a batch: the collator pads both sequences of a pair to the longest
        trainer.lengths = pair_lengths(trainer.train_dataset)
    metrics = _kept(trainer, train_rows, eval_rows or [], cfg, r.args)
    return train_and_save(cfg, trainer, tokenizer, r, metrics, bool(metrics["eval_pairs"]))


def _kept(trainer: Any, train_rows: list, eval_rows: list, cfg: Config, args: Any) -> dict[str, Any]:
    """Count what the TRL trainer filtered out (RewardTrainer drops pairs longer than max_length) and
    refuse to run when a split vanished: the counts go to metrics.json and the log, never silently."""
    kept_train = len(trainer.train_dataset)
    kept_eval = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
    dropped = {"train": len(train_rows) - kept_train, "eval": len(eval_rows) - kept_eval}
    hint = f"raise data.max_length (now {cfg.data.max_length}) or shorten the answers"
    if any(dropped.values()):
        log.warning("dropped %d train and %d eval pairs longer than data.max_length=%d tokens (%s)",
                    dropped["train"], dropped["eval"], cfg.data.max_length, hint)
    if not kept_train:
        raise MedtuneError(f"All {len(train_rows)} training pairs are longer than data.max_length="
                           f"{cfg.data.max_length} tokens: {hint}.")
    if eval_rows and not kept_eval and args.eval_strategy != "no":
        raise MedtuneError(f"All {len(eval_rows)} eval pairs are longer than data.max_length={cfg.data.max_length} "
                           f"tokens, so there is nothing to evaluate: {hint}, or set train.eval_strategy=no.")
    return {"train_pairs": kept_train, "eval_pairs": kept_eval, "dropped_too_long": dropped,
            "prepared_pairs": {"train": len(train_rows), "eval": len(eval_rows)}}


def pair_lengths(ds: Any) -> Any:
    """Tokens in each training row's longest sequence, read from the columns TRL tokenised (prompt_ids +
    the longer of chosen_ids / rejected_ids for DPO; the full chosen / rejected sequences for the reward
    model, ORPO and SimPO), batch by batch in Arrow (never the rows as Python lists); None when the
    columns are not ones it knows, and the batches are then shuffled without grouping."""
    import numpy as np
    import pyarrow.compute as pc

    cols = set(getattr(ds, "column_names", None) or ())
    answers = [c for c in ("chosen_ids", "rejected_ids") if c in cols]
    prompt = "prompt_ids" if "prompt_ids" in cols and answers else None
    if not prompt:
        answers = [c for c in ("chosen_input_ids", "rejected_input_ids", "chosen_ids", "rejected_ids") if c in cols]
    if not answers:
        return None
    out = []
    for batch in ds.select_columns([c for c in (prompt, *answers) if c]).with_format("arrow").iter(batch_size=65536):
        n = np.maximum.reduce([pc.list_value_length(batch[c]).to_numpy(zero_copy_only=False) for c in answers])
        out.append(n + (pc.list_value_length(batch[prompt]).to_numpy(zero_copy_only=False) if prompt else 0))
    return np.concatenate(out) if out else None


def _import(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


for _stage, (_t, _c, _d, _help) in TRAINERS.items():
    STAGES.register(_stage, _help)(partial(run, stage=_stage))
