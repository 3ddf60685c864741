"""Lazy views over the tokenised cache, which the Trainer reads row by row: train / eval splits,
packed bins, pretraining blocks, and the Arrow rows the TRL stages take. Nothing here copies the
rows into Python lists: only row indices (and lengths) live in memory."""

from __future__ import annotations

import logging
from typing import Any

from medtune.data.tokenized import cache_root, default_workers, records

log = logging.getLogger(__name__)


class Rows:
    """A map-style view the Trainer reads lazily: rows `indices` of an encoded Arrow dataset, or packed
    bins of them (each bin concatenated on access). Nothing is copied into Python lists up front, so
    memory stays flat in the number of rows; `counted` marks training rows for the CountingCollator."""

    def __init__(self, ds: Any, indices: Any, bins: list[list[int]] | None = None, counted: bool = False) -> None:
        self.ds, self.indices, self.bins, self.counted = ds, indices, bins, counted

    def __len__(self) -> int:
        return len(self.bins) if self.bins is not None else len(self.indices)

    def lengths(self) -> Any:
        """Token count of each row in view order (numpy, from the length column alone), for the
        length-grouped sampler; None for packed bins (they are all near max_length)."""
        if self.bins is not None:
            return None
        import numpy as np

        return _column(self.ds, "length")[np.asarray(self.indices, dtype=np.int64)]

    def _row(self, j: int) -> dict[str, list[int]]:
        r = self.ds[int(j)]
        return {"input_ids": r["input_ids"], "labels": r["labels"]}

    def __getitem__(self, i: int) -> dict[str, Any]:
        from medtune.data.packing import COUNT, concat

        if self.bins is not None:
            row: dict[str, Any] = concat([self._row(self.indices[j]) for j in self.bins[i]])
        else:
            row = self._row(self.indices[i])
            row["attention_mask"] = [1] * len(row["input_ids"])
        if self.counted:
            row[COUNT] = True
        return row


def _column(ds: Any, name: str) -> Any:
    """One column as a numpy array, read from its Arrow buffers alone. (Indexing `ds.with_format("numpy")
    [name]` with an index array gathers whole rows, token ids included: 750 MiB at a million rows.)"""
    column = ds.data.column(name)
    return column.to_numpy() if name == "length" else column.to_numpy(zero_copy_only=False)


def split(train_all: Any, dev: Any | None, data: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Train and eval row indices with today's rules: an official dev split wins, else `test_size` rows
    held out (seeded permutation, before the too-long rows are removed, so the split does not depend on
    the tokenizer); `data.mix` samples the training rows. Returns (train idx, {dataset: eval idx}, counts)."""
    import numpy as np

    lengths = _column(train_all, "length")
    if dev is None and data.test_size:
        n = int(data.test_size) if data.test_size >= 1 else round(len(train_all) * data.test_size)
        perm = np.random.default_rng(data.seed).permutation(len(train_all))
        held, train_idx, eval_src = perm[:n], perm[n:], train_all
    else:
        held, train_idx, eval_src = None, np.arange(len(train_all)), dev
    too_long = {"train": int((lengths[train_idx] == 0).sum())}
    train_idx = train_idx[lengths[train_idx] > 0]
    if data.mix:
        from medtune.data.mixing import mix_indices

        names = _column(train_all, "dataset")[train_idx]
        groups = {str(name): train_idx[names == name].tolist() for name in np.unique(names)}
        train_idx, counts = mix_indices(groups, data.mix, data.mix_size, data.seed)
        log.info("training mixture: %s", counts)
    evals: dict[str, Any] = {}
    if eval_src is not None:
        idx = held if held is not None else np.arange(len(eval_src))
        ev_len = _column(eval_src, "length")
        too_long["eval"] = int((ev_len[idx] == 0).sum())
        idx = idx[ev_len[idx] > 0]
        names = _column(eval_src, "dataset")[idx]
        evals = {str(name): idx[names == name] for name in np.unique(names)}
    too_long.setdefault("eval", 0)
    return train_idx, evals, too_long


class Blocks:
    """Pretraining blocks of exactly `size` tokens over documents `indices` of a tokenised cache, in order
    (a document longer than the room left continues in the next block; positions restart per document).
    Block boundaries are found once from the lengths; each block is assembled when the Trainer asks."""

    def __init__(self, docs: Any, indices: Any, size: int, counted: bool = False) -> None:
        self.docs, self.size, self.counted = docs, size, counted
        lengths = _column(docs, "length")
        self.indices = [int(i) for i in indices]
        self.starts: list[tuple[int, int]] = []  # (position in indices, offset in that document) per block
        room, pos, offset = 0, 0, 0
        while pos < len(self.indices):
            if room == 0:
                self.starts.append((pos, offset))
                room = size
            take = min(room, int(lengths[self.indices[pos]]) - offset)
            room -= take
            offset += take
            if offset == int(lengths[self.indices[pos]]):
                pos, offset = pos + 1, 0

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from medtune.data.packing import COUNT, concat

        pos, offset = self.starts[i]
        pieces, room = [], self.size
        while room and pos < len(self.indices):
            doc = self.docs[self.indices[pos]]
            ids = doc["input_ids"][offset:offset + room]
            pieces.append({"input_ids": ids, "labels": ids})
            room -= len(ids)
            if offset + len(ids) == doc["length"]:
                pos, offset = pos + 1, 0
            else:  # the block is full and the document continues in the next one
                break
        row = concat(pieces)
        if self.counted:
            row[COUNT] = True
        return row


def trl_splits(r: Any, keys: list[str], data: Any, kto: bool = False) -> tuple[Any, Any, dict[str, int]]:
    """Train and eval datasets (Arrow, only the fields TRL reads) split by today's rules (see `split`)."""
    import numpy as np

    root, workers = cache_root(r.report["output_dir"]), data.num_workers or default_workers()
    train_files, dev_files = r.files("train"), r.files("dev")
    if not train_files:
        return None, None, {"train": 0, "eval": 0}
    with r.main_first("prepared rows"):
        train_all = records(train_files, keys, root, workers)
        dev = records(dev_files, keys, root, workers) if dev_files else None
        if kto:  # split by pair (both halves of a pair stay together), then take the pair's two KTO rows
            kto_train = records(train_files, keys, root, workers, kto=True)
            kto_dev = records(dev_files, keys, root, workers, kto=True) if dev_files else None
    train_idx, evals, _ = split(train_all, dev, data)
    eval_idx = np.sort(np.concatenate(list(evals.values()))) if evals else np.array([], dtype=int)
    eval_src = dev if dev is not None else train_all
    if kto:
        def halves(idx: Any) -> Any:
            return np.stack([2 * np.asarray(idx), 2 * np.asarray(idx) + 1], axis=1).ravel()

        train_idx, eval_idx = halves(train_idx), halves(eval_idx)
        train_all, eval_src = kto_train, kto_dev if dev is not None else kto_train
    drop = ["dataset", "length"]
    train = train_all.select(train_idx, keep_in_memory=True).remove_columns(drop)
    ev = eval_src.select(eval_idx, keep_in_memory=True).remove_columns(drop) if len(eval_idx) else None
    return train, ev, {"train": len(train), "eval": len(ev) if ev is not None else 0}
