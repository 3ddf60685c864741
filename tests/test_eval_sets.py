"""The generated evaluation sets (tools/make_eval_sets.py): shipped as generated, big enough to detect
what the recipe must move, and split so that tuning on dev says nothing about test."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from medtune.config import EvalConfig
from medtune.eval.tasks import load_data, load_task

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "src/medtune/eval/samples"


def rows(name):
    return [json.loads(x) for x in (SAMPLES / name).read_text(encoding="utf-8").splitlines()]


def test_shipped_files_are_what_the_generator_writes():
    done = subprocess.run([sys.executable, str(ROOT / "tools/make_eval_sets.py"), "--check"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("kind", ["harmful", "benign"])
def test_requests_split_by_template_and_big_enough(kind):
    dev, test = rows(f"gen_{kind}_dev.jsonl"), rows(f"gen_{kind}_test.jsonl")
    assert len(test) >= 100 and len(dev) >= 100
    assert not {r["meta"]["template"] for r in dev} & {r["meta"]["template"] for r in test}
    assert not {r["question"] for r in dev} & {r["question"] for r in test}
    assert len({r["question"] for r in test}) == len(test) and len({r["id"] for r in dev + test}) == len(dev + test)
    # every category is tested on wordings it was not tuned on
    assert {r["meta"]["category"] for r in test} == {r["meta"]["category"] for r in dev}


def test_general_items_are_right_balanced_and_disjoint():
    dev, test = rows("gen_general_dev.jsonl"), rows("gen_general_test.jsonl")
    assert len(test) >= 500
    assert not {r["question"] for r in dev} & {r["question"] for r in test}
    letters = [r["answer"] for r in test]
    assert max(letters.count(x) for x in "ABCD") - min(letters.count(x) for x in "ABCD") <= 1
    checked = 0
    for r in dev + test:
        assert len(set(r["options"].values())) == 4, r
        if m := re.fullmatch(r"(\d+) ([×+−]) (\d+) 等于多少？", r["question"]):
            a, op, b = int(m[1]), m[2], int(m[3])
            assert int(r["options"][r["answer"]]) == {"×": a * b, "+": a + b, "−": a - b}[op], r
            checked += 1
        if m := re.fullmatch(r"(\d+)千米等于多少米？", r["question"]):
            assert r["options"][r["answer"]] == f"{int(m[1]) * 1000}米"
    assert checked > 400


@pytest.mark.parametrize("name,n", [("harmful_medical_gen_test", 112), ("benign_medical_gen_test", 112),
                                    ("general_gen_test", 560), ("general_gen_dev", 349)])
def test_built_in_tasks_load_every_item(name, n):
    task = load_task(name, ROOT)
    data = load_data(task, EvalConfig(limit=None, permutations=1))
    assert len(data.items) == n and not data.dropped


def test_refusal_training_rows_come_from_dev_only_and_read_as_refusals():
    from medtune.data.datasets import load_registry
    from medtune.data.formats import FORMATS
    from medtune.eval.safety import RefusalRules

    train = rows("../../data/samples/refusal_medical_zh.jsonl")
    dev = {r["question"] for r in rows("gen_harmful_dev.jsonl")}
    test = {r["question"] for r in rows("gen_harmful_test.jsonl")} | {r["question"] for r in rows("gen_benign_test.jsonl")}
    assert len(train) == len(dev) and {r["instruction"] for r in train} == dev and not dev & test
    rules = RefusalRules.load()
    assert all(rules.refused(r["output"]) for r in train)
    spec = load_registry([])["refusal_medical_zh"]
    items = [x for x in FORMATS.get(spec.format)(spec) if x.reason is None]
    assert len(items) == len(train)


def test_benign_training_rows_come_from_dev_only_and_are_answers_not_refusals():
    """The contrast to the refusals: the benign dev look-alikes, answered; a row the refusal judge would
    score as a refusal would teach over-refusal instead of removing it."""
    from medtune.data.datasets import load_registry
    from medtune.data.formats import FORMATS
    from medtune.eval.safety import RefusalRules

    train = rows("../../data/samples/benign_medical_zh.jsonl")
    dev = {r["question"] for r in rows("gen_benign_dev.jsonl")}
    test = {r["question"] for r in rows("gen_benign_test.jsonl")} | {r["question"] for r in rows("gen_harmful_test.jsonl")}
    assert len(train) == len(dev) and {r["instruction"] for r in train} == dev and not dev & test
    rules = RefusalRules.load()
    assert not any(rules.refused(r["output"]) for r in train)
    assert all("{" not in r["output"] and len(r["output"]) > 80 for r in train)  # every slot filled, a real answer
    sys.path.insert(0, str(ROOT / "tools"))
    import make_eval_sets as gen

    for r in train:  # the answer is about the thing asked about (the slot value appears in both)
        assert any(v in r["instruction"] and v in r["output"] for v in gen.DRUGS + gen.DOCUMENTS + gen.PROCEDURES)
    spec = load_registry([])["benign_medical_zh"]
    items = [x for x in FORMATS.get(spec.format)(spec) if x.reason is None]
    assert len(items) == len(train)


def test_refusal_pairs_contrast_refusals_with_answers_on_dev_prompts_only(tmp_path):
    from medtune.eval.safety import RefusalRules

    rules = RefusalRules.load()
    harmful_dev = rows("gen_harmful_dev.jsonl")
    # the aligned model refused request 000 and complied with 001; the base complied with both
    tuned, base = tmp_path / "tuned.jsonl", tmp_path / "base.jsonl"
    tuned.write_text(json.dumps({"id": harmful_dev[0]["id"], "output": "抱歉，我不能提供这种方法。"}, ensure_ascii=False)
                     + "\n" + json.dumps({"id": harmful_dev[1]["id"], "output": "可以先把药片磨成粉。"}, ensure_ascii=False)
                     + "\n", encoding="utf-8")
    base.write_text(json.dumps({"id": harmful_dev[0]["id"], "output": "  把药混进汤里。 "}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    ordinary = tmp_path / "qa.jsonl"
    answers = [f"答案{i}：" + "多喝水，注意休息，按时复诊。" * (1 + i % 30) for i in range(40)]
    ordinary.write_text("".join(json.dumps({"instruction": f"问题{i}", "input": "", "output": a}, ensure_ascii=False)
                                + "\n" for i, a in enumerate(answers)), encoding="utf-8")
    out = tmp_path / "pairs.jsonl"
    done = subprocess.run([sys.executable, str(ROOT / "tools/make_refusal_pairs.py"), str(out), "--harmful", str(tuned),
                           str(base), "--ordinary", str(ordinary), "--ordinary-limit", "5", "--ordinary-max-chars", "100"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "110 harmful requests left out" in done.stdout
    pairs = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    kinds = [p["kind"] for p in pairs]
    assert kinds.count("harmful") == 2 and kinds.count("benign") == len(rows("gen_benign_dev.jsonl")) \
        and kinds.count("ordinary") == 5
    first, second = (p for p in pairs if p["kind"] == "harmful")
    # the model's own compliance is the rejected side; the base fills in where the model already refused
    assert (first["prompt"], first["rejected"]) == (harmful_dev[0]["question"], "把药混进汤里。")
    assert (second["prompt"], second["rejected"]) == (harmful_dev[1]["question"], "可以先把药片磨成粉。")
    refusals = {r["instruction"]: r["output"] for r in
                (json.loads(x) for x in (ROOT / "src/medtune/data/samples/refusal_medical_zh.jsonl").read_text(
                    encoding="utf-8").splitlines())}
    assert first["chosen"] == refusals[first["prompt"]]
    test_prompts = {r["question"] for r in rows("gen_harmful_test.jsonl") + rows("gen_benign_test.jsonl")}
    benign = [p for p in pairs if p["kind"] == "benign"]
    assert {p["prompt"] for p in benign} == {r["question"] for r in rows("gen_benign_dev.jsonl")}
    assert not {p["prompt"] for p in pairs} & test_prompts
    for p in pairs:
        if p["kind"] == "harmful":
            assert rules.refused(p["chosen"]) and not rules.refused(p["rejected"])
        else:  # answers chosen over refusals; a benign pair's refusal names what its question asks about
            assert not rules.refused(p["chosen"]) and rules.refused(p["rejected"])
    sys.path.insert(0, str(ROOT / "tools"))
    import make_eval_sets as sets

    for p in benign:  # the category's refusal, about the drug, document or procedure the question names
        named = [w for w in sets.DRUGS + sets.DOCUMENTS + sets.PROCEDURES if w in p["prompt"]]
        assert p["rejected"] in {r.format(who="他人", what=w) for r in sets.REFUSALS.values() for w in named}
    ordinary_rows = [p for p in pairs if p["kind"] == "ordinary"]
    assert all(20 <= len(p["chosen"]) <= 100 and p["chosen"] in answers for p in ordinary_rows)
    again = tmp_path / "again.jsonl"
    subprocess.run([sys.executable, str(ROOT / "tools/make_refusal_pairs.py"), str(again), "--harmful", str(tuned),
                    str(base), "--ordinary", str(ordinary), "--ordinary-limit", "5", "--ordinary-max-chars", "100"],
                   check=True, capture_output=True)
    assert again.read_text(encoding="utf-8") == out.read_text(encoding="utf-8")  # seeded: the same pairs each run
