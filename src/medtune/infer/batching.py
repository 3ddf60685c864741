"""Dynamic batching on top of `model.generate`: concurrent requests share forward passes.

One worker thread owns the model. It takes the requests that arrived within `max_wait_ms` (up to
`max_batch_size`), groups them by sampling settings, and runs one left-padded `generate` per group.
A per-row streamer hands each new token to its request, and a per-row stopping criterion ends rows
that finished (end-of-turn, their own `max_new_tokens`) or were cancelled (client gone), so the batch
only runs as long as someone is still listening. Standing on `generate` keeps every logits processor
(repetition penalty, min_new_tokens, top-k/p) and every architecture's cache handling; requests that
arrive during a batch wait for the next one. Beam search runs alone (it cannot stream).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

SAMPLING_KEYS = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "num_beams", "min_new_tokens")


@dataclass
class Request:
    """One generation: prompt ids in, text deltas out through `emit(delta | None)` (None = finished)."""

    ids: list[int]
    params: dict[str, Any]
    max_new_tokens: int
    emit: Callable[[str | None], None]
    seed: int | None = None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    on_cancel: Callable[[], None] | None = None  # an engine's hook to stop work at once (vLLM abort)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        if not self.cancelled.is_set():
            self.cancelled.set()
            if self.on_cancel and not self.done:
                self.on_cancel()


class Batcher:
    def __init__(self, model: Any, tokenizer: Any, eos_ids: list[int], max_batch_size: int = 8,
                 max_wait_ms: float = 10.0) -> None:
        self.model, self.tokenizer, self.eos_ids = model, tokenizer, set(eos_ids)
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.pending: queue.Queue[Request] = queue.Queue()
        self.active = 0  # requests inside a running batch (for /health and tests)
        self.largest_batch = 0
        self.finished: deque[tuple[str, int]] = deque(maxlen=64)  # (finish_reason, tokens) of recent requests
        self.closing, self.running = False, []  # close(): cancel the running group, then stop
        self.worker = threading.Thread(target=self._loop, name="medtune-batcher", daemon=True)
        self.worker.start()

    def submit(self, request: Request) -> Request:
        self.pending.put(request)
        return request

    def close(self, timeout: float = 30.0) -> None:
        """Cancel what is queued or running and stop the worker (its batch ends at the next step)."""
        self.closing = True
        for r in list(self.running):
            r.cancel()
        self.pending.put(None)
        if self.worker.is_alive() and threading.current_thread() is not self.worker:
            self.worker.join(timeout)

    def _loop(self) -> None:
        while True:
            first = self.pending.get()
            if first is None:  # close()
                while not self.pending.empty():
                    if (r := self.pending.get_nowait()) is not None:
                        self._finish(r, "cancelled")
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                try:
                    nxt = self.pending.get(timeout=left)
                except queue.Empty:
                    break
                if nxt is None:  # close() while gathering: finish this batch, then stop
                    self.pending.put(None)
                    break
                batch.append(nxt)
            groups: dict[tuple, list[Request]] = {}
            for r in batch:
                if r.cancelled.is_set():
                    self._finish(r, "cancelled")
                    continue
                key = tuple(r.params.get(k) for k in SAMPLING_KEYS)
                groups.setdefault(key if r.params.get("num_beams", 1) == 1 else (id(r),), []).append(r)
            for group in groups.values():
                self.running = group
                self.active += len(group)
                self.largest_batch = max(self.largest_batch, len(group))
                try:
                    self._run_isolated(group)
                finally:
                    self.active -= len(group)

    def _run_isolated(self, group: list[Request]) -> None:
        """Run a group; if it fails, rerun its rows one by one, so one bad row (a setting generate()
        refuses, a prompt that breaks the model) fails only its own request, with an error, never
        an empty success. Rows that already streamed text cannot be rerun: they get the error."""
        try:
            self._run(group)
            return
        except Exception as e:  # a failing batch must not kill the server
            if len(group) == 1:
                log.warning("generation failed: %s", e)
                self._finish(group[0], f"error: {e}")
                return
            log.warning("a batch of %d failed (%s); rerunning its rows one by one", len(group), e)
            retry = []
            for r in group:
                if r.done:
                    continue
                if r.tokens:
                    self._finish(r, f"error: {e}")
                else:
                    retry.append(r)
        for r in retry:
            self._run_isolated([r])

    def _run(self, group: list[Request]) -> None:
        import torch

        width = max(len(r.ids) for r in group)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r.ids)) + r.ids for r in group])  # left padding
        mask = torch.tensor([[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in group])
        params = dict(group[0].params)
        if not params.get("do_sample"):
            params.update(temperature=None, top_p=None, top_k=None)
        beams = params.get("num_beams", 1) > 1
        if group[0].seed is not None:
            torch.manual_seed(group[0].seed)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max(r.max_new_tokens for r in group),
                eos_token_id=sorted(self.eos_ids), pad_token_id=pad,
                streamer=None if beams else _RowStreamer(self, group),
                stopping_criteria=[] if beams else [_RowStop(group)], **params)
        if beams:  # no streaming: emit the whole answer
            self._accept(group[0], out[0, width:].tolist())
        for r in group:
            if not r.done:
                self._finish(r, "cancelled" if r.cancelled.is_set() else "length")

    def _accept(self, r: Request, new_tokens: list[int]) -> None:
        for tok in new_tokens:
            if r.done:
                return
            if tok in self.eos_ids:
                self._finish(r, "stop")
                return
            r.tokens.append(tok)
            text = self.tokenizer.decode(r.tokens, skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                delta, r.text = text[len(r.text):], text
                if delta:
                    r.emit(delta)
            if len(r.tokens) >= r.max_new_tokens:
                self._finish(r, "length")

    def _finish(self, r: Request, reason: str) -> None:
        r.finish_reason = reason
        self.finished.append((reason, len(r.tokens)))
        r.emit(None)


class _RowStreamer:
    """generate() calls put() with the prompt first, then with each step's [batch] new tokens."""

    def __init__(self, batcher: Batcher, group: list[Request]) -> None:
        self.batcher, self.group, self.prompt_seen = batcher, group, False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for r, tok in zip(self.group, value.view(-1).tolist(), strict=True):
            if not r.done and not r.cancelled.is_set():
                self.batcher._accept(r, [tok])

    def end(self) -> None:
        pass


class _RowStop:
    """Per-row stopping: a row is done when its request finished or was cancelled."""

    def __init__(self, group: list[Request]) -> None:
        self.group = group

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.tensor([r.done or r.cancelled.is_set() for r in self.group], device=input_ids.device)
