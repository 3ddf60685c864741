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


def test_qlora_trains_on_a_4bit_base_and_exports_de_quantised(tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    out = train(tmp_path / "run", "finetune.method=qlora")
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
