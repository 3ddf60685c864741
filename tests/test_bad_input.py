"""Input that is checked, not coerced: every malformed file gets one message naming it (and the line),
nothing half-written is left, and `data.on_error: skip` drops unparseable records, counted and written out."""

import json

import pytest
from conftest import ROOT

from medtune.cli import main

CFG = str(ROOT / "configs/tiny/sft_lora.yaml")
GOOD = '{"instruction": "头痛怎么办？", "output": "多休息。"}\n'


def prepare(tmp_path, name, content, *extra, fmt="alpaca", encoding="utf-8", columns=""):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    reg = tmp_path / "reg.yaml"
    reg.write_text(f"x: {{path: {path}, format: {fmt}, license: t, source: t, encoding: {encoding}{columns}}}\n",
                   encoding="utf-8")
    out = tmp_path / "out"
    rc = main(["prepare", CFG, f"data.registries=[{reg}]", "data.datasets=[x]", f"data.output_dir={out}",
               "data.max_samples=null", *extra])
    return rc, out, path


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", b"", "holds no records"),
    ("empty.json", b"[ ]\n", "holds no records"),
    ("photo.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00", "this is a PNG image, not JSON data"),
    ("archive.jsonl", b"PK\x03\x04\x14\x00\x00\x00", "this is a zip archive, not JSON data: unzip it"),
    ("packed.jsonl", b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "this is a gzip-compressed file, not JSON data: name it *.gz"),
    ("table.json", b"PAR1\x15\x04", "this is a Parquet file, not JSON data: name it *.parquet"),
    ("deep.jsonl", ("[" * 100000 + "]" * 100000 + "\n").encode(), "line 1: JSON nested too deeply"),
    ("lone.jsonl", (GOOD + '{"instruction": "a\\ud800", "output": "b"}\n').encode(), "line 2: a lone surrogate escape"),
    ("bad.jsonl", (GOOD + "{bad json\n").encode(), "line 2, column 2: invalid JSON"),
    ("array.json", ('[\n' + GOOD.strip() + ',\n\n  {"instruction": "x", "output": "y"}\n  {"instruction": "z"}\n]').encode(),
     "line 5: expected ',' or ']'"),
])
def test_a_bad_file_stops_with_one_message_and_writes_nothing(tmp_path, capsys, name, content, message):
    rc, out, path = prepare(tmp_path, name, content)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and str(path) in err and "Traceback" not in err, err
    assert not out.exists()


def test_on_error_skip_drops_unparseable_records_and_keeps_their_raw_text(tmp_path, capsys):
    content = GOOD + "{bad json\n" + '{"instruction": "a\\ud800", "output": "b"}\n' + GOOD.replace("头痛", "咳嗽")
    rc, out, path = prepare(tmp_path, "mixed.jsonl", content, "data.on_error=skip")
    assert rc == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))["datasets"]["x"]
    assert report["rows_read"] == 4 and report["kept"] == 2
    assert report["dropped"] == {"invalid_json": 1, "invalid_unicode": 1}
    bad = json.loads((out / "dropped/invalid_json.jsonl").read_text(encoding="utf-8"))
    assert bad["where"] == f"{path}:2" and bad["row"] == "{bad json" and "invalid JSON" in bad["error"]
    lone = json.loads((out / "dropped/invalid_unicode.jsonl").read_text(encoding="utf-8"))
    assert lone["where"] == f"{path}:3" and "\\ud800" in lone["row"]


def test_json_array_records_carry_their_physical_line(tmp_path):
    content = '[\n  {"instruction": "头痛", "output": "休息"},\n\n  {"instruction": 5,\n   "output": "x"}\n]\n'
    rc, out, path = prepare(tmp_path, "array.json", content)
    assert rc == 0
    drop = json.loads((out / "dropped/wrong_type.jsonl").read_text(encoding="utf-8"))
    assert drop["where"] == f"{path}:4" and drop["field"] == "instruction"


def test_byte_order_marks_win_over_the_configured_encoding(tmp_path):
    rc, out, _ = prepare(tmp_path, "bom.jsonl", b"\xef\xbb\xbf" + GOOD.encode(), encoding="gb18030")
    assert rc == 0 and "头痛怎么办" in (out / "x.jsonl").read_text(encoding="utf-8")
    rc, out, _ = prepare(tmp_path, "u16.jsonl", GOOD.encode("utf-16"))
    assert rc == 0 and "头痛怎么办" in (out / "x.jsonl").read_text(encoding="utf-8")


def test_an_unterminated_csv_quote_is_named_where_it_opens(tmp_path, capsys):
    content = "title,ask,answer\n头痛,头痛怎么办,多休息\n发烧,\"发烧怎么办,多喝水\n咳嗽,咳嗽怎么办,少说话\n"
    rc, out, path = prepare(tmp_path, "qa.csv", content, fmt="toyhom")
    err = capsys.readouterr().err
    assert rc == 2 and f"{path}, line 3: a quoted field opens here and is never closed" in err, err
    assert not out.exists()


def test_a_header_only_csv_is_empty_input(tmp_path, capsys):
    rc, out, path = prepare(tmp_path, "qa.csv", "title,ask,answer\n", fmt="toyhom")
    assert rc == 2 and "holds no records" in capsys.readouterr().err and not out.exists()


def test_a_key_given_twice_is_dropped_naming_the_key(tmp_path):
    content = GOOD + '{"instruction": "头痛", "instruction": "发烧", "output": "休息"}\n'
    rc, out, path = prepare(tmp_path, "dup.jsonl", content)
    assert rc == 0
    drop = json.loads((out / "dropped/duplicate_key.jsonl").read_text(encoding="utf-8"))
    assert drop["where"] == f"{path}:2" and "'instruction' appears twice" in drop["error"]
    array = '[\n' + GOOD.strip() + ',\n  {"output": "a",\n   "output": "b", "instruction": "c"}\n]'
    rc, out, path = prepare(tmp_path, "dup.json", array)
    drop = json.loads((out / "dropped/duplicate_key.jsonl").read_text(encoding="utf-8"))
    assert rc == 0 and drop["where"] == f"{path}:3" and "'output'" in drop["error"]


def _cmedqa2(tmp_path, edit=None, drop=None):
    import shutil

    from conftest import FIXTURES

    folder = tmp_path / "cmedqa2"
    shutil.copytree(FIXTURES / "cmedqa2", folder)
    for name in drop or ():
        (folder / name).unlink()
    for name, (old, new) in (edit or {}).items():
        path = folder / name
        path.write_text(path.read_text(encoding="utf-8").replace(old, new, 1), encoding="utf-8")
    reg = tmp_path / "reg.yaml"
    reg.write_text(f"c: {{path: {folder}, format: cmedqa2, license: t, source: t}}\n", encoding="utf-8")
    out = tmp_path / "out"
    rc = main(["prepare", CFG, f"data.registries=[{reg}]", "data.datasets=[c]", f"data.output_dir={out}",
               "data.max_samples=null"])
    return rc, out, folder


@pytest.mark.parametrize("edit, drop, message", [
    (None, ["train_candidates.txt", "dev_candidates.txt", "test_candidates.txt"], "no train/dev/test_candidates file"),
    ({"dev_candidates.txt": ("103,9004,0,1", "103,9004,0,yes")}, None, "dev_candidates.txt, line 2: label 'yes'"),
    ({"dev_candidates.txt": ("question_id,ans_id,cnt,label", "qid,ans_id,cnt,label")}, None, "missing column(s) ['question_id']"),
    ({"train_candidates.txt": ("pos_ans_id", "positive")}, None, "missing column(s) ['pos_ans_id']"),
    ({"answer.csv": ("9002,101", "9001,101")}, None, "answer.csv, line 3: ans_id 9001 already appears on line 2"),
])
def test_cmedqa2_files_are_checked(tmp_path, capsys, edit, drop, message):
    rc, out, _ = _cmedqa2(tmp_path, edit, drop)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_cmedqa2_duplicate_question_ids_are_dropped_and_counted(tmp_path):
    rc, out, folder = _cmedqa2(tmp_path, {"question.csv": ('102,"胃经常痛', '101,"胃经常痛')})
    assert rc == 0
    d = json.loads((out / "report.json").read_text(encoding="utf-8"))["datasets"]["c"]
    assert d["dropped"]["duplicate_question_id"] == 1
    assert d["listed_in_two_splits"] == 1  # question 105 is listed for train and test: kept in test, counted
    drop = json.loads((out / "dropped/duplicate_question_id.jsonl").read_text(encoding="utf-8"))
    assert drop["where"] == f"{folder / 'question.csv'}:3" and drop["first_line"] == 2
