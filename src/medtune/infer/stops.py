"""OpenAI's `stop`: cut a streamed answer at the first stop string, never showing part of one."""

from __future__ import annotations


class StopText:
    """Feed text deltas; get back what is safe to show. Text that could be the start of a stop
    string is held back until the next delta decides; `hit` turns true at the first stop string."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.buffer, self.hit = stops, "", False

    def feed(self, piece: str) -> str:
        if self.hit:
            return ""
        if not self.stops:
            return piece
        self.buffer += piece
        found = [i for s in self.stops if (i := self.buffer.find(s)) >= 0]
        if found:
            out, self.buffer, self.hit = self.buffer[:min(found)], "", True
            return out
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.buffer.endswith(s[:k])), default=0)
        cut = len(self.buffer) - hold
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.hit else self.buffer), ""
        return out
