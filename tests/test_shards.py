"""Inputs at scale: a dataset path may be a folder or a glob of shards, in JSONL (plain, .gz, .zst) or Parquet."""

import gzip
import json

import pytest
from conftest import ROOT

from medtune.cli import main

LORA = str(ROOT / "configs/tiny/sft_lora.yaml")


def _rows(start, n):
    return [{"instruction": f"问题{i}：头痛怎么办？", "output": f"回答{i}：多休息。"} for i in range(start, start + n)]


def _jsonl(rows):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


@pytest.fixture
def shard_dir(tmp_path):
    zstd = pytest.importorskip("zstandard")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    d = tmp_path / "shards"
    d.mkdir()
    (d / "part-0.jsonl").write_bytes(_jsonl(_rows(0, 5)))
    bad = _rows(5, 5)
    bad[2]["output"] = 42  # a wrong type in the second shard, line 3
    (d / "part-1.jsonl.gz").write_bytes(gzip.compress(_jsonl(bad)))
    (d / "part-2.jsonl.zst").write_bytes(zstd.ZstdCompressor().compress(_jsonl(_rows(10, 5))))
    rows = _rows(15, 5) + [_rows(0, 1)[0]]  # the last row repeats part-0's first: an exact duplicate
    pq.write_table(pa.Table.from_pylist(rows), d / "part-3.parquet")
    (d / ".hidden.jsonl").write_text("not data")
    return d


def _prepare(tmp_path, path):
    reg = tmp_path / "reg.yaml"
    reg.write_text(json.dumps({"sharded": {"path": str(path), "format": "alpaca", "license": "test", "source": "t"}}))
    out = tmp_path / "prep"
    assert main(["prepare", LORA, f"data.registries=[{reg}]", "data.datasets=[sharded]", f"data.output_dir={out}",
                 "data.max_samples=null", "data.test_size=0", "data.dedup={exact: true}"]) == 0
    return out, json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("as_glob", [False, True])
def test_folder_or_glob_of_mixed_shards(tmp_path, shard_dir, as_glob):
    out, report = _prepare(tmp_path, str(shard_dir / "part-*") if as_glob else shard_dir)
    d = report["datasets"]["sharded"]
    assert d["rows_read"] == 21 and d["kept"] == 19
    assert d["dropped"] == {"wrong_type": 1, "duplicate_exact": 1}
    wrong = json.loads((out / "dropped/wrong_type.jsonl").read_text())
    assert wrong["where"] == f"{shard_dir / 'part-1.jsonl.gz'}:3" and wrong["field"] == "output"
    dup = json.loads((out / "dropped/duplicate_exact.jsonl").read_text())
    assert dup["where"] == f"{shard_dir / 'part-3.parquet'}:6" and dup["duplicate_of"] == "sharded:part-0.jsonl:1"
    kept = [json.loads(x)["messages"][0]["content"] for x in (out / "sharded.jsonl").read_text().splitlines()]
    assert kept[:2] == ["问题0：头痛怎么办？", "问题1：头痛怎么办？"] and kept[-1] == "问题19：头痛怎么办？"


def test_empty_glob_and_bad_parquet_are_one_message(tmp_path, shard_dir, capsys):
    reg = tmp_path / "reg.yaml"
    reg.write_text(json.dumps({"none": {"path": str(shard_dir / "nothing-*.jsonl"), "format": "alpaca"}}))
    assert main(["prepare", LORA, f"data.registries=[{reg}]", "data.datasets=[none]",
                 f"data.output_dir={tmp_path / 'p'}"]) == 2
    assert "the glob matches no file" in capsys.readouterr().err
    (shard_dir / "part-4.parquet").write_bytes(b"PAR1 not really")
    out = tmp_path / "p2"
    reg.write_text(json.dumps({"s": {"path": str(shard_dir), "format": "alpaca"}}))
    assert main(["prepare", LORA, f"data.registries=[{reg}]", "data.datasets=[s]", f"data.output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert "part-4.parquet: not a readable Parquet file" in err and "Traceback" not in err
    assert not out.exists()  # a failed prepare leaves nothing half-written
