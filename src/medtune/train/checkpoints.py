"""Checkpoints that survive SIGKILL: a commit marker per checkpoint, and resume that trusts only marked ones.

transformers' Trainer writes `checkpoint-N/` in place (weights, optimizer, scheduler, RNG states,
trainer state with the data position) and `resume_from_checkpoint=True` picks the highest N, even
when a kill interrupted its save. medtune commits a checkpoint by writing an fsynced `COMPLETE`
file after the Trainer has written everything (the `on_save` callback runs after the save), and
resolves resume targets to the newest committed checkpoint. Older checkpoints are never touched by
a save, so a killed save can only lose the checkpoint being written, never the last good one.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from medtune.errors import ConfigError

MARKER = "COMPLETE"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
log = logging.getLogger(__name__)


class CommitCheckpoints(TrainerCallback):
    """Write `checkpoint-N/COMPLETE` once the Trainer has finished saving checkpoint N."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if directory.is_dir():
            _fsync_tree(directory)
            with open(directory / MARKER, "w") as f:
                f.write(f"{state.global_step}\n")
                f.flush()
                os.fsync(f.fileno())


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


def _set_aside_incomplete(output_dir: Path) -> None:
    """Rename interrupted saves so neither resume nor the Trainer's checkpoint rotation sees them
    (rotation matches `checkpoint-*` loosely and would delete a `checkpoint-N.incomplete`: kept for audit)."""
    for p in output_dir.glob("checkpoint-*"):
        if _CHECKPOINT.match(p.name) and not (p / MARKER).exists():
            target = p.with_name(f"incomplete-{p.name}")
            log.warning("%s is incomplete (interrupted save); moved to %s", p, target.name)
            p.rename(target)


def _fsync_tree(directory: Path) -> None:
    for f in directory.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
