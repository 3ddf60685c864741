"""Chat templates as Jinja files, rendered exactly as Hugging Face renders `chat_template`.

Each `templates/<name>.jinja` starts with a YAML front-matter comment:

    {#-
    description: ...
    end_of_turn: "<|im_end|>"     # or eos_token: the string that ends an assistant turn
    -#}

The same file text is embedded as the tokenizer's `chat_template` when a run saves its outputs,
and the Jinja environment below mirrors transformers' (`trim_blocks`, `lstrip_blocks`, sandboxed,
`raise_exception`), so serving renders token-for-token what training saw.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from jinja2.exceptions import TemplateError as JinjaTemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from medtune.errors import ConfigError, MedtuneError

TEMPLATE_DIR = Path(__file__).parent / "templates"


class TemplateError(MedtuneError):
    """A template cannot render these messages, or breaks the prefix property masking relies on."""


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    source: str  # the whole .jinja file, front-matter included (it renders to nothing)
    description: str
    end_of_turn: str  # a literal string, or "eos_token"
    # Reasoning templates: the strings that open and close an assistant turn's thinking block.
    thinking: tuple[str, str] | None = None

    def stop_string(self, special_tokens: dict[str, str]) -> str:
        """The literal string that ends an assistant turn for this tokenizer."""
        return special_tokens.get(self.end_of_turn, self.end_of_turn) if self.end_of_turn.endswith("_token") \
            else self.end_of_turn

    def render(self, messages: list[dict[str, str]], special_tokens: dict[str, str],
               add_generation_prompt: bool = False, **variables: Any) -> str:
        """`variables`: the template's own switches, such as enable_thinking (transformers passes them the same way)."""
        try:
            return _compile(self.source).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                **special_tokens, **variables)
        except JinjaTemplateError as e:
            raise TemplateError(f"Template {self.name!r} cannot render these messages: {e}") from None


def available() -> dict[str, str]:
    """Template names → descriptions."""
    return {p.stem: load_template(p.stem).description for p in sorted(TEMPLATE_DIR.glob("*.jinja"))}


def load_template(name: str) -> ChatTemplate:
    """Load a template by name, or from a path to a .jinja file of the same shape."""
    path = Path(name) if name.endswith(".jinja") else TEMPLATE_DIR / f"{name}.jinja"
    if not path.is_file():
        names = [p.stem for p in TEMPLATE_DIR.glob("*.jinja")]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"Unknown chat template {name!r}.{hint} Known: {', '.join(sorted(names))}, "
                          "or a path to a .jinja file.")
    source = path.read_text(encoding="utf-8")
    meta: dict[str, Any] = {}
    if source.startswith("{#-"):
        try:
            meta = yaml.safe_load(source[3: source.index("-#}")]) or {}
        except (yaml.YAMLError, ValueError) as e:
            raise ConfigError(f"{path}: the front-matter comment is not valid YAML ({e}).") from None
    if "end_of_turn" not in meta:
        raise ConfigError(f"{path}: the front-matter comment must set end_of_turn (a string or eos_token).")
    thinking = meta.get("thinking")
    if thinking is not None and not (isinstance(thinking, list) and len(thinking) == 2 and all(map(str, thinking))):
        raise ConfigError(f"{path}: `thinking` must be [open, close], the strings around an assistant turn's reasoning.")
    return ChatTemplate(path.stem, source, meta.get("description", ""), meta["end_of_turn"],
                        tuple(thinking) if thinking else None)


@lru_cache(maxsize=32)
def _compile(source: str):
    def raise_exception(message: str) -> None:
        raise JinjaTemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)
