"""Packing without contamination, and an honest measure of padding efficiency.

Packed rows hold several samples back to back with `position_ids` restarting at 0 for each and
no 2-D attention mask. transformers (>= 4.53) detects that layout (`find_packed_sequence_indices`)
and builds a block-diagonal causal mask for every attention implementation — eager and SDPA on
CPU, varlen flash-attention on GPU — so no sample attends to another. The first label of every
sample is -100, so no sample is trained to predict its neighbour's first token.
Bins are filled greedily (best-fit decreasing): long samples first, each into the open bin whose
free room fits it most tightly, found by bisection (O(n log n); a first-fit scan is quadratic).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from medtune.data.encode import IGNORE_INDEX


def pack(examples: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Greedy best-fit-decreasing bin packing of encoded examples into rows of <= max_length tokens."""
    return [concat([examples[i] for i in b]) for b in pack_bins([len(e["input_ids"]) for e in examples], max_length)]


def pack_bins(lengths: Any, max_length: int) -> list[list[int]]:
    """The bins as positions into `lengths`: long samples first, each into the open bin whose free room
    fits it most tightly (bisection over the sorted free rooms)."""
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), kept sorted
    for pos in sorted(range(len(lengths)), key=lambda k: -int(lengths[k])):
        n = int(lengths[pos])
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, slot = free.pop(at)
        else:
            bins.append([])
            room, slot = max_length, len(bins) - 1
        bins[slot].append(pos)
        if room - n > 0:
            bisect.insort(free, (room - n, slot))
    return bins


def concat(samples: list[dict[str, list[int]]]) -> dict[str, list[int]]:
    """One row from several samples: positions restart and the first label is masked per sample."""
    row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for s in samples:
        row["input_ids"] += s["input_ids"]
        row["labels"] += [IGNORE_INDEX] + s["labels"][1:]
        row["position_ids"] += list(range(len(s["input_ids"])))
    return row


@dataclass
class PackedCollator:
    """Batch packed rows: pad to the longest row with a padding segment of its own (positions from 0),
    so the padding is one more isolated 'sample' with no loss, and no attention mask is needed."""

    pad_token_id: int

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
        for r in rows:
            pad = width - len(r["input_ids"])
            positions = r.get("position_ids") or list(range(len(r["input_ids"])))  # an unpacked row: one sample
            batch["input_ids"].append(r["input_ids"] + [self.pad_token_id] * pad)
            batch["labels"].append(r["labels"] + [IGNORE_INDEX] * pad)
            batch["position_ids"].append(positions + list(range(pad)))
        return {**{k: torch.tensor(v) for k, v in batch.items()}, "use_cache": False}


COUNT = "_count_tokens"  # marks training rows; eval batches go through the same collator uncounted


@dataclass
class CountingCollator:
    """Wraps a collator and counts real vs processed tokens of training batches: padding
    efficiency as measured on what the model actually processed, not estimated."""

    inner: Any
    real: int = 0
    processed: int = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        counted = all(f.get(COUNT) for f in features)
        batch = self.inner([{k: v for k, v in f.items() if k != COUNT} for f in features])
        if counted:
            self.real += sum(len(f["input_ids"]) for f in features)
            self.processed += batch["input_ids"].numel()
        return batch

    @property
    def efficiency(self) -> float | None:
        return self.real / self.processed if self.processed else None
