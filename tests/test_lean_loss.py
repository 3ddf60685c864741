"""The chunked loss equals the model's own loss and gradients, without the full logits."""

import pytest
import torch
from conftest import DIALOGUE, ROOT
from safetensors.torch import load_file

from medtune.cli import main
from medtune.data.encode import encode_messages
from medtune.data.templates import load_template
from medtune.train.lean_loss import HiddenHead, chunked_lm_loss, install


@pytest.mark.parametrize("arch,chunk", [("llama", 5), ("gemma3", 5), ("llama", 10**6)])
def test_chunked_loss_and_gradients_equal_the_standard_ones(arch, chunk):
    """Several chunks under checkpointing, and one unchunked pass (what `auto` does at small vocabularies)."""
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

    loss_func, restore = install(model, chunk_size=chunk)
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
    """The model's own loss (null), the default (auto: one unchunked pass here) and 16-token chunks."""
    import json

    cfg = str(ROOT / "configs/tiny/sft_lora.yaml")
    args = ["data.max_samples=24", "data.test_size=8", "train.max_steps=2", "train.save_steps=100",
            "finetune.lora.dropout=0.0", "train.eval_steps=2"]
    runs = {"std": ["finetune.loss_chunk_size=null"], "auto": [], "chunked": ["finetune.loss_chunk_size=16"]}
    for name, extra in runs.items():
        assert main(["train", cfg, f"train.output_dir={tmp_path / name}", *args, *extra]) == 0
    a = load_file(tmp_path / "std/adapter_model.safetensors")
    ma = json.loads((tmp_path / "std/metrics.json").read_text())
    for name in ("auto", "chunked"):
        b = load_file(tmp_path / name / "adapter_model.safetensors")
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6), (name, k)
        mb = json.loads((tmp_path / name / "metrics.json").read_text())
        assert mb["eval_loss_after"] == pytest.approx(ma["eval_loss_after"], rel=1e-5)


@pytest.mark.parametrize("method", ["ptuning", "prefix"])
def test_the_lean_loss_skips_the_virtual_tokens_of_prompt_learning(method):
    """peft's p-tuning prepends virtual tokens to the outputs (not to the labels); prefix tuning does not."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from medtune.model.tiny import tiny_model_path

    torch.manual_seed(0)
    config = PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=32) \
        if method == "ptuning" else PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path("llama")), config)
    ids = torch.randint(5, 100, (2, 12))
    labels = ids.clone()
    labels[:, :5] = -100
    standard = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
    loss_func, restore = install(model, 1000)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert out.logits.shape[1] == 12 + (4 if method == "ptuning" else 0)
    assert loss_func(out, labels).item() == pytest.approx(standard.item(), rel=1e-6)
    restore()


def test_auto_chunk_size_follows_the_vocabulary_and_steps_aside_for_soft_capping():
    from transformers import AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM

    from medtune.model.tiny import tiny_model_path
    from medtune.train.lean_loss import AUTO_LOGITS, chunk_size_for

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path("llama"))
    vocab = model.get_output_embeddings().weight.shape[0]
    assert chunk_size_for(model, "auto") == AUTO_LOGITS // vocab
    assert chunk_size_for(model, 64) == 64 and chunk_size_for(model, None) is None
    capped = Gemma2ForCausalLM(Gemma2Config(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=1, head_dim=8))
    assert chunk_size_for(capped, "auto") is None
    with pytest.raises(Exception, match="final_logit_softcapping"):
        install(capped, 64)


def test_the_shuffling_sampler_is_seeded_per_epoch_and_covers_every_row():
    from medtune.train.common import Permutation

    a, b = Permutation(20000, 42), Permutation(20000, 42)
    first, again = list(a), list(b)
    assert first == again and sorted(first) == list(range(20000))  # same order on every rank, each row once
    second = list(a)  # the next epoch: another order
    assert second != first and sorted(second) == list(range(20000))
    b.set_epoch(1)
    assert list(b) == second  # a resumed run that sets the epoch gets the same order


def test_length_grouped_batches_cover_every_row_and_are_nearly_free_of_padding():
    import random

    from medtune.train.common import LengthGrouped

    rng = random.Random(0)
    lengths = [max(8, int(rng.lognormvariate(4.2, 0.6))) for _ in range(10_003)]  # Huatuo-like: median ~70 tokens
    a, b = LengthGrouped(lengths, 4, seed=42), LengthGrouped(lengths, 4, seed=42)
    first = list(a)
    assert first == list(b) and sorted(first) == list(range(len(lengths)))  # every rank the same; each row once
    batches = [first[i:i + 4] for i in range(0, len(first), 4)]  # how the DataLoader cuts the stream

    def efficiency(bs: list[list[int]]) -> float:
        return sum(lengths[i] for b in bs for i in b) / sum(max(lengths[i] for i in b) * len(b) for b in bs)

    assert efficiency(batches) >= 0.98
    plain = list(range(len(lengths)))
    rng.shuffle(plain)
    assert efficiency([plain[i:i + 4] for i in range(0, len(plain), 4)]) < 0.85
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest batch first: an OOM shows at step 1
    assert len(batches[-1]) == 3  # the incomplete batch is the last one
    second = list(a)  # the next epoch: another order (resume: set_epoch gives it back)
    assert second != first and sorted(second) == list(range(len(lengths)))
    b.set_epoch(1)
    assert list(b) == second


def test_sft_trains_on_length_grouped_batches_by_default(tmp_path):
    import json

    cfg = str(ROOT / "configs/tiny/sft_lora.yaml")
    args = ["data.max_samples=96", "data.test_size=8", "train.num_train_epochs=1", "train.eval_strategy=no",
            "train.per_device_train_batch_size=2", "train.save_strategy=no"]
    assert main(["train", cfg, f"train.output_dir={tmp_path / 'grouped'}", *args]) == 0
    assert main(["train", cfg, f"train.output_dir={tmp_path / 'plain'}", *args, "data.group_by_length=false"]) == 0
    grouped, plain = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("grouped", "plain"))
    assert grouped["train_tokens"] == plain["train_tokens"]  # the same rows, other batches
    assert grouped["padding_efficiency"] > 0.95 > plain["padding_efficiency"]
