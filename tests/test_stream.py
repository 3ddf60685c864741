"""Streaming pretraining: blocks straight from text shards, equal to the cached blocks, resumed at the exact block."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, shared
from safetensors.torch import load_file

from medtune.cli import main
from medtune.data.datasets import DatasetSpec

pytest.importorskip("transformers")
CFG = str(ROOT / "configs/tiny/pt_lora.yaml")


def texts(n=60):
    with shared("huatuo_llama_med_chinese/llama_data.json").open(encoding="utf-8") as f:
        return [json.loads(next(f))["output"] for _ in range(n)]


def shards(tmp_path, docs):
    """Three shards of one corpus: plain JSON Lines, gzipped JSON Lines, and a .txt file (one document a line)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    a, b, c = docs[:20], docs[20:40], docs[40:]
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in a), encoding="utf-8")
    with gzip.open(folder / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in b)
    (folder / "c.txt").write_text("\n".join(t.replace("\n", " ") for t in c) + "\n", encoding="utf-8")
    return folder


def block_list(stream, n=None):
    out = []
    for b in stream:
        out.append({k: b[k] for k in ("input_ids", "labels", "position_ids")})
        if n is not None and len(out) == n:
            break
    return out


def test_streamed_blocks_equal_the_cached_blocks(tmp_path, tiny_tokenizer):
    from medtune.data.stream import TextStream
    from medtune.data.tokenized import documents
    from medtune.data.views import Blocks

    docs = texts()
    folder = shards(tmp_path, docs)
    spec = DatasetSpec("corpus", str(folder), "text")
    streamed = block_list(TextStream([spec], tiny_tokenizer, 48, [], epochs=1))
    prepared = tmp_path / "prepared.jsonl"  # what `prepare` writes for the same documents
    prepared.write_text("".join(json.dumps({"text": t if i < 40 else t.replace("\n", " ")}, ensure_ascii=False) + "\n"
                                for i, t in enumerate(docs)), encoding="utf-8")
    from medtune.data.templates import load_template

    cached = documents([str(prepared)], tiny_tokenizer, load_template("chatml"), tmp_path / "cache", 1)
    blocks = Blocks(cached, range(len(docs)), 48)
    assert len(streamed) == len(blocks) > 40
    for i, b in enumerate(streamed):
        assert b == {k: blocks[i][k] for k in ("input_ids", "labels", "position_ids")}, i


def test_a_stream_restarted_at_a_saved_position_continues_with_the_same_blocks(tmp_path, tiny_tokenizer):
    from medtune.data.stream import TextStream

    folder = shards(tmp_path, texts())
    spec = DatasetSpec("corpus", str(folder), "text")
    first = TextStream([spec], tiny_tokenizer, 40, [{"length": {"min_answer": 30}}])
    straight = block_list(first, 400)  # more than one epoch: the stream wraps around
    assert first.position(399).epoch >= 2
    for k in (1, 37, 150, 230, 399):  # mid-document, across shards and epochs
        pos = first.position(k)
        again = block_list(TextStream([spec], tiny_tokenizer, 40, [{"length": {"min_answer": 30}}], start=pos),
                           len(straight) - k)
        assert again == straight[k:], k
    assert any(first.position(k).offset > 0 for k in range(400))  # some blocks start inside a document
    assert first.position(399).dropped  # the length step dropped short documents, counted by reason


ARGS = ["data.streaming=true", "data.test_size=0", "train.eval_strategy=no", "train.max_steps=12",
        "train.save_steps=4", "train.logging_steps=1", "train.per_device_train_batch_size=2", "data.max_length=32",
        "data.max_samples=null"]


def _losses(out):
    state = json.loads((out / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def test_streaming_pt_killed_and_resumed_lands_where_the_straight_run_lands(tmp_path):
    folder = shards(tmp_path, texts())
    reg = tmp_path / "reg.yaml"
    reg.write_text(f"corpus: {{path: {folder}, format: text, license: research only, source: Huatuo}}\n")
    args = [*ARGS, f"data.registries=[{reg}]", "data.datasets=[corpus]"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(["train", CFG, f"train.output_dir={straight}", *args]) == 0
    assert not (straight / "data").exists()  # nothing was prepared or cached
    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["streaming"] and metrics["global_step"] == 12

    proc = subprocess.Popen([sys.executable, "-m", "medtune", "train", CFG, f"train.output_dir={killed}", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 180
    while not (killed / "checkpoint-4" / "COMPLETE").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    state = json.loads((killed / "checkpoint-4" / "medtune_stream.json").read_text())
    assert state["block"] == 4 * 2  # 4 steps of 2 blocks consumed
    assert main(["train", CFG, f"train.output_dir={killed}", *args, "train.resume_from_checkpoint=true"]) == 0
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(killed / "adapter_model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    la, lb = _losses(straight), _losses(killed)
    assert set(la) == set(lb) == set(range(1, 13))
    assert all(lb[s] == pytest.approx(la[s], rel=1e-5) for s in la)


def test_streaming_needs_max_steps_and_text(tmp_path, capsys):
    folder = shards(tmp_path, texts(45))
    reg = tmp_path / "reg.yaml"
    reg.write_text(f"corpus: {{path: {folder}, format: text, license: x, source: y}}\n"
                   f"qa: {{path: {folder / 'a.jsonl'}, format: alpaca, license: x, source: y}}\n")
    base = ["train", CFG, f"train.output_dir={tmp_path / 'o'}", "data.streaming=true", f"data.registries=[{reg}]",
            "train.eval_strategy=no", "data.test_size=0"]
    assert main([*base, "data.datasets=[corpus]"]) == 2
    assert "set train.max_steps" in capsys.readouterr().err
    assert main([*base, "data.datasets=[corpus]", "train.max_steps=2", "data.test_size=0.1"]) == 2
    assert "must be a document count" in capsys.readouterr().err
    assert main([*base, "data.datasets=[qa]", "train.max_steps=2"]) == 2
    assert "Stage pt trains on format `text`, but dataset 'qa' has format 'alpaca'" in capsys.readouterr().err
    assert main([*base, "data.datasets=[corpus]", "train.max_steps=2", "finetune.stage=sft"]) == 2
    assert "data.streaming is for finetune.stage pt" in capsys.readouterr().err
