"""Refusal detection for safety tasks: configurable regular expressions (refusal.yaml)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from medtune.config import load_yaml
from medtune.errors import ConfigError

DEFAULT_RULES = Path(__file__).parent / "refusal.yaml"


@dataclass(frozen=True)
class RefusalRules:
    patterns: tuple[re.Pattern, ...]
    window: int
    source: str

    @classmethod
    def load(cls, path: str | Path | None = None) -> RefusalRules:
        p = Path(path) if path else DEFAULT_RULES
        if not p.is_file():
            raise ConfigError(f"eval.refusal_rules {str(p)!r} does not exist.")
        raw = load_yaml(p.read_text(encoding="utf-8")) or {}
        try:
            patterns = tuple(re.compile(x) for x in raw["refuse"])
        except KeyError:
            raise ConfigError(f"{p}: needs a `refuse:` list of regular expressions.") from None
        except re.error as e:
            raise ConfigError(f"{p}: invalid regular expression {e.pattern!r}: {e}.") from None
        return cls(patterns, int(raw.get("window", 80)), str(p))

    def refused(self, answer: str) -> bool:
        head = answer.strip()[: self.window]
        return any(p.search(head) for p in self.patterns)
