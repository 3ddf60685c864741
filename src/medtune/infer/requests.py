"""What a generation request is, shared by the batcher, its decoding loop and the engines."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
