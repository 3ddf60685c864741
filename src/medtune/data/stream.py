"""Streaming pretraining (`data.streaming: true`, stage pt): text shards read, cleaned and tokenised on
the fly into EOS-joined blocks, for corpora larger than a tokenised cache should hold on disk.

The datasets' shards (a file, a folder or a glob; JSON Lines plain, .gz or .zst, Parquet, .txt) are
read in config order through their format converter, with `data.steps` applied per document (a
dropped document is counted by reason). Blocks are assembled exactly as `views.Blocks` assembles them
over the cache: documents end with EOS, a document longer than the room left continues in the next
block, positions restart per document, and the first label of every piece is masked.

Exact resume: every block records where it starts — (epoch, shard, record within the shard, token
offset within that record's document) and the counts so far. At each checkpoint `StreamCheckpoint`
writes the start of the first block not yet trained on (global step × batch × accumulation × world
size blocks have been consumed; the data loader may have read a few blocks ahead, hence the ring of
recent starts) to `checkpoint-N/medtune_stream.json`. Resuming opens that shard, skips the records
before it without tokenising them, and continues with the very block the straight run would have
trained on next. Blocks come in input order (shuffle shards beforehand for a mixed order); when the
stream ends before `train.max_steps`, it starts again (the next epoch).
"""

from __future__ import annotations

import json
import logging
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from medtune.data import io
from medtune.data.datasets import DatasetSpec
from medtune.errors import ConfigError

log = logging.getLogger(__name__)
STATE_FILE = "medtune_stream.json"
_BATCH = 256  # documents per tokenizer call


@dataclass
class Position:
    """Where a block starts: the document (shard, record) and the token inside it."""

    epoch: int = 0
    shard: int = 0
    record: int = 0
    offset: int = 0
    documents: int = 0  # documents started so far (all epochs)
    dropped: dict[str, int] = field(default_factory=dict)


def shards_of(specs: list[DatasetSpec]) -> list[DatasetSpec]:
    """One spec per shard, in config order (the stream's shard index counts these)."""
    out = []
    for spec in specs:
        if spec.format != "text":
            raise ConfigError(f"data.streaming reads format `text` datasets; {spec.name!r} has format {spec.format!r}. "
                              "Use format text (a .txt line or a JSON `text` field per document), or turn streaming off.")
        out.extend(replace(spec, path=str(p)) for p in io.shards(spec.path))
    return out


class TextStream(torch.utils.data.IterableDataset):
    """The blocks from `start` (a torch IterableDataset: the Trainer draws as many as `max_steps` needs);
    `starts` keeps the recent blocks' positions, by block number, for `StreamCheckpoint`."""

    def __init__(self, specs: list[DatasetSpec], tokenizer: Any, size: int, steps_config: list[Any],
                 start: Position | None = None, limit_documents: int | None = None, epochs: int | None = None) -> None:
        self.shards, self.tokenizer, self.size = shards_of(specs), tokenizer, size
        self.steps_config, self.start = steps_config, start or Position()
        self.limit, self.epochs = limit_documents, epochs
        self.starts: deque[tuple[int, Position]] = deque(maxlen=4096)
        self.blocks = 0  # blocks yielded since `start`
        self.resumed_step = 0  # the global step `start` belongs to (a resumed run's checkpoint step)
        self.next_position: Position | None = None  # with `limit_documents`: the first document not read
        bos = tokenizer.bos_token_id
        self.bos = [bos] if bos is not None and getattr(tokenizer, "add_bos_token", False) else []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from medtune.data.packing import COUNT, concat

        pieces, room, block_start, self.blocks = [], self.size, None, 0
        for pos, ids in self._documents():
            offset = pos.offset
            while offset < len(ids):
                if block_start is None:
                    block_start = replace(pos, offset=offset, dropped=dict(pos.dropped))
                take = ids[offset:offset + room]
                pieces.append({"input_ids": take, "labels": take})
                room -= len(take)
                offset += len(take)
                if room == 0:
                    self.starts.append((self.blocks, block_start))
                    row = concat(pieces)
                    row[COUNT] = True
                    yield row
                    self.blocks += 1
                    pieces, room, block_start = [], self.size, None
        if pieces and self.epochs is not None:  # a finite stream (eval) keeps its last, shorter block
            self.starts.append((self.blocks, block_start))
            yield concat(pieces)
            self.blocks += 1

    def position(self, block: int) -> Position:
        """The start of block number `block` (counted from `start`), from the ring of recent blocks."""
        for number, pos in reversed(self.starts):
            if number == block:
                return pos
        raise RuntimeError(f"stream position of block {block} is no longer known (the data loader read more than "
                           f"{self.starts.maxlen} blocks ahead)")

    def _documents(self) -> Iterator[tuple[Position, list[int]]]:
        """(position of the document with its starting token offset, token ids + EOS), in order, forever
        (or for `epochs`), from `start`; the first document resumes at `start.offset`."""
        from medtune.data.formats import FORMATS
        from medtune.data.steps import build

        steps = build(self.steps_config)
        s, docs, dropped = self.start, self.start.documents, Counter(self.start.dropped)
        epoch, first_shard, skip, first_offset = s.epoch, s.shard, s.record, s.offset
        while self.epochs is None or epoch < self.epochs:
            for shard_i in range(first_shard, len(self.shards)):
                spec = self.shards[shard_i]
                batch: list[tuple[Position, str]] = []
                for record_i, item in enumerate(FORMATS.get(spec.format)(spec)):
                    if record_i < skip:  # resuming: records before the saved position are not tokenised
                        continue
                    text = self._clean(item, steps, dropped)
                    if text is None:
                        continue
                    if self.limit is not None and docs >= self.limit:  # where the next reader starts
                        self.next_position = Position(epoch, shard_i, record_i, 0, docs, dict(dropped))
                        yield from self._tokenised(batch)
                        return
                    batch.append((Position(epoch, shard_i, record_i, first_offset, docs, dict(dropped)), text))
                    docs, first_offset = docs + 1, 0
                    if len(batch) == _BATCH:
                        yield from self._tokenised(batch)
                        batch = []
                yield from self._tokenised(batch)
                skip = 0
            epoch, first_shard = epoch + 1, 0
            if docs == s.documents and epoch > s.epoch + 1:
                raise ConfigError("data.streaming: the datasets hold no document to train on (every row was "
                                  "empty or dropped by data.steps).")

    def _tokenised(self, batch: list[tuple[Position, str]]) -> Iterator[tuple[Position, list[int]]]:
        if not batch:
            return
        ids = self.tokenizer([t for _, t in batch], add_special_tokens=False)["input_ids"]
        for (pos, _), doc in zip(batch, ids, strict=True):
            yield pos, [*self.bos, *doc, self.tokenizer.eos_token_id]

    @staticmethod
    def _clean(item: Any, steps: list, dropped: Counter) -> str | None:
        if item.example is None:
            dropped[item.reason] += 1
            return None
        row = item.example
        for _, step in steps:
            new, why = step(row, Counter())
            if new is None:
                dropped[why] += 1
                return None
            row = new
        return row["text"]


def eval_and_train(specs: list[DatasetSpec], tokenizer: Any, size: int, steps_config: list[Any], eval_documents: int,
                   resume: Position | None) -> tuple[list[dict[str, Any]] | None, TextStream]:
    """The first `eval_documents` documents as eval blocks (held in memory: keep it small), and the training
    stream from the document after them (or from a checkpoint's saved position)."""
    if eval_documents:
        ev = TextStream(specs, tokenizer, size, steps_config, limit_documents=eval_documents, epochs=1)
        blocks = [{k: v for k, v in b.items() if not k.startswith("_")} for b in ev]
        if ev.next_position is None:
            raise ConfigError(f"data.test_size={eval_documents} documents held out for eval leaves none to train on.")
        after = ev.next_position
    else:
        blocks, after = None, Position()
    return blocks, TextStream(specs, tokenizer, size, steps_config, start=resume or after)


def write_state(directory: Path, pos: Position, block: int) -> None:
    with open(directory / STATE_FILE, "w", encoding="utf-8") as f:
        json.dump({"block": block, "position": vars(pos)}, f)


def read_state(checkpoint: str | Path) -> Position:
    path = Path(checkpoint) / STATE_FILE
    try:
        return Position(**json.loads(path.read_text(encoding="utf-8"))["position"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{checkpoint} has no readable {STATE_FILE}: it was not saved by a streaming pt run "
                          "(set data.streaming to what the run used, or start a new output_dir).") from None


def checkpoint_callback(stream: TextStream, trainer: Any, resume: str | None) -> Any:
    from transformers import TrainerCallback

    class StreamCheckpoint(TrainerCallback):
        """Writes the stream position of the first untrained block into each checkpoint (before its
        COMPLETE marker: this callback runs before `CommitCheckpoints`). On resume, restores the
        checkpoint's random state once more at the first step: the Trainer restores it before it
        creates the data loader iterator, whose seed draw would otherwise shift the dropout masks
        against the straight run (with a map-style dataset it restores after the skipped batches)."""

        def __init__(self) -> None:
            self.pending = resume

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.pending:
                trainer._load_rng_state(self.pending)
                self.pending = None

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not state.is_world_process_zero:
                return
            directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            consumed = (state.global_step - stream.resumed_step) * args.per_device_train_batch_size * \
                args.gradient_accumulation_steps * args.world_size
            if directory.is_dir():
                write_state(directory, stream.position(consumed), consumed)

    return StreamCheckpoint()
