"""The GPU path (Liger Kernel, bf16, flash-attention) behind config switches; on CPU the lean loss."""

import json

import pytest
from conftest import ROOT

from medtune.cli import main
from medtune.config import load_config

LORA = str(ROOT / "configs/tiny/sft_lora.yaml")
QUICK = ["data.max_samples=24", "data.test_size=8", "train.max_steps=2", "train.save_strategy=no",
         "train.eval_strategy=no"]


def test_on_cpu_auto_takes_no_gpu_kernel_and_an_explicit_liger_is_refused_before_any_work(tmp_path, capsys):
    from medtune.model.load import attn_implementation
    from medtune.train.common import kernels, training_arguments

    cfg = load_config(LORA, [f"train.output_dir={tmp_path}"])
    assert kernels(cfg) is None
    args, _ = training_arguments(cfg)
    assert not args.use_liger_kernel and not args.bf16
    import torch

    assert attn_implementation("auto", torch.bfloat16) is None and attn_implementation("eager", None) == "eager"
    assert main(["train", LORA, f"train.output_dir={tmp_path / 'run'}", "finetune.kernels=liger", *QUICK]) == 2
    err = capsys.readouterr().err
    assert "finetune.kernels=liger needs a CUDA GPU" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "data").exists()  # refused before preparing anything


def test_an_attention_kernel_named_in_the_config_reaches_the_model():
    from medtune.model.load import load_model

    cfg = load_config(LORA, ["model.attn_implementation=eager"])
    model, _, _ = load_model(cfg.model)
    assert model.config._attn_implementation == "eager"


@pytest.mark.gpu
def test_liger_and_bf16_are_the_defaults_on_a_gpu(tmp_path):
    pytest.importorskip("liger_kernel")
    from medtune.train.common import kernels, training_arguments

    cfg = load_config(LORA, [f"train.output_dir={tmp_path}"])
    assert kernels(cfg) == "liger"
    args, _ = training_arguments(cfg)
    assert args.use_liger_kernel and args.bf16
    assert main(["train", LORA, f"train.output_dir={tmp_path / 'run'}", *QUICK]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_loss"] > 0
