"""A reasoning model's answer split into its thinking and its reply, as OpenAI-compatible servers return
them (`reasoning_content` beside `content`, vLLM's and DeepSeek's convention), streamed or whole.

The template's `thinking` strings say where the block opens and closes. When the generation prompt
itself opens the block (DeepSeek-R1 writes `<think>\\n` after `<｜Assistant｜>`), generation starts
inside it; otherwise (Qwen3) it starts in the reply and the model may open the block itself. A block
never closed (the answer was cut at max_tokens) is all reasoning.
"""

from __future__ import annotations


class ThinkSplit:
    """Feed text deltas; get back (field, text) pairs, field "reasoning_content" or "content". Text
    that could be the start of a tag is held back until the next delta decides."""

    def __init__(self, open_tag: str, close_tag: str, inside: bool) -> None:
        self.open, self.close = open_tag.strip(), close_tag.strip()
        self.state = "thinking" if inside else "start"  # start: the reply may still open a block
        self.buffer = ""
        self.lead = True  # newlines that open a block or a reply are layout, not text

    def feed(self, piece: str) -> list[tuple[str, str]]:
        self.buffer += piece
        out: list[tuple[str, str]] = []
        while True:
            if self.lead:
                self.buffer = self.buffer.lstrip("\n") if self.state != "start" else self.buffer
                if not self.buffer:
                    return out
                self.lead = self.state == "start"
            if self.state == "start":
                head = self.buffer.lstrip()
                if head.startswith(self.open):
                    self.buffer, self.state, self.lead = head[len(self.open):], "thinking", True
                    continue
                if self.open.startswith(head):  # too short to decide
                    return out
                self.state, self.lead = "reply", False
            if self.state == "thinking":
                at = self.buffer.find(self.close)
                if at >= 0:
                    if text := self.buffer[:at].rstrip("\n"):
                        out.append(("reasoning_content", text))
                    self.buffer, self.state, self.lead = self.buffer[at + len(self.close):], "reply", True
                    continue
                partial = max((k for k in range(1, len(self.close)) if self.buffer.endswith(self.close[:k])), default=0)
                body = self.buffer[: len(self.buffer) - partial]
                cut = len(body.rstrip("\n"))  # newlines before the close tag are its layout: held
                if text := self.buffer[:cut]:
                    out.append(("reasoning_content", text))
                self.buffer = self.buffer[cut:]
                return out
            if self.buffer:
                out.append(("content", self.buffer))
            self.buffer = ""
            return out

    def whole(self, text: str) -> tuple[str, str]:
        """(reasoning, reply) of a whole answer fed at once."""
        parts = self.feed(text) + self.flush()
        return tuple("".join(t for f, t in parts if f == field).strip()  # type: ignore[return-value]
                     for field in ("reasoning_content", "content"))

    def flush(self) -> list[tuple[str, str]]:
        text, self.buffer = self.buffer, ""
        if self.state == "thinking":
            text = text.rstrip("\n")
        return [("reasoning_content" if self.state == "thinking" else "content", text)] if text else []


def split(text: str, open_tag: str, close_tag: str, inside: bool) -> tuple[str, str]:
    """(reasoning, reply) of a whole answer."""
    return ThinkSplit(open_tag, close_tag, inside).whole(text)
