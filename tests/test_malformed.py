"""The generated malformed-input corpus (tests/malformed_corpus.py): every case ends as its manifest says —
one message naming the file (no traceback, no output folder), or rows that add up with the bad ones dropped."""

import json

import pytest
from conftest import ROOT
from malformed_corpus import cases

from medtune.cli import main

CFG = str(ROOT / "configs/tiny/sft_lora.yaml")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("malformed")
    return {c["case"]: c for c in cases(folder)}


def _names():
    import tempfile
    from pathlib import Path

    return [c["case"] for c in cases(Path(tempfile.mkdtemp(prefix="malformed_names_")))]


def test_the_corpus_is_big_and_covers_every_format():
    import tempfile
    from pathlib import Path

    all_cases = cases(Path(tempfile.mkdtemp(prefix="malformed_")))
    assert len(all_cases) >= 300
    assert {c["format"] for c in all_cases} >= {"alpaca", "sharegpt", "openai", "dialogue", "pairwise", "chatglm", "text",
                                                "toyhom"}
    assert sum("error" in c["expect"] for c in all_cases) > 100 and sum("kept" in c["expect"] for c in all_cases) > 100


@pytest.mark.parametrize("name", _names())
def test_case(name, corpus, tmp_path, capsys):
    c = corpus[name]
    reg = tmp_path / "reg.yaml"
    reg.write_text(json.dumps({"x": {"path": c["path"], "format": c["format"], "license": "t", "source": "t",
                                     "encoding": c["encoding"]}}, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "out"
    rc = main(["prepare", CFG, f"data.registries=[{reg}]", "data.datasets=[x]", f"data.output_dir={out}",
               "data.max_samples=null", f"data.on_error={c['on_error']}"])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    expect = c["expect"]
    if "error" in expect:
        assert rc == 2, err
        message = [line for line in err.splitlines() if "error:" in line]
        assert len(message) == 1 and c["path"] in message[0], err
        for part in expect["error"]:
            assert part in message[0], (part, message[0])
        assert not out.exists()
        return
    assert rc == 0, err
    d = json.loads((out / "report.json").read_text(encoding="utf-8"))["datasets"]["x"]
    assert d["rows_read"] == d["kept"] + sum(d["dropped"].values()) + d["not_sampled"]  # nothing unaccounted
    assert (d["rows_read"], d["kept"]) == (expect["read"], expect["kept"]), d
    if "*" in expect["dropped"]:
        assert sum(d["dropped"].values()) == expect["dropped"]["*"], d
    else:
        assert d["dropped"] == expect["dropped"], d
    kept = "".join(p.read_text(encoding="utf-8") for p in out.glob("*.jsonl"))
    for text in expect.get("contains", []):
        assert text in kept
    for reason, n in d["dropped"].items():  # every dropped row is written out with its line
        rows = [json.loads(x) for x in (out / "dropped" / f"{reason}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert len(rows) == n and all(r["where"].rsplit(":", 1)[1].isdigit() for r in rows)
    for bad in ("123", "True", "1.5", "nan", "inf", "['头痛'", "{'a'"):  # no coerced value trains
        assert f'"content": "{bad}' not in kept and f"{bad}\"" not in kept.replace('"content": "', "")
