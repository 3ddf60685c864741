"""Parity with lm-evaluation-harness: medtune exports its multiple-choice task (`eval.export:
[lm_eval]`), lm-eval scores the exported YAML on the same tiny model, and the two agree item by
item: the same predicted letter for every question and the same log-probability gaps between the
letters (lm-eval adds the prompt's trailing newline to every continuation; the gaps cancel it)."""

import json

import pytest
import yaml
from conftest import ROOT

from medtune.cli import main
from medtune.model.tiny import tiny_model_path

pytest.importorskip("lm_eval")


def test_lm_eval_scores_the_exported_task_like_medtune_item_by_item(tmp_path):
    cfg = {"model": {"name_or_path": "tiny:llama", "template": "chatml"},
           "eval": {"tasks": ["cmb_exam_sample"], "modes": ["loglik"], "export": ["lm_eval"], "bootstrap": 100,
                    "output_dir": str(tmp_path / "out")}}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["eval", str(path)]) == 0
    out = tmp_path / "out"
    ours = {r["id"]: r for r in map(json.loads, (out / "predictions/base/cmb_exam_sample.loglik.jsonl")
                                    .read_text(encoding="utf-8").splitlines())}
    exported = (out / "lm_eval/cmb_exam_sample.yaml").read_text(encoding="utf-8")
    assert "task: medtune_cmb_exam_sample" in exported and "doc_to_text: !function cmb_exam_sample_prompt" in exported

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(tiny_model_path("llama")), batch_size=4, device="cpu")
    res = simple_evaluate(model=lm, tasks=["medtune_cmb_exam_sample"], log_samples=True,
                          task_manager=TaskManager(include_path=str(out / "lm_eval")))
    samples = res["samples"]["medtune_cmb_exam_sample"]
    assert len(samples) == len(ours) > 0
    for s in samples:
        mine = ours[s["doc"]["id"]]
        letters = s["doc"]["letters"]
        theirs = [float(r[0]) for r in s["filtered_resps"]]
        assert letters[max(range(len(theirs)), key=theirs.__getitem__)] == mine["pred"], s["doc"]["id"]
        for k, letter in enumerate(letters):
            assert theirs[k] - theirs[0] == pytest.approx(mine["logprobs"][letter] - mine["logprobs"][letters[0]],
                                                          abs=1e-4)
    acc = sum(r["correct"] for r in ours.values()) / len(ours)
    assert res["results"]["medtune_cmb_exam_sample"]["acc,none"] == pytest.approx(acc)
    assert ROOT  # the task file is the built-in one
