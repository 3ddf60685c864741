"""Strict answer extraction for multiple-choice generation: a cascade that would rather say
"unparseable" than guess.

The official scorers of several Chinese medical benchmarks inflate accuracy (see
shared/research/evaluation.md): CMB falls back to every A–G character in the output, so "建议做B超"
answers B; HuatuoGPT-II fills in "A" when nothing parses. Here, in order:

1. an explicit answer phrase: 答案是B, 正确选项：(C), 故选D, ANSWER: E, \\boxed{A};
2. a leading letter: "B", "B.", "(B) 阴离子型", "ABD" (multi-answer);
3. the text of exactly one option (the whole output, or the only option named in it);
4. otherwise None: unparseable, scored wrong and counted.

A letter counts only when it stands alone: never next to another Latin letter or a digit (CT, ALT,
HBsAg, B12, ACE抑制剂) and never before a Chinese character other than a few answer words
(项, 选项, 为, 是, 正确), so B超 and A型血 are never answers.
"""

from __future__ import annotations

import re
import unicodedata

# What may follow a standalone answer letter (anything else, e.g. 超 or T, makes it part of a word).
_AFTER = r"(?=$|[\s。，,.、；;:：!！?？)）\]】'\"”’]|项|选项|为|是|正确|对)"
_BEFORE = r"(?<![A-Za-z0-9])"
_GROUP = r"([A-G](?:\s*[、,，和及与/]?\s*[A-G]){0,6})"
_EXPLICIT = [
    re.compile(r"(?:正确|最佳|标准|参考)?(?:答案|选项|答)\s*(?:应该|应当|应)?\s*(?:是|为|选|选择)?\s*[:：]?\s*"
               r"[（(\[【]?\s*" + _BEFORE + _GROUP + r"\s*[)）\]】]?" + _AFTER),
    re.compile(r"(?:故|所以|因此|应|我)?(?:选择|选)\s*[:：]?\s*[（(\[【]?\s*" + _BEFORE + _GROUP + r"\s*[)）\]】]?" + _AFTER),
    re.compile(r"answer\s*(?:is)?\s*[:：]?\s*[（(\[]?\s*" + _BEFORE + _GROUP + r"\s*[)）\]]?" + _AFTER, re.I),
    re.compile(r"\\boxed\{\s*" + _GROUP + r"\s*\}"),
]
_LEADING = re.compile(r"^\s*[（(\[【]?\s*" + _GROUP + r"\s*[)）\]】]?" + _AFTER)
_PUNCT = re.compile(r"[\s。，,.、；;:：!！?？\"'“”‘’()（）\[\]【】]")


def normalise(text: str) -> str:
    """Full-width letters and punctuation to ASCII (Ａ → A), so "答案：Ｂ" parses like "答案:B"."""
    return unicodedata.normalize("NFKC", text)


def extract(output: str, options: dict[str, str]) -> str | None:
    """The letters `output` chooses, sorted and joined ("B", "ACD"), or None if it chooses nothing."""
    text = normalise(output).strip()
    valid = set(options)
    for pattern in _EXPLICIT:
        m = pattern.search(text)
        if m:
            return _letters(m.group(1).upper(), valid)
    m = _LEADING.match(text)
    if m:
        return _letters(m.group(1), valid)
    return _by_option_text(text, options)


def _letters(group: str, valid: set[str]) -> str | None:
    letters = set(re.findall(r"[A-G]", group))
    if not letters or not letters <= valid:
        return None  # "答案是F" on a five-option question: a letter, but not an answer
    return "".join(sorted(letters))


def _by_option_text(text: str, options: dict[str, str]) -> str | None:
    bare = _PUNCT.sub("", text)
    texts = {k: _PUNCT.sub("", normalise(v)) for k, v in options.items()}
    exact = [k for k, v in texts.items() if v and v == bare]
    if len(exact) == 1:
        return exact[0]
    named = [k for k, v in texts.items() if len(v) >= 2 and v in bare]
    # An option named only as part of a longer option also named ("肺炎" inside "大叶性肺炎") is not a choice.
    named = [k for k in named if not any(k != o and texts[k] in texts[o] for o in named)]
    return named[0] if len(named) == 1 else None
