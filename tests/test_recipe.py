"""The default medical recipe (configs/recipes/medical_sft.yaml) prepares the mixture it promises:
every ingredient at its share, the refusal rows from the dev templates only, nothing from the eval sets."""

import json
from pathlib import Path

import pytest
from conftest import shared

from medtune.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs/recipes/medical_sft.yaml"


def test_recipe_prepares_its_mixture(tmp_path):
    shared("medicalgpt/sft/sharegpt_zh_1K_format.jsonl")
    assert main(["prepare", str(RECIPE), f"train.output_dir={tmp_path}/run"]) == 0
    report = json.loads((tmp_path / "run/data/report.json").read_text(encoding="utf-8"))
    used = {k: v["used"] for k, v in report["mixture"].items()}
    assert used == {"huatuo_llama_data": 504, "cmtmedqa": 252, "toyhom_neike": 336, "disc_med_sft": 84,
                    "sharegpt_zh_general": 336, "refusal_medical_zh": 168}
    train = [json.loads(x) for x in (tmp_path / "run/data/mixture.jsonl").read_text(encoding="utf-8").splitlines()]
    asked = {m["content"] for r in train for m in r["messages"] if m["role"] == "user"}
    for name in ("gen_harmful_test", "gen_benign_test", "huatuo26m_test_sample"):
        held_out = {json.loads(x)["question"] for x in
                    (ROOT / f"src/medtune/eval/samples/{name}.jsonl").read_text(encoding="utf-8").splitlines()}
        assert not held_out & asked, name
    dev = {json.loads(x)["question"] for x in
           (ROOT / "src/medtune/eval/samples/gen_harmful_dev.jsonl").read_text(encoding="utf-8").splitlines()}
    assert len(dev & asked) >= 100


@pytest.mark.parametrize("override", [[], ["train.max_steps=60", "data.mix_size=240"]])
def test_recipe_validates(override):
    shared("huatuo_llama_med_chinese/llama_data.json")  # the recipe names the shared datasets
    assert main(["validate", str(RECIPE), *override]) == 0
