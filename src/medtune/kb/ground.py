"""Retrieved chunks → the prompt, and the citations that go back to the user.

One `Grounder` serves the engine (so chat, serve and webui ground alike), the eval harness (a model
with `kb:`) and the kb_qa training data: all render the last user turn through the same Jinja
template (`kb.template`), so training and serving see one prompt shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from medtune.errors import ConfigError
from medtune.kb.retrieve import Hit, KnowledgeBase, clip_query
from medtune.schema import KbConfig

TEMPLATE_DIR = Path(__file__).parent / "templates"
NOT_FOUND = "参考资料中没有相关信息。"  # what a grounded model says when the context lacks the answer


@dataclass
class Grounded:
    messages: list[dict[str, str]]
    citations: list[dict[str, Any]] = field(default_factory=list)


class Grounder:
    def __init__(self, kb: KbConfig, index: str | None = None) -> None:
        self.cfg = kb
        self.kb = KnowledgeBase.open(index or kb.index, kb.embedding_model)
        self.template = template(kb.template)

    def retrieve(self, query: str, k: int | None = None) -> list[Hit]:
        return self.kb.search(clip_query(query, self.cfg.max_query_chars), k or self.cfg.top_k, self.cfg.retriever)

    def ground(self, messages: list[dict[str, str]],
               fits: Callable[[list[dict[str, str]]], bool] | None = None) -> Grounded:
        """The messages with the last user turn rendered with the passages retrieved for it. Passages
        past kb.max_context_chars, or that would not leave the prompt within `fits`, are left out (the
        lowest-ranked first); the citations are those that went in."""
        if not messages or messages[-1]["role"] != "user":
            return Grounded(messages)
        question = messages[-1]["content"]
        hits = self.passages(question)
        while True:
            out = [*messages[:-1], {"role": "user", "content": self.render(question, hits)}]
            if not hits or fits is None or fits(out):
                return Grounded(out, [{"n": n, **h.citation()} for n, h in enumerate(hits, 1)])
            hits.pop()


    def passages(self, question: str) -> list[Hit]:
        return self.select(self.retrieve(question))

    def select(self, hits: list[Hit]) -> list[Hit]:
        """The leading hits within kb.max_context_chars (always the first)."""
        out, total = [], 0
        for h in hits:
            total += len(h.chunk["text"])
            if out and total > self.cfg.max_context_chars:
                break
            out.append(h)
        return out

    def render(self, question: str, hits: list[Hit]) -> str:
        return render(self.template, question, hits)


def render(tmpl: Any, question: str, hits: list[Hit]) -> str:
    passages = [{"n": n, "title": h.chunk["title"], "text": h.chunk["text"]} for n, h in enumerate(hits, 1)]
    return tmpl.render(question=question, passages=passages).strip()


@lru_cache(maxsize=8)
def template(spec: str) -> Any:
    """kb.template: a file in medtune/kb/templates, a path, or inline Jinja."""
    from jinja2 import StrictUndefined, TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if "{{" in spec:
        source = spec
    elif (TEMPLATE_DIR / spec).is_file() or Path(spec).is_file():
        source = ((TEMPLATE_DIR / spec) if (TEMPLATE_DIR / spec).is_file() else Path(spec)).read_text(encoding="utf-8")
    else:
        raise ConfigError(f"kb.template {spec!r} is not inline Jinja, a built-in template "
                          f"({', '.join(p.name for p in TEMPLATE_DIR.glob('*.jinja'))}) or a file.")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined)
    try:
        return env.from_string(source)
    except TemplateSyntaxError as e:
        raise ConfigError(f"kb.template {spec!r}: line {e.lineno}: {e.message}.") from None


def sources_text(citations: list[dict[str, Any]]) -> str:
    """The citations under an answer in the terminal and the web page."""
    if not citations:
        return ""
    lines = []
    for c in citations:
        at = f"，第 {c['page']} 页" if c.get("page") else f"，第 {c['line']} 行" if c.get("line") else ""
        lines.append(f"[{c['n']}] {c['title']}（{c['source']}{at}）")
    return "参考资料 / sources:\n" + "\n".join(lines)
