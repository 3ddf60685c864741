"""Two CPU processes (gloo) of data parallel training land where one process does.

Launched with torchrun, no launcher of ours: each rank runs `python -m medtune train`. With a
per-device batch of 4 on 2 ranks against 8 on one, accelerate shards the same global batches, and
loss is averaged over all supervised tokens across ranks, so the steps are identical.
"""

import json
import os
import subprocess
import sys

import torch
from conftest import ROOT
from safetensors.torch import load_file

from medtune.cli import main

CFG = str(ROOT / "configs/tiny/sft_lora.yaml")
ARGS = ["data.max_samples=48", "data.test_size=0", "train.eval_strategy=no", "train.max_steps=3",
        "train.save_steps=100", "train.logging_steps=1", "train.optim=sgd", "train.learning_rate=1.0",
        "train.lr_scheduler_type=constant", "finetune.lora.dropout=0.0"]


def _losses(out):
    state = json.loads((out / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def test_two_process_gloo_matches_single_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", CFG, f"train.output_dir={one}", *ARGS, "train.per_device_train_batch_size=8"]) == 0
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         "-m", "medtune", "train", CFG, f"train.output_dir={two}", *ARGS, "train.per_device_train_batch_size=4"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count('"global_step": 3') == 2  # both ranks trained the same 3 global steps
    a, b = load_file(one / "adapter_model.safetensors"), load_file(two / "adapter_model.safetensors")
    assert any(a[k].abs().max() > 1e-3 for k in a if "lora_B" in k)  # the step moved the weights
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert all(abs(x - y) < 1e-5 for x, y in zip(_losses(one), _losses(two), strict=True))
    # Tokenised once, by rank 0; rank 1 read the same cache folder.
    caches = [p.name for p in (two / "tokenized").iterdir() if not p.name.startswith(".")]
    assert len(caches) == 1 and caches[0].startswith("sft-"), caches
    assert run.stderr.count("tokenising 1 file(s)") == 1 and run.stderr.count("tokenised cache hit") == 1
