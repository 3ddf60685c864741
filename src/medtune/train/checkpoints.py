"""Checkpoints that survive SIGKILL: a commit marker per checkpoint, and resume that trusts only marked ones.

transformers' Trainer writes `checkpoint-N/` in place (weights, optimizer, scheduler, RNG states,
trainer state with the data position) and `resume_from_checkpoint=True` picks the highest N, even
when a kill interrupted its save. medtune commits a checkpoint by writing an fsynced `COMPLETE`
file after the Trainer has written everything (the `on_save` callback runs after the save), and
resolves resume targets to the newest committed checkpoint. Older checkpoints are never touched by
a save, so a killed save can only lose the checkpoint being written, never the last good one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from medtune.errors import ConfigError

MARKER = "COMPLETE"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
log = logging.getLogger(__name__)


PROGRESS = "medtune_progress.json"


class CommitCheckpoints(TrainerCallback):
    """Write `checkpoint-N/COMPLETE` once the Trainer has finished saving checkpoint N, with the
    training time so far (`medtune_progress.json`), so metrics stay right across resumes.

    It also logs the last step (the Trainer logs every `logging_steps` only), so the log history,
    which every checkpoint carries, holds the loss of every step: `training_loss(state)` is then the
    same number for a straight run and for one resumed from any checkpoint (the Trainer's own
    `training_loss` covers only the steps of the last session: 0.0 after resuming at the end)."""

    def __init__(self, resume: str | None = None) -> None:
        self.prior = elapsed_at(resume)
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return self.prior + time.monotonic() - self.started

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.monotonic()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= state.max_steps and args.logging_strategy != "no":
            control.should_log = True

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if directory.is_dir():
            with open(directory / PROGRESS, "w") as f:
                json.dump({"step": state.global_step, "elapsed_s": round(self.elapsed(), 3)}, f)
            _fsync_tree(directory)
            with open(directory / MARKER, "w") as f:
                f.write(f"{state.global_step}\n")
                f.flush()
                os.fsync(f.fileno())


def elapsed_at(checkpoint: str | None) -> float:
    """Training seconds recorded in a checkpoint (0 for none, or for checkpoints older than the record)."""
    if not checkpoint:
        return 0.0
    try:
        return float(json.loads((Path(checkpoint) / PROGRESS).read_text())["elapsed_s"])
    except (OSError, ValueError, KeyError):
        return 0.0


def finished_at(checkpoint: str, args: Any) -> bool:
    """Whether `checkpoint` already holds the run's last step (so resuming has nothing left to train)."""
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    step = state.get("global_step", 0)
    if args.max_steps and args.max_steps > 0:
        return step >= args.max_steps
    return step >= state.get("max_steps", float("inf")) and state.get("num_train_epochs") == args.num_train_epochs


def training_loss(log_history: list[dict[str, Any]]) -> float | None:
    """Mean loss over every step, from the logged losses weighted by the steps each one covers."""
    points = sorted((h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h)
    total, last = 0.0, 0
    for step, loss in points:
        total += loss * (step - last)
        last = step
    return total / last if last else None


def resolve_resume(resume: Any, output_dir: str) -> str | None:
    """`train.resume_from_checkpoint`: a path, or true/"latest" for the newest committed checkpoint."""
    if resume in (None, False, ""):
        return None
    if resume is True or resume == "latest":
        _set_aside_incomplete(Path(output_dir))
        committed = sorted((int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*")
                           if (m := _CHECKPOINT.match(p.name)) and (p / MARKER).exists())
        if not committed:
            raise ConfigError(f"train.resume_from_checkpoint=true but {output_dir} holds no complete checkpoint"
                              f"{_listing(Path(output_dir))}.")
        log.info("resuming from %s", committed[-1][1])
        return str(committed[-1][1])
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"train.resume_from_checkpoint: {resume} is not a checkpoint folder"
                          f"{_listing(Path(output_dir))}.")
    if not (path / MARKER).exists():
        raise ConfigError(f"Checkpoint {resume} is incomplete (no {MARKER} marker): its save was interrupted. "
                          "Resume from an earlier checkpoint, or use train.resume_from_checkpoint=true to pick "
                          "the newest complete one.")
    return str(path)


def _listing(output_dir: Path) -> str:
    """What can be resumed from, for the error message (complete and interrupted checkpoints)."""
    found = sorted((int(m.group(1)), p) for p in output_dir.glob("checkpoint-*") if (m := _CHECKPOINT.match(p.name)))
    if not found:
        return f"; {output_dir} has no checkpoint-N folders (train.save_steps decides how often they are written)"
    names = [f"{p.name}{'' if (p / MARKER).exists() else ' (incomplete)'}" for _, p in found]
    return f"; {output_dir} has: {', '.join(names)} (keep more with train.save_total_limit)"


KEEP_SET_ASIDE = 2  # interrupted saves kept for audit; older ones are deleted


def _set_aside_incomplete(output_dir: Path) -> None:
    """Rename interrupted saves so neither resume nor the Trainer's checkpoint rotation sees them
    (rotation matches `checkpoint-*` loosely and would delete a `checkpoint-N.incomplete`: kept for audit).

    Names are unique (`incomplete-checkpoint-N`, then `-2`, `-3` …): two kills at the same step used to
    collide ("Directory not empty") and block every later resume. Only the newest KEEP_SET_ASIDE are kept."""
    import shutil

    for p in output_dir.glob("checkpoint-*"):
        if _CHECKPOINT.match(p.name) and not (p / MARKER).exists():
            target, k = p.with_name(f"incomplete-{p.name}"), 1
            while target.exists():
                k += 1
                target = p.with_name(f"incomplete-{p.name}-{k}")
            log.warning("%s is incomplete (interrupted save); moved to %s", p, target.name)
            p.rename(target)
    aside = sorted(output_dir.glob("incomplete-checkpoint-*"), key=lambda q: q.stat().st_mtime)
    for old in aside[:-KEEP_SET_ASIDE] if len(aside) > KEEP_SET_ASIDE else []:
        log.info("deleting %s (only the newest %d interrupted saves are kept)", old.name, KEEP_SET_ASIDE)
        shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(directory: Path) -> None:
    for f in directory.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
