"""Each method trains what it should and leaves the rest untouched."""

import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file

from medtune.cli import main
from medtune.config import load_config
from medtune.errors import ConfigError

LORA = str(ROOT / "configs/tiny/sft_lora.yaml")
QUICK = ["data.max_samples=16", "data.test_size=0", "train.eval_strategy=no", "train.max_steps=2",
         "train.save_steps=100", "train.learning_rate=1e-2"]


def train(tmp_path, *overrides):
    assert main(["train", LORA, f"train.output_dir={tmp_path}", *QUICK, *overrides]) == 0
    return tmp_path


def test_freeze_trains_only_the_last_layer(tmp_path):
    from medtune.model.tiny import tiny_model_path

    out = train(tmp_path, "finetune.method=freeze", "finetune.freeze.trainable_layers=1")
    before = load_file(tiny_model_path("llama") / "model.safetensors")
    after = load_file(out / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.layers.1.") for k in changed)
    # Every tensor of layer 1 that receives a gradient moved; layer 0 and the embeddings did not.
    assert {k for k in before if k.startswith("model.layers.1.")} == changed


def test_freeze_named_modules(tmp_path):
    from medtune.model.tiny import tiny_model_path

    out = train(tmp_path, "finetune.method=freeze", "finetune.freeze.trainable_layers=0",
                "finetune.freeze.trainable_modules=[norm]")
    before = load_file(tiny_model_path("llama") / "model.safetensors")
    after = load_file(out / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("norm" in k for k in changed)


def test_freeze_with_too_many_layers_is_explained(tmp_path, capsys):
    assert main(["train", LORA, f"train.output_dir={tmp_path}", *QUICK, "finetune.method=freeze",
                 "finetune.freeze.trainable_layers=5"]) == 2
    assert "trainable_layers=5 but the model has 2 layers" in capsys.readouterr().err


def test_dora_saves_magnitude_vectors(tmp_path):
    out = train(tmp_path, "finetune.method=dora")
    keys = load_file(out / "adapter_model.safetensors").keys()
    assert any("lora_magnitude_vector" in k for k in keys) and any("lora_B" in k for k in keys)


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_on_a_quantised_base_and_exports_de_quantised(tmp_path, bits):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from medtune.model.load import load_model
    from medtune.model.methods import quantization_for

    cfg = load_config(LORA, ["finetune.method=qlora", f"model.quantization_bits={bits}"])
    base, _, _ = load_model(cfg.model, merge_adapters=False, quantization_bits=quantization_for(cfg))
    layer = base.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == ("Linear4bit" if bits == 4 else "Linear8bitLt")
    out = train(tmp_path / "run", "finetune.method=qlora", f"model.quantization_bits={bits}")
    weights = load_file(out / "adapter_model.safetensors")
    assert all(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)
    merged = tmp_path / "merged"
    assert main(["export", LORA, f"train.output_dir={out}", f"export.output_dir={merged}",
                 "finetune.method=qlora"]) == 0
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert model.dtype == torch.float32 and not hasattr(model.config, "quantization_config")


@pytest.mark.parametrize("method, key", [("prefix", "prompt_embeddings"), ("ptuning", "prompt_embeddings")])
def test_prompt_learning_methods_train_and_chat(tmp_path, method, key):
    from medtune.infer.engine import ChatEngine

    out = train(tmp_path, f"finetune.method={method}", "finetune.prefix.num_virtual_tokens=4")
    weights = load_file(out / "adapter_model.safetensors")
    assert any(key in k for k in weights)
    cfg = load_config(LORA, [f"model.adapters=[{out}]", "generation.max_new_tokens=4"])
    assert isinstance(ChatEngine(cfg.model, cfg.generation).chat([{"role": "user", "content": "头痛"}]), str)
    with pytest.raises(ConfigError, match="cannot be merged"):
        from medtune.export import run

        run(load_config(LORA, [f"train.output_dir={out}", f"export.output_dir={tmp_path / 'x'}"]))


def test_stacked_adapters_merge_in_order_and_the_last_keeps_training(tmp_path):
    import json

    args = ["data.test_size=8", "train.eval_strategy=steps", "train.eval_steps=100"]
    first = train(tmp_path / "a", *args)
    second = train(tmp_path / "b", *args, f"model.adapters=[{first}]", "finetune.new_adapter=true")
    third = train(tmp_path / "c", *args, f"model.adapters=[{first}, {second}]")
    m1, m2, m3 = (json.loads((d / "metrics.json").read_text()) for d in (first, second, third))
    # b is a new adapter trained on top of a: it starts where a ended.
    assert m2["eval_loss_before"] == pytest.approx(m1["eval_loss_after"], rel=1e-5)
    # c merges a, keeps training b: it starts exactly where b ended.
    assert m3["eval_loss_before"] == pytest.approx(m2["eval_loss_after"], rel=1e-5)
    assert load_file(third / "adapter_model.safetensors").keys() == load_file(second / "adapter_model.safetensors").keys()
