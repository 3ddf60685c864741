"""A malformed-input corpus, generated: every fault class in every format it applies to, plus valid edge
cases, with a manifest of what `medtune prepare` must do with each (issue 13: written from the fault
list, not from the readers' code).

    python tests/malformed_corpus.py OUT_DIR      # writes the files and OUT_DIR/manifest.jsonl

Each case: {"case", "format", "path", "encoding", "on_error", "expect"}; `expect` is either
{"error": [substrings the one message must hold]} (exit 2, no traceback, no output folder) or
{"read": N, "kept": K, "dropped": {reason: n} or {"*": n}, "contains": [text a kept row must hold]}.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

Q1, A1 = "我最近经常头痛，晚上睡不好，怎么办？", "建议规律作息，必要时到神经内科就诊。"
Q2, A2 = "孩子发烧三十九度需要马上去医院吗？", "可以先物理降温，持续高热请及时就医。"

# format → (suffix, good record builder, fields whose value a row-level fault replaces)
def _alpaca(q: Any, a: Any) -> dict:
    return {"instruction": q, "input": "", "output": a}


def _sharegpt(q: Any, a: Any) -> dict:
    return {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}


def _openai(q: Any, a: Any) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def _dialogue(q: Any, a: Any) -> Any:
    return {"dialogue": [f"病人：{q}" if isinstance(q, str) else q, f"医生：{a}" if isinstance(a, str) else a]}


def _pairwise(q: Any, a: Any) -> dict:
    return {"prompt": q, "chosen": a, "rejected": "不知道。" if isinstance(a, str) else "不知道。"}


def _chatglm(q: Any, a: Any) -> dict:
    return {"context": f"问题：{q}\n回答: " if isinstance(q, str) else q, "target": a}


def _text(q: Any, a: Any) -> dict:
    return {"text": f"{q}{a}" if isinstance(q, str) and isinstance(a, str) else (a if not isinstance(a, str) else q)}


JSON_FORMATS = {"alpaca": _alpaca, "sharegpt": _sharegpt, "openai": _openai, "dialogue": _dialogue,
                "pairwise": _pairwise, "chatglm": _chatglm, "text": _text}
WRONG = {"number": 123, "float": 1.5, "true": True, "list": ["头痛", "发烧"], "object": {"a": 1},
         "nan": float("nan"), "infinity": float("inf")}
# Files that are something else than their name says, and what the message must say.
FOREIGN = {"png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG image"), "jpeg": (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG image"),
           "pdf": (b"%PDF-1.7\n%\xe2\xe3", "PDF document"), "zip": (b"PK\x03\x04\x14\x00\x00\x00\x08\x00", "zip archive"),
           "gzip": (gzip.compress(b'{"a": 1}\n'), "gzip-compressed"), "parquet": (b"PAR1\x15\x04\x15", "Parquet file"),
           "zstd": (b"\x28\xb5\x2f\xfd\x04\x00", "Zstandard-compressed"), "sqlite": (b"SQLite format 3\x00", "SQLite")}


def _jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def cases(out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    manifest: list[dict] = []

    def add(name: str, fmt: str, content: bytes | None, expect: dict, suffix: str = ".jsonl", encoding: str = "utf-8",
            on_error: str = "stop", path: Path | None = None) -> None:
        p = path or out / f"{name}{suffix}"
        if content is not None:
            p.write_bytes(content)
        manifest.append({"case": name, "format": fmt, "path": str(p), "encoding": encoding, "on_error": on_error,
                         "expect": expect})

    good_csv = f"department,title,ask,answer\n内科,头痛,{Q1},{A1}\n儿科,发烧,{Q2},{A2}\n"
    for fmt, make in JSON_FORMATS.items():
        good = [make(Q1, A1), make(Q2, A2)]
        # file-level faults: one message naming the file
        add(f"{fmt}-zero-bytes", fmt, b"", {"error": ["holds no records"]})
        add(f"{fmt}-empty-array", fmt, b"[]\n", {"error": ["holds no records"]}, ".json")
        add(f"{fmt}-blank-lines", fmt, b"\n\n  \n", {"error": ["holds no records"]})
        for kind, (data, what) in FOREIGN.items():
            add(f"{fmt}-foreign-{kind}", fmt, data, {"error": [what]})
        add(f"{fmt}-truncated-gzip", fmt, gzip.compress(_jsonl(good))[:25], {"error": ["not a readable gzip file"]},
            ".jsonl.gz")
        add(f"{fmt}-gbk-declared-utf8", fmt, _jsonl(good).decode().encode("gbk"), {"error": ["cannot decode byte", "gb18030"]})
        add(f"{fmt}-bad-json-line", fmt, _jsonl(good[:1]) + b'{"broken": \n' + _jsonl(good[1:]),
            {"error": ["line 2", "invalid JSON"]})
        add(f"{fmt}-bad-json-skip", fmt, _jsonl(good[:1]) + b'{"broken": \n' + _jsonl(good[1:]),
            {"read": 3, "kept": 2, "dropped": {"invalid_json": 1}}, on_error="skip")
        add(f"{fmt}-truncated-last-line", fmt, _jsonl(good) + b'{"instruction": "\xe5\xa4\xb4',
            {"error": ["line 3"]})
        add(f"{fmt}-lone-surrogate", fmt, _jsonl(good[:1]) + json.dumps(make(Q2 + "\ud800", A2)).encode() + b"\n",
            {"error": ["line 2", "lone surrogate"]})
        add(f"{fmt}-lone-surrogate-skip", fmt, _jsonl(good[:1]) + json.dumps(make(Q2 + "\ud800", A2)).encode() + b"\n",
            {"read": 2, "kept": 1, "dropped": {"invalid_unicode": 1}}, on_error="skip")
        add(f"{fmt}-deep-nesting", fmt, _jsonl(good[:1]) + b'{"x": ' + b"[" * 50000 + b"]" * 50000 + b"}\n",
            {"error": ["line 2", "nested too deeply"]})
        add(f"{fmt}-array-missing-comma", fmt,
            ("[\n" + json.dumps(good[0], ensure_ascii=False) + "\n" + json.dumps(good[1], ensure_ascii=False) + "\n]\n").encode(),
            {"error": ["line 3", "expected ','"]}, ".json")
        add(f"{fmt}-array-bad-element", fmt,
            ("[\n" + json.dumps(good[0], ensure_ascii=False) + ",\n{\"oops\" 1}\n]\n").encode(), {"error": ["line 3", "invalid JSON"]},
            ".json")
        # rows that are not objects from the first line on: the mapping cannot be right
        add(f"{fmt}-scalar-rows", fmt, b"1\n2\n", {"error": [":1", "missing field"]})
        add(f"{fmt}-missing-file", fmt, None, {"error": ["no such file"]}, path=out / f"{fmt}-nowhere.jsonl")
        folder = out / f"{fmt}-empty-folder"
        folder.mkdir(exist_ok=True)
        add(f"{fmt}-empty-folder", fmt, None, {"error": ["holds no data file"]}, path=folder)
        # row-level faults: the bad row is dropped and counted, the good ones kept
        for kind, value in WRONG.items():
            for side in ("question", "answer"):
                if fmt == "text" and side == "question":
                    continue
                row = make(value, A2) if side == "question" else make(Q2, value)
                # A list of strings in an answer field is several answers, one example each (data.answers).
                several = kind == "list" and side == "answer" and fmt in ("alpaca", "chatglm")
                add(f"{fmt}-{side}-{kind}", fmt, _jsonl([good[0]]) + json.dumps(row, ensure_ascii=False).encode() + b"\n",
                    {"read": 3, "kept": 3, "dropped": {}, "contains": ["发烧"]} if several else
                    {"read": 2, "kept": 1, "dropped": {"*": 1}})
        add(f"{fmt}-answer-null", fmt, _jsonl([good[0], make(Q2, None)]), {"read": 2, "kept": 1, "dropped": {"*": 1}})
        # valid edge cases: loaded intact
        add(f"{fmt}-utf8-bom", fmt, b"\xef\xbb\xbf" + _jsonl(good), {"read": 2, "kept": 2, "dropped": {}, "contains": [A1]})
        add(f"{fmt}-utf8-bom-declared-gb18030", fmt, b"\xef\xbb\xbf" + _jsonl(good),
            {"read": 2, "kept": 2, "dropped": {}, "contains": [A2]}, encoding="gb18030")
        add(f"{fmt}-utf16", fmt, _jsonl(good).decode().encode("utf-16"), {"read": 2, "kept": 2, "dropped": {}, "contains": [A1]})
        add(f"{fmt}-crlf", fmt, _jsonl(good).replace(b"\n", b"\r\n"), {"read": 2, "kept": 2, "dropped": {}, "contains": [A1]})
        add(f"{fmt}-no-final-newline", fmt, _jsonl(good).rstrip(b"\n"), {"read": 2, "kept": 2, "dropped": {}})
        add(f"{fmt}-blank-lines-between", fmt, _jsonl(good[:1]) + b"\n\n" + _jsonl(good[1:]),
            {"read": 2, "kept": 2, "dropped": {}})
        add(f"{fmt}-extra-fields", fmt, _jsonl([{**good[0], "id": 7, "source": "x"}, good[1]]), {"read": 2, "kept": 2, "dropped": {}})
        rare = "𠀀𪚥龘"  # beyond the Basic Multilingual Plane
        add(f"{fmt}-rare-characters", fmt, _jsonl([make(Q1 + rare, A1 + rare), good[1]]),
            {"read": 2, "kept": 2, "dropped": {}, "contains": [rare]})
        add(f"{fmt}-gzip", fmt, gzip.compress(_jsonl(good)), {"read": 2, "kept": 2, "dropped": {}, "contains": [A1]}, ".jsonl.gz")
        add(f"{fmt}-pretty-array", fmt, json.dumps(good, ensure_ascii=False, indent=2).encode(),
            {"read": 2, "kept": 2, "dropped": {}, "contains": [A2]}, ".json")
        add(f"{fmt}-minified-array", fmt, json.dumps(good, ensure_ascii=False).encode(),
            {"read": 2, "kept": 2, "dropped": {}}, ".json")
        if fmt in ("sharegpt", "openai"):
            # the same top-level key, turns in the other style (two sources concatenated), then one row mixing both
            key, other = ("conversations", _openai(Q2, A2)["messages"]) if fmt == "sharegpt" else \
                ("messages", _sharegpt(Q2, A2)["conversations"])
            add(f"{fmt}-mixed-key-styles", fmt, _jsonl([good[0], {key: other}]), {"error": [":2", "key style", ":1 used"]})
            add(f"{fmt}-mixed-keys-in-row", fmt, _jsonl([good[0], {key: [good[1][key][0], other[1]]}]),
                {"read": 2, "kept": 1, "dropped": {"mixed_key_style": 1}})
        shard_dir = out / f"{fmt}-shards"
        shard_dir.mkdir(exist_ok=True)
        (shard_dir / "a.jsonl").write_bytes(_jsonl(good[:1]))
        (shard_dir / "b.jsonl.gz").write_bytes(gzip.compress(_jsonl(good[1:])))
        add(f"{fmt}-shard-folder", fmt, None, {"read": 2, "kept": 2, "dropped": {}, "contains": [A2]}, path=shard_dir)
    # CSV (toyhom)
    csv_cases = {
        "zero-bytes": (b"", {"error": ["holds no records"]}),
        "header-only": (b"department,title,ask,answer\n", {"error": ["holds no records"]}),
        "unterminated-quote": (f'department,title,ask,answer\n内科,头痛,"{Q1},{A1}\n儿科,发烧,{Q2},{A2}\n'.encode(),
                               {"error": ["line 2", "never closed"]}),
        "too-many-cells": (f"department,title,ask,answer\n内科,头痛,{Q1},{A1},多余\n".encode(), {"error": ["line 2", "cells for"]}),
        "missing-column": (f"department,title,question,answer\n内科,头痛,{Q1},{A1}\n".encode(), {"error": ["line 1", "missing column"]}),
        "gbk-declared-utf8": (good_csv.encode("gbk"), {"error": ["cannot decode byte"]}),
        "png": (FOREIGN["png"][0], {"error": ["PNG image"]}),
        "zip-named-csv": (FOREIGN["zip"][0], {"error": ["zip archive"]}),
        "empty-answer": (f"department,title,ask,answer\n内科,头痛,{Q1},{A1}\n儿科,发烧,{Q2},\n".encode(),
                         {"read": 2, "kept": 1, "dropped": {"empty_answer": 1}}),
        "utf8-bom": (b"\xef\xbb\xbf" + good_csv.encode(), {"read": 2, "kept": 2, "dropped": {}, "contains": [A1]}),
        "crlf": (good_csv.replace("\n", "\r\n").encode(), {"read": 2, "kept": 2, "dropped": {}, "contains": [A2]}),
        "quoted-comma": (f'department,title,ask,answer\n内科,头痛,"{Q1}，还有,逗号",{A1}\n'.encode(),
                         {"read": 1, "kept": 1, "dropped": {}, "contains": ["还有,逗号"]}),
        "multiline-cell": (f'department,title,ask,answer\n内科,头痛,"{Q1}\n第二行",{A1}\n'.encode(),
                           {"read": 1, "kept": 1, "dropped": {}, "contains": ["第二行"]}),
        "gb18030": (good_csv.encode("gb18030"), {"read": 2, "kept": 2, "dropped": {}, "contains": [A1]}),
    }
    for name, (data, expect) in csv_cases.items():
        add(f"toyhom-{name}", "toyhom", data, expect, ".csv", encoding="gb18030" if name == "gb18030" else "utf-8")
    # plain text (.txt, one document per line)
    add("text-txt-valid", "text", f"{Q1}{A1}\n{Q2}{A2}\n".encode(), {"read": 2, "kept": 2, "dropped": {}, "contains": [A1]}, ".txt")
    add("text-txt-blank", "text", b"\n \n", {"error": ["holds no records"]}, ".txt")
    add("text-txt-png", "text", FOREIGN["png"][0], {"error": ["PNG image"]}, ".txt")
    add("text-txt-utf16", "text", f"{Q1}{A1}\n".encode("utf-16"), {"read": 1, "kept": 1, "dropped": {}, "contains": [A1]}, ".txt")
    add("text-txt-gbk", "text", f"{Q1}{A1}\n".encode("gbk"), {"error": ["cannot decode byte"]}, ".txt")
    (out / "manifest.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in manifest), encoding="utf-8")
    return manifest


if __name__ == "__main__":
    print(len(cases(Path(sys.argv[1]))), "cases")
