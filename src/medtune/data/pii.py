"""PII/PHI detection and redaction for Chinese medical text.

Types: NAME, ADDRESS, ID_CARD (18-digit with checksum, grouped or full-width, and the old 15-digit
number), PHONE (mobile with +86 / 0086 / (+86), spaced or hyphenated; landlines with area codes),
EMAIL, RECORD_NO (the value after 病历号 / 住院号 / 登记号 / ID号 / …), BANK_CARD (16–19 digits, grouped
or not, Luhn verified) and DOB (the date after 出生日期 / 生于 / …, in digits, compact or Chinese numerals).
Full-width digits are read as digits. Names are found where clinical text puts them: after labels and
roles (姓名：, 主治医师：, 收款人, 医师签名：), after patient, kinship and self-introduction words
(患者, 我母亲叫, 我是), before titles (王医生 → 王, 李大夫, 张先生) and before a verb at the start of a
clause (张伟说); a candidate must start with a surname (the common single ones and the compound ones:
欧阳, 诸葛, …) and end where the text's segmentation (jieba) ends a word. A candidate that jieba's
dictionary lists as an ordinary word (叶酸, 曾经, 黄芪) is not a name unless a label introduces it.
Addresses run from their first administrative level (province, city, district or county) past the house
number to the estate, building, unit and room.
Redaction replaces each value with a placeholder that is consistent within one document
(`<NAME_1>` everywhere 张伟 appears) and counts replacements per type for the audit.
Measured on generated records whose templates were written before these rules (benchmarks/pii_generator.py;
each split scored blind once, then tuned on: benchmarks/README.md). On unseen wordings the name rules find
about three names in four; a token-classification `ModelDetector` can be merged behind them.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

_RULES = yaml.safe_load((Path(__file__).parent / "pii_rules.yaml").read_text(encoding="utf-8"))
_SURNAMES = set(_RULES["surnames"]) | set(_RULES["more_surnames"])
_COMMON_SURNAMES = set(_RULES["surnames"])
_COMPOUND = set(_RULES["compound_surnames"])
_STOP_AFTER_NAME = set(_RULES["stop_after_name"])
_FUNCTION_SURNAMES = set(_RULES["function_surnames"])
_NOT_NAMES = set(_RULES["not_names"])
_PROVINCES = "|".join(sorted(_RULES["provinces"], key=len, reverse=True))
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_DIGITS = str.maketrans("０１２３４５６７８９Ｘｘ", "0123456789Xx")  # full-width → ASCII, same length


def _alternation(words: list[str]) -> str:
    return "|".join(map(re.escape, sorted(words, key=len, reverse=True)))


_SEP = r"[ \t　]*[:：]?[ \t　]*"
_D = r"(?<![0-9A-Za-z])"  # no digit or letter before
_E = r"(?![0-9A-Za-z])"  # nor after
_CN_DATE = r"[〇零一二三四五六七八九]{4}年[一二三四五六七八九十]{1,3}月(?:[一二三四五六七八九十]{1,3}日)?"
_DATE = (rf"(?:\d{{4}}年\d{{1,2}}月(?:\d{{1,2}}日)?|\d{{4}}[-./]\d{{1,2}}[-./]\d{{1,2}}{_E}|"
         rf"(?:18|19|20)\d{{2}}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]){_E}|{_CN_DATE})")
PATTERNS: dict[str, re.Pattern[str]] = {
    "ID_CARD": re.compile(rf"{_D}(?:[1-8]\d{{5}} ?(?:18|19|20)\d{{2}}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]) ?\d{{3}}[\dXx]"
                          rf"|[1-8]\d{{7}}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{{3}}){_E}"),
    "BANK_CARD": re.compile(rf"{_D}(?<!\d[ -])(?:\d{{4}}[ -]?){{3}}\d{{4}}(?:[ -]?\d{{1,3}})?{_E}(?![ -]\d)"),
    "EMAIL": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    "PHONE": re.compile(rf"(?<![\d+])(?:(?:\+86[ -]?|0086[ -]?|\(\+86\) ?|（\+86）|86-)?1[3-9]\d(?:[ -]?\d{{4}}){{2}}"
                        rf"|(?:[（(]0\d{{2,3}}[）)] ?|{_D}(?<!\d[ -])0\d{{2,3}}[- ])(?:\d{{3,4}}[ -]?\d{{4}}|\d{{4}}[ -]\d{{3}})){_E}(?![ -]\d)"),
    "RECORD_NO": re.compile(rf"(?:{_alternation(_RULES['record_labels'])}){_SEP}([A-Za-z]{{0,4}}\d[0-9A-Za-z-]{{3,}})"),
    "DOB": re.compile(rf"(?:{_alternation(_RULES['dob_labels'])}){_SEP}(?:是|为)?[ 　]*({_DATE})"
                      rf"|[（(]({_DATE})生[）)]"),
    "ADDRESS": re.compile(r"(?:[\u4e00-\u9fa5]{2,8}?(?:省|自治区|特别行政区|市|区|县|旗|自治州|盟))+"
                          r"(?:[\u4e00-\u9fa5]{1,6}?(?:乡|镇|街道))?"
                          r"(?:[\u4e00-\u9fa5A-Za-z0-9]{1,14}?(?:路|街|大街|大道|道|弄|巷|胡同)\d+(?:号|弄)"
                          r"(?:[\u4e00-\u9fa5]{0,8}?\d+(?:号楼|栋|幢|座|单元|室|层|楼|号|户))*"
                          r"|[\u4e00-\u9fa5]{1,6}?村(?:\d+组)?(?:\d+号)?)"),
}
_ANY_DIGIT = re.compile(r"\d")
_ADDRESS_GATE = re.compile(r"[省市区县旗州盟]")
# When two detections overlap, the more specific type wins.
PRIORITY = ["EMAIL", "ID_CARD", "BANK_CARD", "RECORD_NO", "DOB", "PHONE", "ADDRESS", "NAME"]
_ADDRESS_INTRO = re.compile(rf"(?:{_alternation(_RULES['address_intros'])})")
_TRIGGER = re.compile(rf"(?:{_alternation(_RULES['name_triggers'])})(?:{_SEP})(?:(?:{_alternation(_RULES['name_links'])})(?=\S))?")
_TITLE = re.compile(rf"(?={_alternation(_RULES['name_titles'])})")
_VERB_AFTER = tuple(sorted(_RULES["name_verbs"], key=len, reverse=True))
_TIME_WORDS = tuple(sorted(_RULES["name_time_words"], key=len, reverse=True))
_TITLES = tuple(sorted(_RULES["name_titles"], key=len, reverse=True))
_TITLE_LABEL = re.compile(rf"(?:{_alternation(_RULES['name_titles'])})长?[:：]")  # 护士：, 护士长：
# What may follow a name opening a clause: sex / age (王芳，女，45岁 / 孙宇　男), a role in brackets
# (刘立（主治医师）), a record label after a space (钟嘉　住院号：…).
_DEMOGRAPHIC = re.compile(r"[，,、 　]+(?:男|女|性别|\d{1,3}岁)|[（(](?:男|女|\d{1,3}岁)|"
                          r"[（(](?:主治|主任|副主任|住院|责任)?(?:医师|医生|护士|药师)|"
                          rf"[ 　]+(?:{_alternation(_RULES['record_labels'])})")
# A role label of any wording, ending in a person word and a colon (its name follows).
_ROLE_LABEL = re.compile(r"[\u4e00-\u9fa5]{0,6}(?:人|者|员|师|医生|护士|家属|签字|签名)[ \t　]*[:：][ \t　]*")
# Any label's colon (接诊：, 复核：, 报销回执：): a name may follow, if it ends where the value ends.
_COLON = re.compile(r"[:：][ \t　]*")
# A role noun ending in 人 right before a name, without a colon (代理人张然英，). Not 者: 或者 is a conjunction.
_ROLE_NOUN = re.compile(r"[^个他别有无每众成为某常\W\d]人|对象")  # 随访对象刘宏福
_CLAUSE_START = re.compile(rf"(?:^|(?<=[\n：:，。；　 】]))(?=[{''.join(sorted(_SURNAMES))}]|{_alternation(sorted(_COMPOUND))})",
                           re.M)
_LEFT_OK = set("由请嘱给向被让找和与及同经将")  # a preposition before a name and its title (由程英勇护士分诊)
_BOUNDARY = set("，。、；：！？（）()【】[]《》“”\"',.;:!?/ \t\n　—-")
_NOT_GIVEN = set("的是在了和与说诉男女岁院科床号医生我你他她们这那就都也有无不请于")


@dataclass(frozen=True)
class Span:
    type: str
    start: int
    end: int
    value: str


def detect(text: str, model: ModelDetector | None = None) -> list[Span]:
    """Non-overlapping PII spans in `text`, in order. With a `model`, its entities are added where no rule
    found anything (the rules win an overlap: their spans are exact where they fire)."""
    digits = text.translate(_DIGITS)  # full-width digits matched as digits; offsets unchanged
    found: list[Span] = []

    def add(kind: str, start: int, end: int) -> None:
        if start < end and not any(s.start < end and start < s.end for s in found):
            found.append(Span(kind, start, end, text[start:end]))

    has_digit = _ANY_DIGIT.search(digits) is not None
    for kind in PRIORITY[:-1]:
        # Cheap gates first: most texts hold no digit, no @ and no address unit, and the patterns are costly.
        if not _worth_matching(kind, text, has_digit):
            continue
        for m in PATTERNS[kind].finditer(digits if kind != "ADDRESS" else text):
            g = next((i for i in range(1, (m.re.groups or 0) + 1) if m.group(i) is not None), 0)
            start, end = m.span(g)
            value = digits[start:end]
            if kind == "ID_CARD" and not _id_valid(value.replace(" ", "")):
                continue
            if kind == "BANK_CARD" and (not _luhn(re.sub(r"\D", "", value)) or _after_id_label(text, start)):
                continue
            if kind == "ADDRESS":
                start = _address_start(text, start, end)
            add(kind, start, end)
    for start, end in _names(text):
        add("NAME", start, end)
    if model is not None:
        for span in model.detect(text):
            add(span.type, span.start, span.end)
    return sorted(found, key=lambda s: s.start)


def redact(text: str, placeholders: dict[tuple[str, str], str] | None = None,
           model: ModelDetector | None = None) -> tuple[str, Counter[str]]:
    """Replace PII with placeholders; `placeholders` carries the numbering across one document's texts.
    With a `model`, its entities are added where no rule found anything (the rules win an overlap)."""
    placeholders = {} if placeholders is None else placeholders
    counts: Counter[str] = Counter()
    out, last = [], 0
    spans = detect(text, model)
    # A name found once in a document is replaced wherever it recurs there (张伟的家属…, no context word).
    known = sorted({v for t, v in placeholders if t == "NAME" and len(v) > 1} | {s.value for s in spans if s.type == "NAME"
                                                                                and len(s.value) > 1}, key=len, reverse=True)
    for value in known:
        for m in re.finditer(re.escape(value), text):
            if not any(s.start < m.end() and m.start() < s.end for s in spans):
                spans.append(Span("NAME", m.start(), m.end(), value))
    for span in sorted(spans, key=lambda s: s.start):
        key = (span.type, span.value)
        if key not in placeholders:
            n = sum(1 for t, _ in placeholders if t == span.type) + 1
            placeholders[key] = f"<{span.type}_{n}>"
        out += [text[last:span.start], placeholders[key]]
        last = span.end
        counts[span.type] += 1
    out.append(text[last:])
    return "".join(out), counts


# Entity labels of common Chinese NER / de-identification models → medtune's types.
MODEL_LABELS = {"PER": "NAME", "PERSON": "NAME", "NAME": "NAME", "PATIENT": "NAME", "DOCTOR": "NAME", "NR": "NAME",
                "LOC": "ADDRESS", "ADDRESS": "ADDRESS", "ADDR": "ADDRESS", "LOCATION": "ADDRESS", "PHONE": "PHONE",
                "TEL": "PHONE", "ID": "ID_CARD", "ID_CARD": "ID_CARD", "IDNUM": "ID_CARD", "EMAIL": "EMAIL",
                "DATE_OF_BIRTH": "DOB", "DOB": "DOB", "MRN": "RECORD_NO", "RECORD_NO": "RECORD_NO",
                "BANK_CARD": "BANK_CARD"}


class ModelDetector:
    """Any Hugging Face token-classification folder (e.g. a clinical NER model a hospital has trained),
    run through transformers' pipeline with entity aggregation. Entities whose label maps to a medtune
    type (`labels`, over MODEL_LABELS) and whose score reaches `min_score` become spans; others are ignored."""

    def __init__(self, path: str, labels: dict[str, str] | None = None, min_score: float = 0.5) -> None:
        from medtune.errors import ConfigError

        if not Path(path).is_dir():
            raise ConfigError(f"data.steps redact.model: {path} is not a folder (a Hugging Face token-classification "
                              "model saved with save_pretrained, with its tokenizer).")
        try:
            from transformers import pipeline

            self.pipe = pipeline("token-classification", model=path, aggregation_strategy="simple", device=-1)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"data.steps redact.model: {path} does not load as a token-classification model ({e}).") from None
        self.labels = {**MODEL_LABELS, **{k.upper(): v for k, v in (labels or {}).items()}}
        self.min_score = min_score

    def detect(self, text: str) -> list[Span]:
        if not text.strip():
            return []
        spans = []
        for e in self.pipe(text):
            kind = self.labels.get(str(e["entity_group"]).upper())
            if kind and e["score"] >= self.min_score and e["end"] > e["start"]:
                spans.append(Span(kind, int(e["start"]), int(e["end"]), text[int(e["start"]):int(e["end"])]))
        return spans


_ID_LABEL = re.compile(r"(?:身份证|证件)(?:号码|号)?[ \t　]*[:：]?[ \t　]*$")  # 身份证件号 ends in 证件号


def _after_id_label(text: str, start: int) -> bool:
    """The number follows 身份证号 / 证件号: an identity number (a wrong check digit makes it no bank card)."""
    return _ID_LABEL.search(text, max(0, start - 12), start) is not None


def _worth_matching(kind: str, text: str, has_digit: bool) -> bool:
    if kind == "EMAIL":
        return "@" in text
    if kind == "ADDRESS":  # a unit (省/市/区/县…) and a house number or a village
        return (has_digit or "村" in text) and _ADDRESS_GATE.search(text) is not None
    if kind == "DOB":  # digits, or a date in Chinese numerals (一九八五年…)
        return has_digit or "年" in text
    return has_digit  # every other type is a number


def _address_start(text: str, start: int, end: int) -> int:
    """Where an address really starts: after an introducing word (家住, 现住, 住址) caught by the lazy
    match, or at a province name inside the first unit (患者浙江省… → 浙江省…)."""
    head = text[start:end]
    intro = max((m.end() for m in _ADDRESS_INTRO.finditer(head)), default=0)
    if intro and intro < len(head):
        start += intro
        head = text[start:end]
    first = re.search(r"省|自治区|市|区|县|旗", head)  # the first administrative unit
    if first and (m := re.search(_PROVINCES, head[:first.end()])) and m.start() > 0:
        start += m.start()
    return start


def _names(text: str) -> list[tuple[int, int]]:
    """(start, end) of names: after triggers, before titles, opening a clause, and in the weaker contexts
    (a colon, a role noun) where the name must end with the value. Overlaps are resolved by `detect`."""
    out: list[tuple[int, int]] = []
    cuts = _Cuts(text)
    roles: set[int] = set()  # positions inside trigger words (主管医生, 责任护士): their titles name nobody
    labels = _ROLE_LABEL.finditer(text) if ("：" in text or ":" in text) else ()  # 送检者：, 发药员：, 持卡人：
    for m in itertools.chain(_TRIGGER.finditer(text), labels):
        if m.group().rstrip(" \t　:：") not in _TITLES:  # 主管医生, not 医生 itself
            roles.update(range(m.start(), m.end()))
        strong = bool(re.search(r"[:：]|[ \t　]$", m.group()))  # a label: 姓名：, 医师签名：, 申请人 …
        if (end := _name_at(text, m.end(), cuts, strong)) is not None:
            out.append((m.end(), end))
    for m in _TITLE.finditer(text):
        if m.start() in roles:
            continue
        if (m.start() == 0 or text[m.start() - 1] in _BOUNDARY) and _TITLE_LABEL.match(text, m.start()):
            continue  # a label (护士：, 护士长：), not a title after a name (张医生：您好 is one)
        if (start := _name_before(text, m.start(), cuts)) is not None:
            out.append((start, m.start()))
    for m in _CLAUSE_START.finditer(text):  # a name opening a clause, then a verb (张伟说…) or sex / age (王芳，女，)
        if (end := _name_at(text, m.start(), cuts, False, verbs_only=True)) is not None:
            out.append((m.start(), end))
    # Weaker contexts, so the name must also end where the value ends (a boundary, a particle, a title):
    # after any label's colon, and after a role noun (代理人张然英，).
    if "：" in text or ":" in text:
        for m in _COLON.finditer(text):
            if (end := _name_at(text, m.end(), cuts, False, bounded=True)) is not None:
                out.append((m.end(), end))
    for m in _ROLE_NOUN.finditer(text):
        if text[m.end():m.end() + 1] not in _FUNCTION_SURNAMES \
                and (end := _name_at(text, m.end(), cuts, False, bounded=True)) is not None:
            out.append((m.end(), end))
    return out


def _surname_len(text: str, i: int, common_only: bool = False) -> int:
    if text[i:i + 2] in _COMPOUND:
        return 2
    return 1 if text[i:i + 1] in (_COMMON_SURNAMES if common_only else _SURNAMES) else 0


def _given_ok(chars: str) -> bool:
    return bool(chars) and all("\u4e00" <= c <= "\u9fa5" and c not in _NOT_GIVEN and c not in _STOP_AFTER_NAME
                               for c in chars)


def _name_at(text: str, i: int, cuts: _Cuts, strong: bool, verbs_only: bool = False,
             bounded: bool = False) -> int | None:
    """The end of a name starting at `i` (surname + 1–2 given characters), or None. `verbs_only`: at a
    clause start, where a verb or the patient's sex / age must follow; `bounded`: after a weak context, where
    the name must end where the value ends (a boundary, a particle, a verb or a title)."""
    if verbs_only and (end := _name_before_demographic(text, i)) is not None:
        return end
    n = _surname_len(text, i, common_only=not strong)
    if not n or any(text.startswith(w, i) for w in _NOT_NAMES):
        return None
    if verbs_only and n == 1 and text[i] in _FUNCTION_SURNAMES:
        return None
    if text.startswith(_TITLES, i + n):  # 熊主任: the surname alone is the name
        return i + n
    split = False  # the last of two given characters starts a word: the name ends before it
    for given in (2, 1):
        end = i + n + given
        if end > len(text) or not _given_ok(text[i + n:end]):
            continue
        rest = text[end:]
        if given == 2 and not (verbs_only or bounded) and text[i] not in _FUNCTION_SURNAMES and rest \
                and rest[0] not in _BOUNDARY \
                and not rest.startswith((*_VERB_AFTER, *_TITLES)) and _is_word(text[end - 1:end + 1]):
            split = True  # 杨天右膝…, 杨秀发热…: 右膝 / 发热 is a word, the name is 杨天 / 杨秀 (not 冯珍子代诉, 黄婷淑女士)
            continue
        if verbs_only:  # a verb, maybe after a time word (王东润今早诉); or the name alone on its line (a signature)
            ok = rest.removeprefix(next((w for w in _TIME_WORDS if rest.startswith(w)), "")).startswith(_VERB_AFTER) \
                or (not rest or rest[0] == "\n") and (i == 0 or text[i - 1] == "\n")
        elif split:
            ok = True
        elif bounded and n == 1 and text[i] in _FUNCTION_SURNAMES:  # 复核：曾俊红, 回执：许桂的 yes; ：常表现为 no
            ok = not rest or rest[0] in _BOUNDARY or rest[0] == "的"
        else:  # the value ends here: a boundary, a particle, a verb, a title (after a trigger: a digit or a cut too)
            ok = not rest or rest[0] in _BOUNDARY or rest[0] in _STOP_AFTER_NAME or rest.startswith(_VERB_AFTER) \
                or rest.startswith(_TITLES) or not bounded and (rest[0].isdigit() or (cuts.at(end) and cuts.at(i)))
        if not ok:
            continue
        if given == 2 and text[end - 1:].startswith((*_VERB_AFTER, *_TITLES)):
            continue  # 王霞代诉: 代诉 is the verb
        if not strong and _is_word(text[i:end]):
            return None
        return end
    return None


def _name_before_demographic(text: str, i: int) -> int | None:
    """A name at a clause start followed by the patient's sex or age (许琪，男，8岁 / 甘草　女　/ 谭珍新（女，24岁）):
    evidence strong enough for any surname, a function-word one and a name that is also a word included."""
    n = _surname_len(text, i)
    for given in (2, 1):
        end = i + n + given
        if n and end <= len(text) and _given_ok(text[i + n:end]) and _DEMOGRAPHIC.match(text, end):
            return end
    return None


def _name_before(text: str, title: int, cuts: _Cuts) -> int | None:
    """The start of a name (or a surname alone) ending right before a title at `title` (王医生 → 王)."""
    for length in (4, 3, 2, 1):
        start = title - length
        if start < 0:
            continue
        n = _surname_len(text, start, common_only=True)
        if not n or n > length:
            continue
        given = text[start + n:title]
        if given and not _given_ok(given):
            continue
        if length > n + 2:
            continue
        if text.startswith("专家", title) and length == n:
            continue  # 吴国专家 is a name; 健康专家, 心血管专家 are not, and no one is called 王专家
        left = text[start - 1] if start else ""
        if any(text.startswith(w, start) for w in _NOT_NAMES):
            continue
        if n == 1 and text[start] in _FUNCTION_SURNAMES and (start and left not in _BOUNDARY and
                                                             not (left in _LEFT_OK and length > n) or length == 1 and
                                                             not text.startswith(("您", "：", ":", "，", "）", ")"), title + 2)):
            continue  # 向医生咨询, 祝医生工作顺利: a preposition or a wish (万医生您好 is a name)
        if start and left not in _BOUNDARY and left not in _LEFT_OK and not cuts.at(start) \
                and not (length == 1 and left not in _SURNAMES):
            continue  # a surname alone before a title (嘱王医生) needs no cut, unless another surname precedes it
        if _is_word(text[start:title]) and length > n:  # 长孙医生: a compound surname is a word too
            continue
        return start
    return None


class _Cuts:
    """Word starts of `text` by jieba (with its HMM for unknown words such as names), computed on first use."""

    def __init__(self, text: str) -> None:
        self.text, self.starts = text, None

    def at(self, i: int) -> bool:
        if self.starts is None:
            _word_tags()  # jieba initialised quietly
            import jieba

            self.starts = {start for _, start, _ in jieba.tokenize(self.text)} | {len(self.text)}
        return i in self.starts


def _is_word(candidate: str) -> bool:
    """jieba's dictionary lists the candidate itself with a part of speech other than a person name."""
    tag = _word_tags().get(candidate)
    return tag is not None and not tag.startswith("nr")


@lru_cache(maxsize=1)
def _word_tags() -> dict[str, str]:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)  # no "Building prefix dict" chatter on every prepare
    import jieba.posseg

    return jieba.posseg.dt.word_tag_tab


def _id_valid(value: str) -> bool:
    """An 18-digit number with the right check character, or a 15-digit one (no check character)."""
    return len(value) == 15 or _id_checksum(value)


def _id_checksum(value: str) -> bool:
    total = sum(int(d) * w for d, w in zip(value[:17], _ID_WEIGHTS, strict=True))
    return "10X98765432"[total % 11] == value[17].upper()


def _luhn(digits: str) -> bool:
    if not 16 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(int(c) for c in reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0
