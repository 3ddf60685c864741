"""medtune merge: peft's linear / TIES merges scaled toward the base, evaluated, chosen by the stated rule,
exported as an ordinary folder."""

import json

import pytest
import torch
from conftest import ROOT

from medtune.cli import main
from medtune.merge import choose

LORA = str(ROOT / "configs/tiny/sft_lora.yaml")
FAST = ["data.max_samples=32", "data.test_size=0", "train.eval_strategy=no", "train.max_steps=3",
        "train.learning_rate=5e-2", "train.save_steps=1000", "train.logging_steps=1"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    d = tmp_path_factory.mktemp("merge")
    assert main(["train", LORA, f"train.output_dir={d / 'run'}", *FAST]) == 0
    return d


def test_rule_prefers_the_medical_gain_that_keeps_retention():
    rows = [{"name": "base", "scale": 0, "adapter": None, "scores": {"med": 0.10, "gen": 0.50}},
            {"name": "s05", "scale": 0.5, "adapter": "a", "scores": {"med": 0.14, "gen": 0.49}},
            {"name": "s1", "scale": 1.0, "adapter": "b", "scores": {"med": 0.16, "gen": 0.45}}]
    assert choose(rows, "med", "gen", 0.02)["name"] == "s05"  # s1 gains more but loses 5 points of retention
    assert choose(rows, "med", "gen", 0.10)["name"] == "s1"
    worse = [{**r, "scores": {"med": r["scores"]["med"], "gen": 0.4}} if r["name"] != "base" else r for r in rows]
    assert choose(worse, "med", "gen", 0.02)["name"] == "base"


def logits(model_dir=None, adapters=()):
    from medtune.config import ModelConfig
    from medtune.model.load import load_model

    model, tok, _ = load_model(ModelConfig("tiny:llama", "chatml", adapters=list(adapters)))
    ids = tok("头痛怎么办？多休息。", add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_sweep_evaluates_every_scale_and_exports_the_chosen(adapter, method, capsys):
    out = adapter / f"sweep_{method}"
    density = ["merge.density=0.5"] if method == "ties" else []
    assert main(["merge", LORA, f"train.output_dir={adapter / 'run'}", f"merge.method={method}", *density,
                 "merge.sweep=[0, 0.5, 1]", "merge.tasks=[general_zh, cmb_exam_sample]", "merge.medical=cmb_exam_sample",
                 "merge.retention=general_zh", "merge.max_drop=1.0", "merge.limit=8", "eval.modes=[loglik]",
                 f"merge.output_dir={out}"]) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert [c["name"] for c in sweep["candidates"]] == ["base", "scale_0", "scale_0_5", "scale_1"]
    assert all(set(c["scores"]) == {"general_zh", "cmb_exam_sample"} for c in sweep["candidates"])
    # max_drop 1.0 lets every candidate qualify: the best medical score wins (ties: the better retention)
    best = max(sweep["candidates"], key=lambda c: (c["scores"]["cmb_exam_sample"], c["scores"]["general_zh"]))
    assert sweep["chosen"] == best["name"]
    assert "chose " + best["name"] in capsys.readouterr().out
    if best["name"] != "base":
        assert (out / "merged/config.json").is_file() and (out / "merged/COMPLETE").is_file()
    report = (out / "eval/report.md").read_text()
    assert "scale_0_5" in report
    if method == "linear":  # scale 0 is the base, scale 1 the adapter as trained
        base, tuned = logits(), logits(adapters=[adapter / "run"])
        assert torch.allclose(logits(adapters=[out / "candidates/scale-0"]), base, atol=1e-5)
        assert torch.allclose(logits(adapters=[out / "candidates/scale-1"]), tuned, atol=1e-4)
        assert not torch.allclose(base, tuned, atol=1e-3)


def test_bad_merge_configs_are_refused(adapter, capsys):
    base = ["merge", LORA, f"train.output_dir={adapter / 'run'}", "merge.tasks=[general_zh]", "merge.medical=general_zh",
            "merge.retention=general_zh"]
    assert main([*base, "merge.method=slerp"]) == 2
    assert "merge.method 'slerp' is not one of linear, cat, ties" in capsys.readouterr().err
    assert main([*base, "merge.method=ties"]) == 2
    assert "merge.density (the share of each update kept) must be in (0, 1] for ties" in capsys.readouterr().err
    assert main([*base, "merge.sweep=[3]"]) == 2
    assert "each in [0, 2]" in capsys.readouterr().err
    assert main([*base, f"merge.adapters=[{adapter}]"]) == 2
    assert "is not a LoRA adapter folder" in capsys.readouterr().err
