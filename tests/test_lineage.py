"""Continue-finetuning, stacking and export apply every adapter's update exactly once (lineage.json)."""

import json

import pytest
import torch
from conftest import ROOT

from medtune.cli import main
from medtune.config import load_config

LORA = str(ROOT / "configs/tiny/sft_lora.yaml")
QUICK = ["data.max_samples=16", "data.test_size=0", "train.eval_strategy=no", "train.max_steps=2",
         "train.save_steps=100", "train.learning_rate=5e-2"]


def _train(out, *overrides):
    assert main(["train", LORA, f"train.output_dir={out}", *QUICK, *overrides]) == 0
    return out


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _merged(adapters):
    """Base + adapters merged by peft directly, applied exactly as listed (no lineage)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from medtune.model.tiny import tiny_model_path

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path("llama"), dtype=torch.float32)
    for a in adapters:
        model = PeftModel.from_pretrained(model, str(a)).merge_and_unload()
    return _weights(model)


def _distance(a, b):
    return sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """run1 on Toyhom; run2 continues run1 on a second dataset with another licence."""
    d = tmp_path_factory.mktemp("chain")
    rows = [{"instruction": f"问题{i}：头痛怎么办？", "output": "多休息，必要时就医。"} for i in range(16)]
    (d / "qa.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (d / "reg.yaml").write_text(f"qa_nc: {{path: {d / 'qa.jsonl'}, format: alpaca, license: CC-BY-NC-4.0, "
                                "source: written for this test}\n", encoding="utf-8")
    run1 = _train(d / "run1")
    run2 = _train(d / "run2", f"model.adapters=[{run1}]", f"data.registries=[{d / 'reg.yaml'}]", "data.datasets=[qa_nc]")
    return d, run1, run2


def test_continue_finetune_export_applies_the_chain_once(chain):
    d, run1, run2 = chain
    lineage = json.loads((run2 / "lineage.json").read_text())
    assert lineage["absorbs"] == [str(run1.resolve())] and lineage["requires"] == []
    # export with the run's own config (model.adapters=[run1], output run2): before the fix it merged [run1, run2].
    assert main(["export", LORA, f"train.output_dir={run2}", f"model.adapters=[{run1}]",
                 f"export.output_dir={d / 'merged'}"]) == 0
    from transformers import AutoModelForCausalLM

    exported = _weights(AutoModelForCausalLM.from_pretrained(d / "merged", dtype=torch.float32))
    once, twice, base = _merged([run2]), _merged([run1, run2]), _merged([])
    assert _distance(exported, once) < 1e-5
    # The old double merge differs from the right model by exactly run1's update.
    assert _distance(twice, once) == pytest.approx(_distance(_merged([run1]), base), rel=1e-3)
    assert _distance(twice, once) > 1e-3
    # The card names both runs' datasets and licences.
    card = (d / "merged" / "README.md").read_text()
    assert "toyhom_neike_sample" in card and "MIT" in card and "qa_nc" in card and "CC-BY-NC-4.0" in card
    # The run folder's own card is medtune's, not peft's empty template.
    run_card = (run2 / "README.md").read_text()
    assert "trained by medtune" in run_card and "CC-BY-NC-4.0" in run_card and "[More Information Needed]" not in run_card


def test_eval_chat_and_listing_both_runs_resolve_to_the_same_chain(chain):
    from medtune.eval.run import eval_models
    from medtune.model.lineage import resolve_chain
    from medtune.model.load import load_model

    d, run1, run2 = chain
    cfg = load_config(LORA, [f"train.output_dir={run2}", f"model.adapters=[{run1}]"])
    assert eval_models(cfg)[1].adapters == [str(run2.resolve())]
    assert resolve_chain("tiny:llama", [str(run1), str(run2)]) == [str(run2.resolve())]
    # chat / serve load through load_model: [run1, run2] gives the same weights as run2 alone.
    model, _, _ = load_model(load_config(LORA, [f"model.adapters=[{run1}, {run2}]"]).model)
    assert _distance(_weights(model), _merged([run2])) < 1e-5


def test_continue_in_place_then_export(tmp_path):
    run = _train(tmp_path / "x")
    first = _merged([run])
    _train(run, f"model.adapters=[{run}]")  # model.adapters=[X] and train.output_dir=X
    assert main(["export", LORA, f"train.output_dir={run}", f"model.adapters=[{run}]",
                 f"export.output_dir={tmp_path / 'm'}"]) == 0
    from transformers import AutoModelForCausalLM

    exported = _weights(AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32))
    assert _distance(exported, _merged([run])) < 1e-5 and _distance(exported, first) > 1e-4


def test_stacked_adapter_brings_what_it_requires(chain, tmp_path):
    from medtune.model.lineage import resolve_chain

    _, run1, _ = chain
    run3 = _train(tmp_path / "run3", f"model.adapters=[{run1}]", "finetune.new_adapter=true")
    assert json.loads((run3 / "lineage.json").read_text())["requires"] == [str(run1.resolve())]
    # Naming only the last adapter of a stack is enough; naming both is the same.
    assert resolve_chain("tiny:llama", [str(run3)]) == resolve_chain("tiny:llama", [str(run1), str(run3)]) \
        == [str(run1.resolve()), str(run3.resolve())]


def test_full_run_on_top_of_an_adapter_is_not_merged_again(chain, tmp_path):
    from medtune.model.lineage import resolve_chain

    _, run1, _ = chain
    full = _train(tmp_path / "full", f"model.adapters=[{run1}]", "finetune.method=full")
    assert resolve_chain(str(full), [str(run1)]) == []


@pytest.mark.parametrize("method", ["prefix", "ptuning"])
def test_prompt_learning_merges_earlier_adapters_first(chain, tmp_path, method, capsys):
    """prefix / ptuning used to ignore model.adapters: the earlier LoRA must be inside the base they train on."""
    from medtune.model.lineage import resolve_chain

    _, run1, _ = chain
    out = _train(tmp_path / method, f"model.adapters=[{run1}]", f"finetune.method={method}",
                 "finetune.prefix.num_virtual_tokens=4")
    assert json.loads((out / "lineage.json").read_text())["requires"] == [str(run1.resolve())]
    assert resolve_chain("tiny:llama", [str(out)]) == [str(run1.resolve()), str(out.resolve())]
    # A LoRA cannot continue a prompt adapter (nor merge it): one clear message, exit 2.
    assert main(["train", LORA, f"train.output_dir={tmp_path / 'bad'}", *QUICK, f"model.adapters=[{out}]"]) == 2
    assert "cannot continue" in capsys.readouterr().err
