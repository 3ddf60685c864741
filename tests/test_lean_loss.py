"""The chunked loss equals the model's own loss and gradients, without the full logits."""

import pytest
import torch
from conftest import DIALOGUE, ROOT
from safetensors.torch import load_file

from medtune.cli import main
from medtune.data.encode import encode_messages
from medtune.data.templates import load_template
from medtune.train.lean_loss import HiddenHead, chunked_lm_loss, install


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_chunked_loss_and_gradients_equal_the_standard_ones(arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medtune.model.tiny import tiny_model_path

    path = tiny_model_path(arch)
    tok = AutoTokenizer.from_pretrained(path)
    enc = [encode_messages(tok, load_template("chatml"), c, 512) for c in (DIALOGUE, DIALOGUE[:2])]
    width = max(len(e["input_ids"]) for e in enc)
    ids = torch.tensor([e["input_ids"] + [tok.pad_token_id] * (width - len(e["input_ids"])) for e in enc])
    mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in enc])
    labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in enc])

    model = AutoModelForCausalLM.from_pretrained(path)
    standard = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    standard.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    loss_func, restore = install(model, chunk_size=5)
    assert isinstance(model.get_output_embeddings(), HiddenHead)
    out = model(input_ids=ids, attention_mask=mask)
    assert out.logits.shape[-1] == model.config.hidden_size  # no vocab-sized tensor was made
    lean = loss_func(out, labels)
    lean.backward()
    assert lean.item() == pytest.approx(standard.item(), rel=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], atol=1e-6), n
    restore()
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear)


def test_normalises_by_the_accumulated_token_count():
    head = torch.nn.Linear(4, 7, bias=False)
    hidden, labels = torch.randn(1, 5, 4), torch.tensor([[-100, 1, 2, -100, 3]])
    assert torch.allclose(chunked_lm_loss(hidden, labels, head, 2, num_items_in_batch=6) * 6,
                          chunked_lm_loss(hidden, labels, head, 2) * 3)


def test_training_with_the_lean_loss_lands_on_the_same_weights(tmp_path):
    cfg = str(ROOT / "configs/tiny/sft_lora.yaml")
    args = ["data.max_samples=24", "data.test_size=8", "train.max_steps=2", "train.save_steps=100",
            "finetune.lora.dropout=0.0", "train.eval_steps=2"]
    assert main(["train", cfg, f"train.output_dir={tmp_path / 'std'}", *args]) == 0
    assert main(["train", cfg, f"train.output_dir={tmp_path / 'lean'}", *args, "finetune.loss_chunk_size=16"]) == 0
    a, b = load_file(tmp_path / "std/adapter_model.safetensors"), load_file(tmp_path / "lean/adapter_model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    import json

    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("std", "lean"))
    assert mb["eval_loss_after"] == pytest.approx(ma["eval_loss_after"], rel=1e-5)


def test_the_shuffling_sampler_is_seeded_per_epoch_and_covers_every_row():
    from medtune.train.common import Permutation

    a, b = Permutation(20000, 42), Permutation(20000, 42)
    first, again = list(a), list(b)
    assert first == again and sorted(first) == list(range(20000))  # same order on every rank, each row once
    second = list(a)  # the next epoch: another order
    assert second != first and sorted(second) == list(range(20000))
    b.set_epoch(1)
    assert list(b) == second  # a resumed run that sets the epoch gets the same order
