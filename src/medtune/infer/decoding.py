"""The continuous-batching decoding loop's state: rows joining and leaving one shared key/value cache.

`Decoding` is the running batch (rows, their DynamicCache left-padded to one length, the 2-D
attention mask over it, each row's next position id and last token); `Row` is one request inside it,
with its own penalties, warpers and seeded sampler. `medtune.infer.batching.Batcher` drives it: it
decides who joins and when; this module only knows how to prefill, step, join and drop rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medtune.infer.requests import Request


class Unjoinable(Exception):
    """The model's cache has layers this batcher cannot pad and concatenate."""


@dataclass
class Row:
    """A request inside the decoding loop: its ids so far (for the repetition penalty), its
    penalties, its sampling warpers and its seeded sampler.

    The repetition penalty and min_new_tokens are applied in place on the row's slice of the
    batch's logits, touching only the ids seen and the end-of-sequence ids: transformers'
    processors do the same arithmetic but copy the whole 262k-vocabulary row (a pad, a gather and
    a scatter) per row and step, ~12 % of a step of 8 Gemma rows. Greedy rows then take one
    batched argmax. The warpers (temperature, top-k, top-p) stay transformers' own, in
    `generate`'s order, for sampling rows."""

    request: Request
    ids: Any  # 1-D tensor, prompt + generated
    penalty: float | None
    min_new: int  # end-of-sequence is forbidden until this many tokens are generated
    warpers: Any  # transformers.LogitsProcessorList, sampling rows only
    sample: bool
    generator: Any  # torch.Generator seeded by the request, or None (the global RNG)

    @classmethod
    def make(cls, r: Request, batcher: Any) -> Row:
        import torch
        from transformers import (
            LogitsProcessorList,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        p, warpers = r.params, LogitsProcessorList()
        penalty = p.get("repetition_penalty")
        if penalty is not None and not (isinstance(penalty, (int, float)) and penalty > 0):
            raise ValueError(f"`penalty` has to be a strictly positive float, but is {penalty}")
        sample = bool(p.get("do_sample"))
        if sample:
            if p.get("temperature") not in (None, 1.0):
                warpers.append(TemperatureLogitsWarper(p["temperature"]))
            if p.get("top_k"):
                warpers.append(TopKLogitsWarper(p["top_k"]))
            if p.get("top_p") not in (None, 1.0):
                warpers.append(TopPLogitsWarper(p["top_p"]))
        generator = torch.Generator().manual_seed(r.seed) if r.seed is not None else None
        return cls(r, torch.tensor(r.ids, dtype=torch.long), None if penalty in (None, 1.0) else float(penalty),
                   int(p.get("min_new_tokens") or 0), warpers, sample, generator)

    def penalise(self, scores: Any, eos_ids: Any) -> None:
        """This row's penalties, in place on its [vocab] float scores."""
        import torch

        if self.penalty is not None:
            ids = self.ids[self.ids < scores.shape[-1]]
            seen = scores[ids]
            scores[ids] = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        if len(self.ids) - len(self.request.ids) < self.min_new:
            scores[eos_ids] = float("-inf")

    def draw(self, scores: Any) -> int:
        """A sampled token from this row's penalised [vocab] scores."""
        import torch

        warped = self.warpers(self.ids[None], scores[None]) if self.warpers else scores[None]
        return int(torch.multinomial(torch.softmax(warped, dim=-1), 1, generator=self.generator))

    def take(self, tok: int) -> None:
        import torch

        self.ids = torch.cat([self.ids, self.ids.new_tensor([tok])])


class Decoding:
    """The running batch: rows, their shared key/value cache (left-padded to one length), the 2-D
    attention mask over it, each row's next position id and last token."""

    def __init__(self, batcher: Any, rows: list[Row], cache: Any, mask: Any, positions: Any) -> None:
        self.batcher, self.rows, self.cache, self.mask, self.positions = batcher, rows, cache, mask, positions
        self.last = positions.new_zeros(len(rows))

    @classmethod
    def prefill(cls, batcher: Any, rows: list[Row]) -> Decoding:
        import torch
        from transformers import DynamicCache

        pad = batcher.tokenizer.pad_token_id
        pad = 0 if pad is None else pad
        width = max(len(row.request.ids) for row in rows)
        ids = torch.tensor([[pad] * (width - len(row.request.ids)) + row.request.ids for row in rows])
        mask = torch.tensor([[0] * (width - len(row.request.ids)) + [1] * len(row.request.ids) for row in rows])
        cache = DynamicCache(config=batcher.model.config)
        logits = _forward(batcher.model, ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), cache, prefill=True)
        if not cache.layers or any(type(layer) not in _joinable_layers() for layer in cache.layers):
            raise Unjoinable
        batch = cls(batcher, rows, cache, mask, mask.sum(-1))
        batch.accept(logits)
        return batch

    def accept(self, logits: Any) -> None:
        """Each row's next token (penalised in place, greedy rows by one batched argmax, sampling
        rows by their own warpers and generator), streamed to its request."""
        import torch

        scores = logits.float()
        eos = torch.tensor(sorted(e for e in self.batcher.eos_ids if e < scores.shape[-1]), dtype=torch.long)
        for i, row in enumerate(self.rows):
            row.penalise(scores[i], eos)
        greedy = scores.argmax(dim=-1).tolist() if not all(row.sample for row in self.rows) else []
        for i, row in enumerate(self.rows):
            tok = row.draw(scores[i]) if row.sample else greedy[i]
            row.take(tok)
            self.last[i] = tok
            self.batcher._accept(row.request, [tok])

    def step(self) -> None:
        import torch

        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        logits = _forward(self.batcher.model, self.last[:, None], self.mask, self.positions[:, None], self.cache)
        self.positions = self.positions + 1
        self.accept(logits)

    def without_done(self) -> Decoding | None:
        """Drop finished and cancelled rows, then the leading columns that are padding in every row left."""
        import torch

        for row in self.rows:
            if row.request.cancelled.is_set() and not row.request.done:
                self.batcher._finish(row.request, "cancelled")
        keep = [i for i, row in enumerate(self.rows) if not row.request.done]
        if not keep:
            return None
        if len(keep) < len(self.rows):
            idx = torch.tensor(keep)
            self.cache.batch_select_indices(idx)
            self.rows = [self.rows[i] for i in keep]
            self.mask, self.positions, self.last = self.mask[idx], self.positions[idx], self.last[idx]
            if (lead := int(self.mask.any(dim=0).int().argmax())) > 0:
                _trim_left(self.cache, lead)
                self.mask = self.mask[:, lead:]
        return self

    def merge(self, other: Decoding) -> Decoding:
        """Join `other`'s rows: both caches left-padded to one length, then concatenated row-wise."""
        import torch

        width = max(self.mask.shape[1], other.mask.shape[1])
        for batch in (self, other):
            if (extra := width - batch.mask.shape[1]) > 0:
                _pad_left(batch.cache, extra)
                batch.mask = torch.cat([batch.mask.new_zeros(len(batch.rows), extra), batch.mask], dim=1)
        for a, b in zip(self.cache.layers, other.cache.layers, strict=True):
            if a.is_initialized and b.is_initialized:
                a.keys, a.values = torch.cat([a.keys, b.keys]), torch.cat([a.values, b.values])
        self.rows += other.rows
        self.mask = torch.cat([self.mask, other.mask])
        self.positions, self.last = torch.cat([self.positions, other.positions]), torch.cat([self.last, other.last])
        return self


def _joinable_layers() -> tuple[type, ...]:
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    return DynamicLayer, DynamicSlidingWindowLayer


def _forward(model: Any, ids: Any, mask: Any, positions: Any, cache: Any, prefill: bool = False) -> Any:
    """The last position's logits, [rows, vocab] (the prefill computes no logits for the prompt)."""
    import torch

    kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "past_key_values": cache,
              "use_cache": True}
    with torch.no_grad():
        try:
            out = model(**kwargs, logits_to_keep=1) if prefill else model(**kwargs)
        except TypeError as e:
            if "logits_to_keep" not in str(e):
                raise
            out = model(**kwargs)
    return out.logits[:, -1]


def _pad_left(cache: Any, n: int) -> None:
    """`n` empty (masked) positions before every row's cache. A sliding-window layer keeps only its
    window: the new positions count in its length and fall out of the window when it is full."""
    import torch
    from transformers.cache_utils import DynamicSlidingWindowLayer

    for layer in cache.layers:
        if not layer.is_initialized or layer.keys.numel() == 0:
            continue
        shape = (*layer.keys.shape[:2], n, layer.keys.shape[3])
        keys = torch.cat([layer.keys.new_zeros(shape), layer.keys], dim=-2)
        values = torch.cat([layer.values.new_zeros((*shape[:3], layer.values.shape[3])), layer.values], dim=-2)
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length += n
            keys, values = keys[:, :, -layer.sliding_window + 1:], values[:, :, -layer.sliding_window + 1:]
        layer.keys, layer.values = keys, values


def _trim_left(cache: Any, n: int) -> None:
    """Remove the first `n` positions (padding in every row) from every layer."""
    from transformers.cache_utils import DynamicSlidingWindowLayer

    for layer in cache.layers:
        if not layer.is_initialized or layer.keys.numel() == 0:
            continue
        if isinstance(layer, DynamicSlidingWindowLayer):
            first_stored = layer.cumulative_length - layer.keys.shape[-2]  # older positions left the window
            cut = max(0, n - first_stored)
            layer.cumulative_length -= n
        else:
            cut = n
        layer.keys, layer.values = layer.keys[:, :, cut:], layer.values[:, :, cut:]
