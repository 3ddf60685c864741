"""Packing isolates samples exactly; gradient accumulation normalises loss per token."""

import pytest
import torch
import torch.nn.functional as F
from conftest import DIALOGUE, ROOT
from safetensors.torch import load_file

from medtune.cli import main
from medtune.data.encode import IGNORE_INDEX, encode_messages
from medtune.data.packing import PackedCollator, pack
from medtune.data.templates import load_template

CONVERSATIONS = [
    DIALOGUE,
    [{"role": "user", "content": "高血压患者能吃党参吗？"}, {"role": "assistant", "content": "可以适量服用，注意监测血压。"}],
    [{"role": "user", "content": "发烧了"}, {"role": "assistant", "content": "多喝水。"}],
]


def _token_losses(logits, labels):
    return F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE_INDEX, reduction="none")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_packed_row_gives_each_sample_its_solo_loss(arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medtune.model.tiny import tiny_model_path

    path = tiny_model_path(arch)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    samples = [encode_messages(tok, load_template("chatml"), c, max_length=512) for c in CONVERSATIONS]
    (row,) = pack(samples, max_length=512)
    batch = PackedCollator(tok.pad_token_id)([row])
    with torch.no_grad():
        packed = model(**batch).logits
        # Negative control: the same row without position resets lets samples see each other.
        leaky = model(input_ids=batch["input_ids"], use_cache=False).logits
    # pack() sorts longest first; walk the row sample by sample.
    start = 0
    for s in sorted(samples, key=lambda x: len(x["input_ids"]), reverse=True):
        n = len(s["input_ids"])
        ids, labels = torch.tensor([s["input_ids"]]), torch.tensor([s["labels"]])
        with torch.no_grad():
            alone = model(input_ids=ids).logits
        assert torch.allclose(packed[:, start:start + n], alone, atol=1e-5)
        assert torch.allclose(_token_losses(packed[:, start:start + n], labels), _token_losses(alone, labels), atol=1e-5)
        if start:
            assert not torch.allclose(leaky[:, start:start + n], alone, atol=1e-3)
        start += n


def test_packed_batch_disables_the_kv_cache():
    # With a cache object present transformers skips packed-sequence detection (see data/packing.py).
    batch = PackedCollator(0)([{"input_ids": [1, 2], "labels": [1, 2], "position_ids": [0, 1]}])
    assert batch["use_cache"] is False


def test_best_fit_decreasing_bins():
    samples = [{"input_ids": [1] * n, "labels": [2] * n} for n in (5, 3, 7, 2, 4)]
    rows = pack(samples, max_length=8)
    assert [r["position_ids"] for r in rows] == [
        [0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 1]]
    # Every sample's first label is masked: no sample learns its neighbour's first token.
    assert rows[1]["labels"] == [-100, 2, 2, 2, 2, -100, 2, 2]


def test_packed_training_reports_padding_efficiency(tmp_path):
    import json

    args = ["data.max_samples=48", "data.test_size=8", "train.max_steps=3", "train.save_steps=100",
            "train.eval_strategy=no"]
    cfg = str(ROOT / "configs/tiny/sft_lora.yaml")
    assert main(["train", cfg, f"train.output_dir={tmp_path / 'padded'}", *args]) == 0
    assert main(["train", cfg, f"train.output_dir={tmp_path / 'packed'}", *args, "data.packing=true",
                 "train.per_device_train_batch_size=1"]) == 0
    padded = json.loads((tmp_path / "padded/metrics.json").read_text())
    packed = json.loads((tmp_path / "packed/metrics.json").read_text())
    assert packed["train_rows"] < packed["train_examples"] == padded["train_rows"] == 40
    assert packed["padding_efficiency"] == 1.0 > padded["padding_efficiency"] > 0


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """8 samples in one batch vs 4 micro-batches of 2: the same step, because loss is averaged over
    all supervised tokens of the accumulated batch, not as a mean of micro-batch means."""
    cfg = str(ROOT / "configs/tiny/sft_lora.yaml")
    common = ["data.max_samples=24", "data.test_size=0", "train.max_steps=1", "train.optim=sgd",
              "train.learning_rate=1.0", "train.lr_scheduler_type=constant", "train.save_steps=100",
              "train.eval_strategy=no", "finetune.lora.dropout=0.0"]
    assert main(["train", cfg, f"train.output_dir={tmp_path / 'big'}", *common,
                 "train.per_device_train_batch_size=8", "train.gradient_accumulation_steps=1"]) == 0
    assert main(["train", cfg, f"train.output_dir={tmp_path / 'accum'}", *common,
                 "train.per_device_train_batch_size=2", "train.gradient_accumulation_steps=4"]) == 0
    big = load_file(tmp_path / "big/adapter_model.safetensors")
    accum = load_file(tmp_path / "accum/adapter_model.safetensors")
    moved = [k for k in big if "lora_B" in k]
    assert moved and all(big[k].abs().sum() > 0 for k in moved)
    for k in big:
        assert torch.allclose(big[k], accum[k], rtol=1e-4, atol=1e-7), k


def test_packing_with_prompt_learning_is_refused(tmp_path, capsys):
    assert main(["train", str(ROOT / "configs/tiny/sft_ptuning.yaml"), f"train.output_dir={tmp_path}",
                 "data.packing=true"]) == 2
    assert "data.packing cannot be combined with finetune.method=ptuning" in capsys.readouterr().err
