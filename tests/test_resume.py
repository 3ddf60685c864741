"""Verified resume: SIGKILL mid-run, resume, and land exactly where an uninterrupted run lands."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file

from medtune.cli import main

CFG = str(ROOT / "configs/tiny/sft_lora.yaml")
ARGS = ["data.max_samples=64", "data.test_size=0", "train.eval_strategy=no", "train.max_steps=40",
        "train.save_steps=4", "train.save_total_limit=2", "train.logging_steps=1",
        "train.per_device_train_batch_size=4", "train.num_train_epochs=3"]


def _losses(out):
    state = json.loads((out / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(["train", CFG, f"train.output_dir={straight}", *ARGS]) == 0

    proc = subprocess.Popen([sys.executable, "-m", "medtune", "train", CFG, f"train.output_dir={killed}", *ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not (killed / "checkpoint-8" / "COMPLETE").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "adapter_model.safetensors").exists()  # it really died mid-run

    # A save cut short by the kill: a newer checkpoint folder without its commit marker.
    torn = killed / "checkpoint-36"
    torn.mkdir()
    (torn / "adapter_model.safetensors").write_bytes(b"\x00" * 10)

    assert main(["train", CFG, f"train.output_dir={killed}", *ARGS, "train.resume_from_checkpoint=true"]) == 0
    assert (killed / "incomplete-checkpoint-36").is_dir()

    a = load_file(straight / "adapter_model.safetensors")
    b = load_file(killed / "adapter_model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    la, lb = _losses(straight), _losses(killed)
    assert set(la) == set(lb) == set(range(1, 41))
    assert all(lb[s] == pytest.approx(la[s], rel=1e-5) for s in la)


def test_resume_refuses_an_incomplete_checkpoint(tmp_path, capsys):
    torn = tmp_path / "checkpoint-4"
    torn.mkdir(parents=True)
    assert main(["train", CFG, f"train.output_dir={tmp_path}", *ARGS, f"train.resume_from_checkpoint={torn}"]) == 2
    assert "is incomplete (no COMPLETE marker)" in capsys.readouterr().err
