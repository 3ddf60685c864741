"""The tokenised cache: exact ids and masks, reuse across runs, rebuild on any input change, never a torn cache."""

import json

import pytest
from conftest import DIALOGUE, ROOT

from medtune.cli import main
from medtune.data.encode import encode_messages
from medtune.data.templates import load_template
from medtune.data.tokenized import encode_batch, encoded

LORA = str(ROOT / "configs/tiny/sft_lora.yaml")


@pytest.mark.parametrize("name", ["chatml", "qwen", "gemma", "llama2", "chatglm", "vicuna", "medical"])
def test_batched_encoding_equals_one_row_at_a_time(tiny_tokenizer, name):
    template = load_template(name)
    system = [{"role": "system", "content": "你是医生。"}]
    rows = [{"messages": DIALOGUE}, {"messages": DIALOGUE[:2]}, {"messages": system + DIALOGUE},
            {"messages": [DIALOGUE[0], {"role": "assistant", "content": "好" * 400}]},
            {"messages": [{"role": "user", "content": "  空格 "}, {"role": "assistant", "content": " 答\n\n"}]}]
    for mask, max_length in (("all", 512), ("last", 512), ("all", 24), ("all", 3), ("all", 40)):
        batch = encode_batch(tiny_tokenizer, template, rows, max_length, mask)
        for row, got in zip(rows, batch, strict=True):
            one = encode_messages(tiny_tokenizer, template, row["messages"], max_length, mask)
            if one is None:
                assert got["input_ids"] == [] and got["length"] == 0
            else:
                assert got["input_ids"] == one["input_ids"] and got["labels"] == one["labels"]


def _files(tmp_path, n=40):
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"问题{i}"},
                                                  {"role": "assistant", "content": f"回答{i}。" * (i % 7 + 1)}],
                                     "meta": {"dataset": "d"}}, ensure_ascii=False) + "\n" for i in range(n)),
                 encoding="utf-8")
    return [str(f)]


def test_two_workers_give_the_same_rows_as_one(tmp_path, tiny_tokenizer):
    template = load_template("chatml")
    files = _files(tmp_path, 200)
    one = encoded(files, tiny_tokenizer, template, 64, "all", tmp_path / "c1", workers=1)
    two = encoded(files, tiny_tokenizer, template, 64, "all", tmp_path / "c2", workers=2)
    assert one["input_ids"] == two["input_ids"] and one["labels"] == two["labels"] and len(one) == 200


def test_cache_is_reused_and_rebuilt_when_an_input_changes(tmp_path, tiny_tokenizer, caplog):
    template = load_template("chatml")
    files = _files(tmp_path)
    root = tmp_path / "cache"
    encoded(files, tiny_tokenizer, template, 64, "all", root, workers=1)
    first = sorted(p.name for p in root.iterdir())
    with caplog.at_level("INFO"):
        encoded(files, tiny_tokenizer, template, 64, "all", root, workers=1)
    assert "tokenised cache hit" in caplog.text and sorted(p.name for p in root.iterdir()) == first
    # Another max_length, mask or template is another cache; so is changed data.
    encoded(files, tiny_tokenizer, template, 32, "all", root, workers=1)
    encoded(files, tiny_tokenizer, load_template("qwen"), 64, "all", root, workers=1)
    with open(files[0], "a", encoding="utf-8") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "新"}, {"role": "assistant", "content": "行"}]},
                           ensure_ascii=False) + "\n")
    assert len(encoded(files, tiny_tokenizer, template, 64, "all", root, workers=1)) == 41
    assert len([p for p in root.iterdir() if not p.name.startswith(".")]) == 4


def test_torn_or_foreign_cache_is_rebuilt_not_used(tmp_path, tiny_tokenizer, caplog):
    template = load_template("chatml")
    files = _files(tmp_path)
    root = tmp_path / "cache"
    encoded(files, tiny_tokenizer, template, 64, "all", root, workers=1)
    (folder,) = [p for p in root.iterdir() if not p.name.startswith(".")]
    (folder / "COMPLETE").unlink()  # a build killed before its commit
    with caplog.at_level("WARNING"):
        ds = encoded(files, tiny_tokenizer, template, 64, "all", root, workers=1)
    assert "incomplete, truncated or was built from other inputs" in caplog.text and len(ds) == 40
    arrow = next((folder / "data").glob("*.arrow"))  # a shard truncated after the commit
    arrow.write_bytes(arrow.read_bytes()[:-100])
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert len(encoded(files, tiny_tokenizer, template, 64, "all", root, workers=1)) == 40
    assert "truncated" in caplog.text
    fp = json.loads((folder / "fingerprint.json").read_text())
    (folder / "fingerprint.json").write_text(json.dumps({**fp, "key": "0" * 16}))  # another tokenizer's cache
    caplog.clear()
    with caplog.at_level("WARNING"):
        encoded(files, tiny_tokenizer, template, 64, "all", root, workers=1)
    assert "rebuilding" in caplog.text


def test_second_run_reuses_the_cache_through_the_cli(tmp_path, capsys, caplog):
    args = ["data.max_samples=32", "data.test_size=8", "train.eval_strategy=no", "train.max_steps=1",
            "train.save_steps=100"]
    assert main(["train", LORA, f"train.output_dir={tmp_path}", *args]) == 0
    first = json.loads((tmp_path / "metrics.json").read_text())
    with caplog.at_level("INFO"):
        assert main(["train", LORA, f"train.output_dir={tmp_path}", *args]) == 0
    assert "tokenised cache hit" in caplog.text
    second = json.loads((tmp_path / "metrics.json").read_text())
    assert first["train_loss"] == pytest.approx(second["train_loss"], rel=1e-6)
    assert (first["train_examples"], first["eval_examples"]) == (24, 8)


def test_prepare_can_build_the_cache_ahead_of_training(tmp_path, caplog):
    args = [f"train.output_dir={tmp_path}", "data.max_samples=32", "data.test_size=8"]
    assert main(["prepare", LORA, *args, "data.tokenize=true"]) == 0
    assert [p.name.split("-")[0] for p in (tmp_path / "tokenized").iterdir() if not p.name.startswith(".")] == ["sft"]
    with caplog.at_level("INFO"):
        assert main(["train", LORA, *args, "train.eval_strategy=no", "train.max_steps=1", "train.save_steps=100"]) == 0
    assert "is up to date" in caplog.text and "tokenised cache hit" in caplog.text and "tokenising" not in caplog.text


def test_train_reprepares_when_the_registry_entry_or_input_changes(tmp_path, caplog):
    rows = [{"instruction": f"问题{i}", "output": f"回答{i}。"} for i in range(12)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    reg = tmp_path / "reg.yaml"
    reg.write_text(f"d: {{path: {data}, format: alpaca, license: test}}\n")
    args = [f"train.output_dir={tmp_path / 'run'}", f"data.registries=[{reg}]", "data.datasets=[d]",
            "data.test_size=0", "train.eval_strategy=no", "train.max_steps=1", "train.save_steps=100"]
    assert main(["train", LORA, *args]) == 0
    reg.write_text(f"d: {{path: {data}, format: alpaca, license: test, columns: {{output: output}}}}\n")
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(["train", LORA, *args]) == 0
    assert "is up to date" not in caplog.text  # another registry entry: prepared again
    with open(data, "a", encoding="utf-8") as f:
        f.write(json.dumps({"instruction": "新问题", "output": "新回答。"}, ensure_ascii=False) + "\n")
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(["train", LORA, *args]) == 0
    assert "is up to date" not in caplog.text
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["train_examples"] == 13
