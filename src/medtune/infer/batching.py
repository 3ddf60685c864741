"""Continuous batching: a new request joins the running batch between two decoding steps.

One worker thread owns the model and runs one decoding loop over every active row. Between two
steps it admits what arrived (up to `max_batch_size` rows): the newcomers' prompts are prefilled
together, left-padded, their first token is sampled and streamed at once, and their key/value
cache is left-padded to the running batch's length and concatenated to it. Finished or cancelled
rows leave the batch at once, and the columns that only padding still holds are cut. So a request
waits for at most one prefill, never for a whole batch to finish (the batcher this replaced ran one
`generate` per batch: at concurrency 8 a request waited 0.84 s p50 for its first token, 5× the
0.15 s of concurrency 1).

Every row has its own penalties and warpers (repetition penalty and min_new_tokens with
transformers' arithmetic, applied in place; transformers' temperature, top-k and top-p warpers: the
ones `generate` applies, in its order) and its own seeded generator,
so rows with different settings share a batch, and a seeded request gets the same answer whoever
it shares the batch with. transformers' own continuous-batching manager has no repetition penalty
or min_new_tokens, which medical base models need.

Caches of other layouts (static, offloaded, state-space layers) cannot be padded this way: such
models, and beam search (it cannot stream), run one `generate` per group as before, when the
running batch is empty.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Any

from medtune.infer.decoding import Decoding, Row, Unjoinable
from medtune.infer.requests import (  # Request: the engines and tests import it from here
    SAMPLING_KEYS,
    Request,
)

__all__ = ["Batcher", "Request", "SAMPLING_KEYS"]

log = logging.getLogger(__name__)

class Batcher:
    def __init__(self, model: Any, tokenizer: Any, eos_ids: list[int], max_batch_size: int = 8,
                 max_wait_ms: float = 10.0) -> None:
        self.model, self.tokenizer, self.eos_ids = model, tokenizer, set(eos_ids)
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.pending: queue.Queue[Request] = queue.Queue()
        self.active = 0  # requests inside the running batch (for /health and tests)
        self.largest_batch = 0
        self.joined = 0  # requests that joined a batch already decoding (continuous batching at work)
        self.finished: deque[tuple[str, int]] = deque(maxlen=64)  # (finish_reason, tokens) of recent requests
        self.closing, self.running = False, []  # close(): cancel the running rows, then stop
        self.joinable: bool | None = None  # can this model's cache be padded and joined? (known at first use)
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
        batch: Decoding | None = None
        waiting: deque[Request] = deque()  # beam search (and unjoinable models): run when nothing decodes
        stop = False
        while not (stop and batch is None and not waiting):
            if batch is None and not waiting and not stop:
                arrived, stop = self._gather(block=True)
            else:
                room = self.max_batch_size - (len(batch.rows) if batch else 0)
                arrived, closed = self._gather(block=False, limit=max(room, 0))
                stop = stop or closed
            if stop:  # close(): nothing new starts; what is queued is cancelled
                for r in [*arrived, *waiting]:
                    self._finish(r, "cancelled")
                arrived, waiting = [], deque()
            joining = []
            for r in arrived:
                if r.cancelled.is_set():
                    self._finish(r, "cancelled")
                elif r.params.get("num_beams", 1) > 1 or self.joinable is False:
                    waiting.append(r)
                else:
                    joining.append(r)
            if joining:
                batch = self._join(batch, joining, waiting)
            if batch is not None:
                batch = self._step(batch)
            elif waiting:
                self._run_waiting(waiting)

    def _gather(self, block: bool, limit: int | None = None) -> tuple[list[Request], bool]:
        """What arrived: blocking (idle) = the first request plus what comes within max_wait; else only
        what is already queued, up to `limit`. Returns (requests, whether close() was called)."""
        out: list[Request] = []
        limit = self.max_batch_size if limit is None else limit
        deadline = None
        while len(out) < limit:
            try:
                if not block:
                    nxt = self.pending.get_nowait()
                elif deadline is None:
                    nxt = self.pending.get()
                elif (left := deadline - time.monotonic()) > 0:
                    nxt = self.pending.get(timeout=left)
                else:
                    break
            except queue.Empty:
                break
            if nxt is None:
                return out, True
            out.append(nxt)
            deadline = deadline or time.monotonic() + self.max_wait
        return out, False

    def _run_waiting(self, waiting: deque[Request]) -> None:
        """Beam search (and every request of a model whose cache cannot be joined): one `generate` per group
        of equal settings, as the batcher always did."""
        groups: dict[tuple, list[Request]] = {}
        while waiting:
            r = waiting.popleft()
            key = tuple(r.params.get(k) for k in SAMPLING_KEYS)
            groups.setdefault(key if r.params.get("num_beams", 1) == 1 else (id(r),), []).append(r)
        for group in groups.values():
            for part in (group[i:i + self.max_batch_size] for i in range(0, len(group), self.max_batch_size)):
                self.running = part
                self.active += len(part)
                self.largest_batch = max(self.largest_batch, len(part))
                try:
                    self._run_isolated(part)
                finally:
                    self.active -= len(part)
                    self.running = []

    def _join(self, batch: Decoding | None, joining: list[Request], waiting: deque[Request]) -> Decoding | None:
        """Prefill the newcomers (together; one by one if that fails, so a bad row fails alone), stream
        their first tokens, and join them to the running batch."""
        rows = []
        for r in joining:
            try:
                rows.append(Row.make(r, self))
            except Exception as e:  # a setting torch refuses (a seed out of range): this request only
                self._finish(r, f"error: {e}")
        if not rows:
            return batch
        try:
            new = Decoding.prefill(self, rows)
        except Unjoinable:
            self.joinable = False
            log.info("this model's cache cannot be joined between steps: one generate per batch instead")
            waiting.extend(row.request for row in rows)
            return batch
        except Exception as e:
            if len(rows) == 1:
                log.warning("generation failed: %s", e)
                self._finish(rows[0].request, f"error: {e}")
                return batch
            for row in rows:
                batch = self._join(batch, [row.request], waiting)
            return batch
        self.joinable = True
        if batch is not None:
            self.joined += len(new.rows)
        batch = new if batch is None else batch.merge(new)
        return self._track(batch.without_done())

    def _step(self, batch: Decoding) -> Decoding | None:
        try:
            batch.step()
        except Exception as e:  # a failing step must not kill the server: its rows get the error
            log.warning("a decoding step of %d rows failed: %s", len(batch.rows), e)
            for row in batch.rows:
                if not row.request.done:
                    self._finish(row.request, f"error: {e}")
            return self._track(None)
        return self._track(batch.without_done())

    def _track(self, batch: Decoding | None) -> Decoding | None:
        self.running = [row.request for row in batch.rows] if batch else []
        self.active = len(self.running)
        self.largest_batch = max(self.largest_batch, self.active)
        return batch

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
