"""Source formats → medtune's one shape.

Every converter reads one dataset (a `DatasetSpec` from the registry) and yields `Item`s: either an
example in one of the three shapes of DESIGN.md —

    {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}   # SFT
    {"prompt": [...messages], "chosen": [...], "rejected": [...]}                 # preference
    {"text": str}                                                                 # pretraining

— or a drop with a reason, so `prepare` can count and write out everything it did not keep.
A row that lacks a mapped column is a config mistake, not a bad row: it raises `DataError`
naming file, line and field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medtune.data import io
from medtune.errors import DataError
from medtune.registry import Registry

if TYPE_CHECKING:
    from medtune.data.datasets import DatasetSpec

FORMATS = Registry("format")
# The shape each format produces (DESIGN.md's three), so a stage can refuse the wrong data before any work.
SHAPES = {"alpaca": "messages", "sharegpt": "messages", "openai": "messages", "chatglm": "messages",
          "toyhom": "messages", "dialogue": "messages", "cmedqa2": "messages", "turns": "messages",
          "text": "text", "pairwise": "pairwise"}


@dataclass
class Item:
    """One converted row, or one dropped row with its reason (and `detail`, e.g. the field at fault)."""

    where: str  # "file:line", for the report and the dropped/ files
    example: dict[str, Any] | None = None
    reason: str | None = None
    raw: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)


class MissingField(DataError):
    """A mapped column is absent from a row."""

    def __init__(self, message: str, column: str) -> None:
        super().__init__(message)
        self.column = column


class WrongType(DataError):
    """A text field holds a number, boolean, list or object: dropped as `wrong_type`, never stringified."""

    def __init__(self, column: str, value: Any) -> None:
        super().__init__(f"field {column!r} holds a {type(value).__name__}, not text")
        self.column, self.value = column, value


def _columns(spec: DatasetSpec, name: str, default: str | None) -> list[str]:
    """The source columns for canonical field `name`: one, or several spellings tried in order
    (`columns: {instruction: [instruction, instruct]}` for CMtMedQA, whose rows use both)."""
    mapped = spec.columns.get(name, default or name)
    return list(mapped) if isinstance(mapped, list) else [mapped]


def _field(row: dict[str, Any], spec: DatasetSpec, name: str, where: str, required: bool = True,
           default: str | None = None) -> Any:
    """Read canonical field `name` through the dataset's column mapping (else column `default` or `name`)."""
    columns = _columns(spec, name, default)
    if isinstance(row, dict):
        for column in columns:
            if column in row:
                return row[column]
        if not required:
            return None
    have = sorted(row) if isinstance(row, dict) else type(row).__name__
    spelled = " or ".join(map(repr, columns))
    raise MissingField(f"{where}: missing field {spelled} (for {name!r}); the row has {have}. Map it in the "
                       f"registry entry, e.g. `columns: {{{name}: <your column>}}`, or list every spelling the "
                       f"file uses: `columns: {{{name}: [{', '.join(columns)}, <other>]}}`.", columns[0])


def _each_json(spec: DatasetSpec, convert_row: Callable[[Any, str], Item | list[Item]]) -> Iterator[Item]:
    """Run `convert_row` over a JSON/JSONL file with one policy for rows that lack a field.

    If the very first rows lack a mapped field, the column mapping is wrong: fail with the file,
    line and field. Once rows have converted, a row without the field is a bad row (real data has
    them, e.g. CMtMedQA line 1001 says `instruct`): drop it as `missing_field`, written out with
    the field's name. A text field holding another JSON type is dropped as `wrong_type`.
    """
    converted = False
    for where, row in io.read_records(spec.path, spec.encoding, spec.on_error):
        if isinstance(row, io.Unparseable):
            yield Item(where, reason=row.reason, raw=row.raw, detail={"error": row.error})
            continue
        try:
            items = convert_row(row, where)
        except MissingField as e:
            if not converted:
                raise
            items = Item(where, reason="missing_field", raw=row, detail={"field": e.column})
        except WrongType as e:
            items = Item(where, reason="wrong_type", raw=row,
                         detail={"field": e.column, "type": type(e.value).__name__})
        for item in items if isinstance(items, list) else [items]:
            converted = converted or item.example is not None
            yield item


def _text(value: Any, column: str = "text") -> str:
    """A text field's value: strings only. JSON numbers, booleans, lists and objects are refused
    (they used to become "123", "True" or a Python repr and train as such)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WrongType(column, value)
    return value.strip()


def _answers(value: Any, column: str) -> list[str]:
    """An answer field: a string, or a list of strings = several answers to the question (Huatuo-26M's
    raw test file), each becoming one example that `data.answers` (all/first/longest/merge) can group."""
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value]
    return [_text(value, column)]


def _qa(user: str, answer: str, where: str, raw: Any, system: str | None = None,
        meta: dict[str, Any] | None = None) -> Item:
    if not user:
        return Item(where, reason="empty_question", raw=raw)
    if not answer:
        return Item(where, reason="empty_answer", raw=raw)
    messages = ([{"role": "system", "content": system}] if system else [])
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return Item(where, {"messages": messages}, raw=raw, meta=meta or {})


def _one_per_answer(items: list[Item]) -> Item | list[Item]:
    if len(items) > 1:
        for k, item in enumerate(items):
            item.meta["answer_index"] = k
    return items[0] if len(items) == 1 else items


@FORMATS.register("alpaca", "instruction/input/output JSON or JSONL, optional history [[q, a], ...] and system")
def alpaca(spec: DatasetSpec) -> Iterator[Item]:
    def convert(row: Any, where: str) -> Item | list[Item]:
        instruction = _text(_field(row, spec, "instruction", where), "instruction")
        extra = _text(_field(row, spec, "input", where, required=False), "input")
        outputs = _answers(_field(row, spec, "output", where), "output")
        history = _field(row, spec, "history", where, required=False) or []
        system = _text(_field(row, spec, "system", where, required=False), "system") or None
        if not isinstance(history, list) or any(not isinstance(t, list) or len(t) != 2 for t in history):
            return Item(where, reason="bad_history", raw=row, detail={"field": "history"})
        messages = [{"role": "system", "content": system}] if system else []
        for i, (q, a) in enumerate(history):
            messages += [{"role": "user", "content": _text(q, f"history[{i}][0]")},
                         {"role": "assistant", "content": _text(a, f"history[{i}][1]")}]
        reasoning = _text(_field(row, spec, "reasoning", where, required=False), "reasoning")
        items = []
        for output in outputs:
            item = _qa(f"{instruction}\n{extra}" if extra else instruction, output, where, row)
            if item.example:
                if reasoning:  # e.g. medical-o1-reasoning-SFT: columns {output: Response, reasoning: Complex_CoT}
                    item.example["messages"][-1]["reasoning_content"] = reasoning
                item.example["messages"] = messages + item.example["messages"]
                item = _check_turns(item)
            items.append(item)
        return _one_per_answer(items)

    yield from _each_json(spec, convert)


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "bot": "assistant", "chatgpt": "assistant"}


@FORMATS.register("sharegpt", "conversations: [{from: human|gpt|system, value}] (also openai-style role/content)")
def sharegpt(spec: DatasetSpec) -> Iterator[Item]:
    yield from _message_lists(spec, "conversations")


@FORMATS.register("openai", "messages: [{role: system|user|assistant, content}]")
def openai(spec: DatasetSpec) -> Iterator[Item]:
    yield from _message_lists(spec, "messages")


_STYLES = {"role": "role/content", "content": "role/content", "from": "from/value", "value": "from/value"}


def _message_lists(spec: DatasetSpec, default_key: str) -> Iterator[Item]:
    """ShareGPT (from/value) and OpenAI (role/content) turns. One file holds one key style: the first
    row that converts sets it, and a later row in the other style stops the run with both lines named
    (two sources were concatenated; their roles or system prompts may differ too). A turn or row that
    mixes the styles itself is dropped as `mixed_key_style`.

    `options.tags` (LLaMA-Factory's dataset_info tags) names other keys and role values: role_tag,
    content_tag, user_tag, assistant_tag, system_tag, observation_tag, function_tag. A `system` column
    becomes the system turn; a row with tool turns (observation / function_call) or a non-empty `tools`
    column is dropped as `tool_turns` (medtune's chat templates have no tool role)."""
    first: dict[str, tuple[str, str]] = {}  # file -> (its key style, the row that set it)
    tags = spec.options.get("tags") or {}
    roles = dict(_SHAREGPT_ROLES)
    for tag, role in (("user_tag", "user"), ("assistant_tag", "assistant"), ("system_tag", "system"),
                      ("observation_tag", "tool"), ("function_tag", "tool")):
        if tags.get(tag):
            roles[tags[tag]] = role
    roles.setdefault("observation", "tool")
    roles.setdefault("function_call", "tool")
    role_keys = [tags["role_tag"]] if tags.get("role_tag") else ["role", "from"]
    content_keys = [tags["content_tag"]] if tags.get("content_tag") else ["content", "value"]
    styles_of = {**_STYLES, **{k: "tags" for k in role_keys + content_keys if k not in _STYLES}}

    def convert(row: Any, where: str) -> Item:
        turns = _field(row, spec, "messages", where, default=default_key)
        if not isinstance(turns, list):
            return Item(where, reason="bad_messages", raw=row)
        if "tools" in spec.columns and _field(row, spec, "tools", where, required=False):
            return Item(where, reason="tool_turns", raw=row, detail={"field": "tools"})
        system = _text(_field(row, spec, "system", where, required=False), "system") if "system" in spec.columns else ""
        messages, styles = ([{"role": "system", "content": system}] if system else []), set()
        for i, turn in enumerate(turns):
            role = next((turn[k] for k in role_keys if k in turn), None) if isinstance(turn, dict) else None
            if role not in roles:
                return Item(where, reason="unknown_role", raw=row, detail={"field": f"{default_key}[{i}].role"})
            if roles[role] == "tool":
                return Item(where, reason="tool_turns", raw=row, detail={"field": f"{default_key}[{i}]"})
            turn_styles = {styles_of[k] for k in turn if k in styles_of}
            if len(turn_styles) > 1 or (styles and turn_styles - styles):
                return Item(where, reason="mixed_key_style", raw=row,
                            detail={"field": f"{default_key}[{i}]", "keys": sorted(k for k in turn if k in styles_of)})
            styles |= turn_styles
            content = next((turn[k] for k in content_keys if k in turn), None)
            messages.append({"role": roles[role], "content": _content(content, f"{default_key}[{i}].content")})
            if roles[role] == "assistant" and (r := turn.get("reasoning_content", turn.get("reasoning"))) is not None:
                messages[-1]["reasoning_content"] = _text(r, f"{default_key}[{i}].reasoning_content")
        if styles:  # one style: a row mixing them was dropped above
            (style,) = styles
            file = where.rsplit(":", 1)[0]  # a folder of shards: each file is checked on its own
            was, at = first.setdefault(file, (style, where))
            if was != style:
                raise DataError(f"{where}: the turns use {style} keys, but {at} used {was}; a file holds one key "
                                f"style (two sources were concatenated?). Convert one part, or split the file into "
                                f"two datasets with `format: sharegpt` and `format: openai`.")
        # A row's own `meta` (e.g. medtune synth's provenance) travels into the prepared data.
        meta = row["meta"] if isinstance(row, dict) and isinstance(row.get("meta"), dict) else {}
        return _check_turns(Item(where, {"messages": messages}, raw=row, meta=meta))

    yield from _each_json(spec, convert)


def _content(value: Any, column: str) -> str:
    """A message's content: a string, or OpenAI content parts of type text (joined); images and other
    parts are refused as `wrong_type` (a text model cannot learn from them)."""
    if isinstance(value, list) and value and all(isinstance(p, dict) and p.get("type") == "text"
                                                 and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value).strip()
    return _text(value, column)


THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.S)


def _split_thinking(messages: list[dict[str, str]]) -> None:
    """An assistant answer that starts with <think>…</think> (R1-style distillation data) keeps the
    reasoning as `reasoning_content`, what thinking templates render and data.thinking acts on."""
    for m in messages:
        if m["role"] == "assistant" and "reasoning_content" not in m and (t := THINK.match(m["content"])):
            m["reasoning_content"], m["content"] = t.group(1).strip(), m["content"][t.end():].strip()


def _check_turns(item: Item) -> Item:
    """Keep only conversations a chat template can render: [system] user, assistant, user, ..., assistant."""
    messages = item.example["messages"]
    _split_thinking(messages)
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body or any(m["role"] != ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(body)):
        return Item(item.where, reason="bad_turn_order", raw=item.raw)
    if len(body) % 2:
        return Item(item.where, reason="ends_without_answer", raw=item.raw)
    if any(not m["content"] for m in body):
        return Item(item.where, reason="empty_turn", raw=item.raw)
    return item


@FORMATS.register("chatglm", "Med-ChatGLM context/target JSONL ('问题：…\\n回答: ' → question)")
def chatglm(spec: DatasetSpec) -> Iterator[Item]:
    def convert(row: Any, where: str) -> Item:
        context = _text(_field(row, spec, "context", where), "context")
        # The context wraps the question in a prompt of its own; strip it so our template adds one.
        question = re.sub(r"^问题[:：]\s*", "", re.sub(r"\s*回答[:：]\s*$", "", context))
        return _one_per_answer([_qa(question, a, where, row) for a in _answers(_field(row, spec, "target", where), "target")])

    yield from _each_json(spec, convert)


@FORMATS.register("toyhom", "Toyhom department CSV: department,title,ask,answer (GB18030)")
def toyhom(spec: DatasetSpec) -> Iterator[Item]:
    cols = tuple(_columns(spec, c, None)[0] for c in ("title", "ask", "answer"))
    for where, row in ((f"{shard}:{line}", row) for shard in io.shards(spec.path)
                       for line, row in io.read_csv_records(shard, spec.encoding, required=cols)):
        title, ask = _text(row[cols[0]]), _text(row[cols[1]])
        # Patients often leave `ask` empty or write 无 and put the question in the title.
        question = ask if ask and ask != "无" else title
        dept = _text(row.get(spec.columns.get("department", "department")))
        yield _qa(question, _text(row[cols[2]]), where, row, meta={"department": dept} if dept else None)


@FORMATS.register("dialogue", "list of '病人：…' / '医生：…' utterances per dialogue (MedDialog/CovidDialog)")
def dialogue(spec: DatasetSpec) -> Iterator[Item]:
    speakers = spec.options.get("speakers", {"病人": "user", "医生": "assistant"})
    pattern = re.compile(rf"^({'|'.join(map(re.escape, speakers))})\s*[:：]\s*")

    def convert(row: Any, where: str) -> Item:
        utterances = row if isinstance(row, list) else _field(row, spec, "dialogue", where)
        messages: list[dict[str, str]] = []
        if not isinstance(utterances, list):
            raise WrongType("dialogue", utterances)
        for i, utt in enumerate(utterances):
            utt = _text(utt, f"dialogue[{i}]")
            m = pattern.match(utt)
            if not m:
                return Item(where, reason="unknown_speaker", raw=row)
            role, content = speakers[m.group(1)], utt[m.end():].strip()
            if messages and messages[-1]["role"] == role:  # the same speaker twice: one turn
                messages[-1]["content"] += "\n" + content
            else:
                messages.append({"role": role, "content": content})
        if messages and messages[-1]["role"] == "user":  # a last question nobody answered
            messages.pop()
        # A row's own `meta` (e.g. medtune synth's provenance) travels into the prepared data.
        meta = row["meta"] if isinstance(row, dict) and isinstance(row.get("meta"), dict) else {}
        return _check_turns(Item(where, {"messages": messages}, raw=row, meta=meta))

    yield from _each_json(spec, convert)


@FORMATS.register("text", "plain text for pretraining: .txt (one document per line) or JSONL with `text`")
def text(spec: DatasetSpec) -> Iterator[Item]:
    if all(p.name.endswith((".txt", ".text", ".txt.gz", ".txt.zst")) for p in io.shards(spec.path)):
        for shard in io.shards(spec.path):
            for line, content in io.read_lines(shard, spec.encoding):
                yield Item(f"{shard}:{line}", {"text": content})
        return

    def convert(row: Any, where: str) -> Item:
        content = _text(_field(row, spec, "text", where), "text")
        return Item(where, {"text": content}) if content else Item(where, reason="empty_text", raw=row)

    yield from _each_json(spec, convert)


@FORMATS.register("pairwise", "preference rows: prompt (str or messages / sharegpt conversations), chosen, rejected")
def pairwise(spec: DatasetSpec) -> Iterator[Item]:
    def convert(row: Any, where: str) -> Item:
        prompt = _field(row, spec, "prompt", where, required=False)
        if prompt is None:  # MedicalGPT's reward files carry the prompt as sharegpt conversations
            prompt = _field(row, spec, "conversations", where)
        if isinstance(prompt, str):
            extra = _text(_field(row, spec, "input", where, required=False), "input")  # alpaca's query
            prompt_msgs = [{"role": "user", "content": f"{prompt.strip()}\n{extra}" if extra else prompt.strip()}]
        elif isinstance(prompt, list) and all(isinstance(t, dict) for t in prompt):
            prompt_msgs = [{"role": _SHAREGPT_ROLES.get(t.get("role", t.get("from")), "user"),
                            "content": _content(t.get("content", t.get("value")), f"prompt[{i}].content")}
                           for i, t in enumerate(prompt)]
        else:
            raise WrongType("prompt", prompt)
        chosen = _answer_turn(_field(row, spec, "chosen", where), "chosen")
        rejected = _answer_turn(_field(row, spec, "rejected", where), "rejected")
        if not chosen or not rejected:
            return Item(where, reason="empty_answer", raw=row)
        if chosen == rejected:
            return Item(where, reason="chosen_equals_rejected", raw=row)
        return Item(where, {"prompt": prompt_msgs, "chosen": [{"role": "assistant", "content": chosen}],
                            "rejected": [{"role": "assistant", "content": rejected}]})

    yield from _each_json(spec, convert)


def _answer_turn(value: Any, column: str) -> str:
    """A preference answer: a string, or TRL's conversational form (a list with one assistant message)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and "content" in value[0]:
        return _content(value[0]["content"], f"{column}[0].content")
    if isinstance(value, dict) and ("content" in value or "value" in value):  # LLaMA-Factory sharegpt ranking
        return _content(value.get("content", value.get("value")), f"{column}.value")
    return _text(value, column)


# Formats with more than one file or row per example live in their own module; importing it registers them.
from medtune.data import formats_grouped  # noqa: E402,F401
