"""Every shipped tiny stage config trains offline in seconds and changes what it should."""

import json

import pytest
from conftest import ROOT
from safetensors.torch import load_file

from medtune.cli import main

TINY = ROOT / "configs" / "tiny"


@pytest.mark.parametrize("stage", ["dpo", "orpo", "simpo", "kto"])
def test_alignment_stage_trains_an_adapter(stage, tmp_path):
    assert main(["train", str(TINY / f"{stage}_lora.yaml"), f"train.output_dir={tmp_path}"]) == 0
    weights = load_file(tmp_path / "adapter_model.safetensors")
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and all(w.abs().sum() > 0 for w in lora_b)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["global_step"] == 6 and "eval_loss_after" in metrics
    assert metrics["train_pairs"] == 48 - 16 if stage != "kto" else metrics["train_pairs"] == 2 * (48 - 16)


def test_reward_model_learns_its_pairs_and_trains_its_score_head(tmp_path):
    assert main(["train", str(TINY / "rm_lora.yaml"), f"train.output_dir={tmp_path / 'full'}", "data.max_samples=16",
                 "data.test_size=0", "train.eval_strategy=no", "train.num_train_epochs=12",
                 "train.learning_rate=3e-3", "finetune.method=full", "train.save_steps=1000"]) == 0
    state = json.loads((tmp_path / "full/trainer_state.json").read_text())
    accuracy = [h["accuracy"] for h in state["log_history"] if "accuracy" in h]
    assert accuracy[0] < 0.9 and accuracy[-1] == 1.0
    # LoRA reward model: the new score head is saved with the adapter (it must train from scratch).
    assert main(["train", str(TINY / "rm_lora.yaml"), f"train.output_dir={tmp_path / 'lora'}"]) == 0
    keys = load_file(tmp_path / "lora/adapter_model.safetensors").keys()
    assert any("score" in k for k in keys) and any("lora_B" in k for k in keys)
    metrics = json.loads((tmp_path / "lora/metrics.json").read_text())
    assert {"eval_accuracy_before", "eval_accuracy_after"} <= set(metrics)


def test_pretraining_blocks_keep_documents_apart(tmp_path):
    from transformers import AutoTokenizer

    from medtune.data.templates import load_template
    from medtune.data.tokenized import documents
    from medtune.data.views import Blocks
    from medtune.model.tiny import tiny_model_path

    tok = AutoTokenizer.from_pretrained(tiny_model_path("llama"))
    docs = [{"text": "发热是常见症状。"}, {"text": "高血压患者应低盐饮食，规律服药。"}, {"text": "多喝水"}]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    cached = documents([str(tmp_path / "docs.jsonl")], tok, load_template("chatml"), tmp_path / "cache", workers=1)
    ids = [tok(d["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for d in docs]
    size = len(ids[0]) + 3
    rows = [r for r in Blocks(cached, range(3), size)]
    stream = [t for doc in ids for t in doc]
    assert [t for r in rows for t in r["input_ids"]] == stream  # nothing lost, EOS after every document
    assert all(len(r["input_ids"]) == size for r in rows[:-1])
    # Positions restart where a document (or its continuation into the next block) starts.
    first, second = rows[0]["position_ids"], rows[1]["position_ids"]
    assert first == list(range(len(ids[0]))) + [0, 1, 2]
    assert second[0] == 0 and rows[1]["labels"][0] == -100  # the continuation is its own piece


def test_pt_stage_trains(tmp_path):
    assert main(["train", str(TINY / "pt_lora.yaml"), f"train.output_dir={tmp_path}"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train_blocks"] > 0 and metrics["eval_loss_after"] < metrics["eval_loss_before"]
    assert metrics["padding_efficiency"] > 0.9  # fixed blocks: only the last one is short


def test_stage_rejects_the_wrong_data_shape(tmp_path, capsys):
    assert main(["train", str(TINY / "dpo_lora.yaml"), f"train.output_dir={tmp_path}",
                 "data.datasets=[toyhom_neike_sample]"]) == 2
    assert "Stage dpo trains on format `pairwise`" in capsys.readouterr().err
    assert main(["train", str(TINY / "pt_lora.yaml"), f"train.output_dir={tmp_path}",
                 "data.datasets=[toyhom_pairs]"]) == 2
    assert "Stage pt trains on format `text`" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # refused before any data was prepared


def test_grpo_optimises_against_the_trained_reward_model(tmp_path, capsys):
    assert main(["train", str(TINY / "grpo_lora.yaml"), f"train.output_dir={tmp_path / 'x'}",
                 "finetune.reward_model=null"]) == 2
    assert "Stage grpo needs finetune.reward_model" in capsys.readouterr().err
    assert main(["train", str(TINY / "rm_lora.yaml"), f"train.output_dir={tmp_path / 'rm'}"]) == 0
    assert main(["train", str(TINY / "grpo_lora.yaml"), f"train.output_dir={tmp_path / 'grpo'}",
                 f"finetune.reward_model={tmp_path / 'rm'}"]) == 0
    weights = load_file(tmp_path / "grpo/adapter_model.safetensors")
    assert all(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)
    state = json.loads((tmp_path / "grpo/trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "reward" in h]
    # Every step scored 4 sampled answers per prompt with the reward model and moved away from the start.
    assert len(logged) == 4 and all(h["reward_std"] > 0 for h in logged) and logged[-1]["kl"] > 0
    metrics = json.loads((tmp_path / "grpo/metrics.json").read_text())
    assert {"reward_first", "reward_last"} <= set(metrics)


SHIPPED = sorted(p.name for p in TINY.glob("*.yaml") if p.name not in ("chat.yaml", "grpo_lora.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_tiny_config_trains_as_is(name, tmp_path):
    """What a user runs first: each config in configs/tiny, untouched but for where it writes."""
    if "qlora" in name:
        pytest.importorskip("bitsandbytes")
    assert main(["train", str(TINY / name), f"train.output_dir={tmp_path}"]) == 0
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "loss.png").is_file()
    assert (tmp_path / "adapter_model.safetensors").is_file() or (tmp_path / "model.safetensors").is_file()


@pytest.mark.parametrize("stage", ["dpo", "orpo", "simpo", "rm"])
def test_preference_stages_group_pairs_by_length(stage, tmp_path, monkeypatch):
    """Length grouping reaches the TRL stages: the sampler is the length-grouped one, and the lengths it
    groups by are each row's longest tokenised sequence as the collator will pad it."""
    from medtune.train import preference
    from medtune.train.samplers import LengthGrouped

    seen = {}

    def record(cfg, trainer, tokenizer, r, metrics, has_eval):
        seen["trainer"] = trainer
        return {}

    monkeypatch.setattr(preference, "train_and_save", record)
    config = TINY / ("rm_lora.yaml" if stage == "rm" else f"{stage}_lora.yaml")
    assert main(["train", str(config), f"train.output_dir={tmp_path}"]) == 0
    trainer = seen["trainer"]
    assert isinstance(trainer._get_train_sampler(), LengthGrouped)
    rows = trainer.train_dataset
    if "prompt_ids" in rows.column_names:
        want = [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in rows]
    else:
        keys = [k for k in ("chosen_input_ids", "rejected_input_ids", "chosen_ids", "rejected_ids") if k in rows.column_names]
        want = [max(len(r[k]) for k in keys) for r in rows]
    assert list(trainer.lengths) == want and len(set(want)) > 1


@pytest.mark.parametrize("stage", ["orpo", "simpo"])
def test_fused_pair_forward_gives_the_plain_loss_and_gradients(stage, tmp_path, monkeypatch):
    """ORPO and SimPO train through TRL's fused LM head (no [tokens × vocab] logits): on the same batch, the
    loss, each metric the losses read and every LoRA gradient equal TRL's own full-logits forward's."""
    import torch

    from medtune.train import preference

    seen = {}
    monkeypatch.setattr(preference, "train_and_save", lambda cfg, trainer, *a: seen.update(trainer=trainer) or {})
    assert main(["train", str(TINY / f"{stage}_lora.yaml"), f"train.output_dir={tmp_path}"]) == 0
    trainer = seen["trainer"]
    assert type(trainer).__name__ == "MedtuneTrainer" and "Fused" in type(trainer).__mro__[1].__name__
    plain_cls = next(c for c in type(trainer).__mro__ if c.__module__.startswith("trl."))
    model = trainer.model
    model.eval()  # no LoRA dropout: both passes see the same function
    batch = next(iter(trainer.get_train_dataloader()))
    runs = {}
    for name in ("plain", "fused"):
        if name == "plain":
            monkeypatch.setattr(trainer, "concatenated_forward", lambda m, b: plain_cls.concatenated_forward(trainer, m, b))
        else:
            monkeypatch.undo()
        model.zero_grad()
        loss, metrics = trainer.get_batch_loss_metrics(model, batch, train_eval="train")
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
        runs[name] = (loss.detach(), metrics, grads)
    (pl, pm, pg), (fl, fm, fg) = runs["plain"], runs["fused"]
    assert torch.allclose(pl, fl, rtol=1e-5, atol=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "nll_loss"):
        assert pm[key] == pytest.approx(fm[key], rel=1e-5, abs=1e-6), key
    assert pg.keys() == fg.keys() and pg
    assert all(torch.allclose(pg[k], fg[k], rtol=1e-4, atol=1e-6) for k in pg)
    assert any(pg[k].abs().sum() > 0 for k in pg)  # the comparison is not between zeros
