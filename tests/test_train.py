"""Train → save → reload → generate on tiny local models, through the CLI entry point."""

import io
import json
import shutil

import pytest
import torch
import yaml
from conftest import ROOT
from safetensors.torch import load_file

from medtune.cli import main
from medtune.config import load_config
from medtune.errors import ConfigError

LORA = str(ROOT / "configs/tiny/sft_lora.yaml")
FULL = str(ROOT / "configs/tiny/sft_full.yaml")
FAST = ["data.max_samples=48", "data.test_size=8", "train.num_train_epochs=1", "train.logging_steps=1",
        "train.eval_strategy=no", "train.save_steps=2"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    # The shipped smoke config exactly as a user runs it.
    assert main(["train", LORA, f"train.output_dir={out}"]) == 0
    return out


def test_lora_run_leaves_adapter_config_and_plot(lora_run):
    for name in ("adapter_model.safetensors", "adapter_config.json", "config.yaml", "loss.png", "metrics.json",
                 "tokenizer.json", "data/report.json", "checkpoint-20/adapter_model.safetensors"):
        assert (lora_run / name).is_file(), name
    resolved = yaml.safe_load((lora_run / "config.yaml").read_text())
    assert resolved["train"]["output_dir"] == str(lora_run)
    assert resolved["data"]["max_samples"] == 96 and resolved["finetune"]["lora"]["r"] == 8
    # The chat template travels with the tokenizer, so serving renders what training saw.
    tok_cfg = (lora_run / "chat_template.jinja").read_text()
    assert "<|im_start|>" in tok_cfg
    metrics = json.loads((lora_run / "metrics.json").read_text())
    assert metrics["train_examples"] == 80 and metrics["eval_examples"] == 16 and metrics["global_step"] == 20
    assert {"eval_loss_before", "eval_loss_after", "train_loss"} <= set(metrics)


def test_lora_changes_only_adapter_weights(lora_run):
    weights = load_file(lora_run / "adapter_model.safetensors")
    assert weights and all("lora_A" in k or "lora_B" in k for k in weights)
    # lora_B starts at zero: non-zero after training means the adapter learned.
    assert all(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)


def test_method_trainable_sets():
    from medtune.model.load import load_model
    from medtune.model.methods import METHODS

    cfg = load_config(LORA, ["finetune.lora.target_modules=[q_proj, v_proj]"])
    model, _, _ = load_model(cfg.model, merge_adapters=False)
    model = METHODS.get("lora")(model, cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_A" in n or "lora_B" in n) and ("q_proj" in n or "v_proj" in n) for n in trainable)
    # r=8 on q (64→64) and v (64→32: 2 KV heads of 16) in 2 layers.
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * (8 * (64 + 64) + 8 * (64 + 32))
    full_model = METHODS.get("full")(load_model(cfg.model, merge_adapters=False)[0], cfg)
    assert all(p.requires_grad for p in full_model.parameters())


def test_full_sft_changes_every_weight(tmp_path):
    from medtune.model.tiny import tiny_model_path

    assert main(["train", FULL, f"train.output_dir={tmp_path}", "data.max_samples=16", "data.test_size=0",
                 "train.max_steps=2", "train.save_steps=100"]) == 0
    before = load_file(tiny_model_path("qwen2") / "model.safetensors")
    after = load_file(tmp_path / "model.safetensors")
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)


def test_resume_continues_instead_of_restarting(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ["data.max_samples=48", "data.test_size=0", "train.max_steps=4", "train.save_steps=2",
            "train.logging_steps=1", "train.eval_strategy=no"]
    assert main(["train", LORA, f"train.output_dir={straight}", *args]) == 0
    # An interrupted run leaves only its step-2 checkpoint behind.
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    assert main(["train", LORA, f"train.output_dir={resumed}", *args,
                 f"train.resume_from_checkpoint={resumed}/checkpoint-2"]) == 0

    def losses(d):
        state = json.loads((d / "trainer_state.json").read_text())
        return state["global_step"], {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}

    (step_a, loss_a), (step_b, loss_b) = losses(straight), losses(resumed)
    assert step_a == step_b == 4
    # Steps 3 and 4 after resuming match the uninterrupted run: same data order, optimizer and RNG.
    assert loss_b[3] == pytest.approx(loss_a[3], rel=1e-4) and loss_b[4] == pytest.approx(loss_a[4], rel=1e-4)


def test_continue_finetuning_starts_from_the_earlier_adapter(lora_run, tmp_path):
    assert main(["train", LORA, f"train.output_dir={tmp_path}", *FAST, "data.max_samples=96", "data.test_size=16",
                 f"model.adapters=[{lora_run}]"]) == 0
    first = json.loads((lora_run / "metrics.json").read_text())
    second = json.loads((tmp_path / "metrics.json").read_text())
    # Same eval split: the second run starts exactly where the first ended, not from scratch.
    assert second["eval_loss_before"] == pytest.approx(first["eval_loss_after"], rel=1e-5)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 8


def test_reload_and_generate_round_trip(lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from medtune.infer.engine import ChatEngine
    from medtune.model.tiny import tiny_model_path

    cfg = load_config(LORA, [f"model.adapters=[{lora_run}]", "generation.max_new_tokens=12"])
    engine = ChatEngine(cfg.model, cfg.generation)
    ids = torch.tensor([[5, 6, 7, 8]])
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path("llama")), lora_run)
    with torch.no_grad():
        assert torch.allclose(engine.model(ids).logits, peft(ids).logits, atol=1e-5)
    answer = engine.chat([{"role": "user", "content": "头痛怎么办？"}])
    again = engine.chat([{"role": "user", "content": "头痛怎么办？"}])
    assert isinstance(answer, str) and answer == again  # greedy: deterministic
    assert len(engine.tokenizer(answer, add_special_tokens=False)["input_ids"]) <= 12


def test_chat_repl_streams_keeps_history_and_resets(lora_run, capsys):
    from medtune.infer import chat_cli

    cfg = load_config(str(ROOT / "configs/tiny/chat.yaml"), [f"model.adapters=[{lora_run}]",
                                                            "generation.max_new_tokens=4"])
    out = io.StringIO()
    assert chat_cli.run(cfg, io.StringIO("你好\n头痛怎么办\n/reset\n发烧了\n/exit\n"), out) == 0
    text = out.getvalue()
    assert text.count("助手> ") == 3 and "history cleared" in text


def test_adapter_trained_with_another_template_is_refused(lora_run):
    from medtune.infer.engine import ChatEngine

    cfg = load_config(LORA, [f"model.adapters=[{lora_run}]", "model.template=gemma"])
    with pytest.raises(ConfigError, match="trained with chat template 'chatml' but this config uses 'gemma'"):
        ChatEngine(cfg.model, cfg.generation)


def test_compare_writes_the_side_by_side_report(lora_run):
    assert main(["compare", LORA, f"train.output_dir={lora_run}", "generation.max_new_tokens=8"]) == 0
    report = (lora_run / "report.md").read_text()
    assert "| before training | after training | change |" in report
    rows = [line for line in report.splitlines() if line.startswith("| 1 |") or line.startswith("| 3 |")]
    assert len(rows) == 2 and "我奶奶年纪大了" in rows[0]
    assert len(json.loads((lora_run / "report.json").read_text())["rows"]) == 3


def test_eval_strategy_without_eval_split_is_explained(tmp_path, capsys):
    assert main(["train", LORA, f"train.output_dir={tmp_path}", "data.test_size=0"]) == 2
    assert "train.eval_strategy=steps but there is no eval split" in capsys.readouterr().err


def test_unknown_train_key_is_caught_before_training(tmp_path, capsys):
    assert main(["train", LORA, f"train.output_dir={tmp_path}", "train.lerning_rate=1e-3"]) == 2
    assert "Did you mean 'train.learning_rate'?" in capsys.readouterr().err


def test_export_loads_in_plain_transformers_with_identical_logits(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medtune.data.templates import load_template
    from medtune.model.tiny import tiny_model_path

    out = tmp_path / "merged"
    assert main(["export", LORA, f"train.output_dir={lora_run}", f"export.output_dir={out}"]) == 0
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "config.yaml",
                 "README.md"):
        assert (out / name).is_file(), name
    merged = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path("llama")), lora_run)
    ids = torch.tensor([tok("病人：头痛怎么办？")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft(ids).logits, atol=1e-5)
    # Plain transformers renders exactly the training template and stops at its end-of-turn token.
    from conftest import DIALOGUE

    assert tok.apply_chat_template(DIALOGUE, tokenize=False) == load_template("chatml").render(
        DIALOGUE, {"bos_token": "<bos>", "eos_token": "<eos>"})
    assert tok.convert_tokens_to_ids("<|im_end|>") in merged.generation_config.eos_token_id
    card = (out / "README.md").read_text()
    assert "| toyhom_neike_sample | MIT |" in card and "eval_loss_after" in card


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_export_loads_back_with_the_same_tokens_and_logits(arch, tmp_path):
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    assert main(["train", LORA, f"train.output_dir={run}", f"model.name_or_path=tiny:{arch}", *FAST,
                 "train.max_steps=2"]) == 0
    out = tmp_path / "export"
    assert main(["export", LORA, f"train.output_dir={run}", f"model.name_or_path=tiny:{arch}",
                 f"export.output_dir={out}", "export.gguf=true", "export.gguf_dtype=f32"]) == 0
    merged, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    back = AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf")
    back_tok = AutoTokenizer.from_pretrained(out, gguf_file="model.gguf")
    import gguf
    from conftest import DIALOGUE

    # The training template travels inside the GGUF, where llama.cpp / Ollama read it.
    field = gguf.GGUFReader(str(out / "model.gguf")).fields["tokenizer.chat_template"]
    assert field.contents() == tok.chat_template
    text = tok.apply_chat_template(DIALOGUE, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert back_tok(text, add_special_tokens=False)["input_ids"] == ids
    with torch.no_grad():
        assert torch.allclose(merged(torch.tensor([ids])).logits, back(torch.tensor([ids])).logits, atol=1e-5)


def test_gguf_export_of_gemma_without_a_gguf_base_is_explained(tmp_path, capsys):
    pytest.importorskip("gguf")
    run = tmp_path / "run"
    assert main(["train", LORA, f"train.output_dir={run}", "model.name_or_path=tiny:gemma3", *FAST,
                 "train.max_steps=1", "model.template=gemma"]) == 0
    assert main(["export", LORA, f"train.output_dir={run}", "model.name_or_path=tiny:gemma3", "model.template=gemma",
                 f"export.output_dir={tmp_path / 'x'}", "export.gguf=true"]) == 2
    assert "GGUF export of Gemma needs a base loaded from GGUF" in capsys.readouterr().err
