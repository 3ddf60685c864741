"""Dataset mixtures with ratios, and per-dataset eval loss."""

import json

import pytest
from conftest import ROOT

from medtune.cli import main
from medtune.data.mixing import mix
from medtune.errors import ConfigError


def rows(name, n):
    return [{"messages": [], "meta": {"dataset": name, "i": i}} for i in range(n)]


def test_ratios_and_default_size_use_no_row_twice():
    mixed, report = mix(rows("general", 100) + rows("medical", 30), {"general": 1, "medical": 3}, None, seed=0)
    # 30 medical rows at a 3/4 share → a mixture of 40: 10 general + 30 medical, none reused.
    assert report == {"general": {"available": 100, "used": 10, "upsampled": 0},
                      "medical": {"available": 30, "used": 30, "upsampled": 0}}
    assert len({(r["meta"]["dataset"], r["meta"]["i"]) for r in mixed}) == 40
    again, _ = mix(rows("general", 100) + rows("medical", 30), {"general": 1, "medical": 3}, None, seed=0)
    assert again == mixed


def test_explicit_size_upsamples_and_says_so():
    _, report = mix(rows("general", 100) + rows("medical", 30), {"general": 1, "medical": 1}, 100, seed=0)
    assert report["medical"] == {"available": 30, "used": 50, "upsampled": 20}


def test_mix_must_name_every_dataset():
    with pytest.raises(ConfigError, match="missing: \\['medical'\\]"):
        mix(rows("general", 5) + rows("medical", 5), {"general": 1}, None, seed=0)


def test_mixed_training_logs_eval_loss_per_dataset(tmp_path):
    registry = tmp_path / "reg.yaml"
    registry.write_text(f"second_copy: {{path: {ROOT}/src/medtune/data/samples/toyhom_neike_sample.csv, "
                        "format: toyhom, encoding: gb18030, license: MIT, source: test}\n")
    assert main(["train", str(ROOT / "configs/tiny/sft_lora.yaml"), f"train.output_dir={tmp_path / 'out'}",
                 f"data.registries=[{registry}]", "data.datasets=[toyhom_neike_sample, second_copy]",
                 "data.mix={toyhom_neike_sample: 1, second_copy: 3}", "data.max_samples=40",
                 "train.max_steps=4", "train.eval_steps=2", "train.save_steps=100"]) == 0
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert {"eval_toyhom_neike_sample_loss_after", "eval_second_copy_loss_after"} <= set(metrics)


def test_prepare_writes_the_mixture(tmp_path):
    from medtune.config import load_config
    from medtune.data.prepare import prepare

    registry = tmp_path / "reg.yaml"
    registry.write_text(f"second_copy: {{path: {ROOT}/src/medtune/data/samples/toyhom_neike_sample.csv, "
                        "format: toyhom, encoding: gb18030, license: MIT, source: test}\n")
    cfg = load_config(str(ROOT / "configs/tiny/sft_lora.yaml"), [
        f"data.output_dir={tmp_path / 'out'}", f"data.registries=[{registry}]", "data.max_samples=null",
        "data.datasets=[toyhom_neike_sample, second_copy]", "data.mix={toyhom_neike_sample: 1, second_copy: 3}"])
    report = prepare(cfg)
    assert report["mixture"]["second_copy"]["used"] == 400 and report["mixture"]["toyhom_neike_sample"]["used"] == 133
    rows = [json.loads(x) for x in (tmp_path / "out/mixture.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 533
