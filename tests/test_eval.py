"""medtune eval: strict extraction, metrics, loaders, fidelity (gold = 100%, all-A = exact fraction),
log-likelihood scoring, safety, retention, and the full CLI run on the shared dev samples."""

import json

import pytest
import yaml
from conftest import FIXTURES, QA, ROOT, shared

from medtune.cli import main
from medtune.eval import metrics
from medtune.eval.extract import extract
from medtune.eval.records import load_mc
from medtune.eval.safety import RefusalRules
from medtune.eval.task_types.multiple_choice import permuted
from medtune.eval.tasks import Task, render_prompt

CASES = [json.loads(line) for line in (FIXTURES / "extraction_cases.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("case", CASES, ids=[c["note"] for c in CASES])
def test_extraction_cascade_on_hand_labelled_outputs(case):
    assert extract(case["output"], case["options"]) == case["expected"]


def test_letters_inside_words_are_never_answers():
    options = {k: f"选项{k}" for k in "ABCDE"}
    for text in ["B超", "做个B超", "CT", "胸部CT提示", "ALT升高", "HBsAg阳性", "答案是B超检查", "ACE抑制剂", "维生素B12"]:
        assert extract(text, options) is None, text


def test_text_metrics_exact_values():
    assert metrics.bleu("头痛多休息", "头痛多休息", 1) == 1.0
    assert metrics.bleu("头痛多休息", "头痛多休息", 4) == pytest.approx(1.0)
    assert metrics.bleu("甲乙", "丙丁", 1) == 0.0
    # BLEU-1: 2 of 3 characters match; brevity penalty exp(1 - 4/3).
    assert metrics.bleu("头痛药", "头痛休息", 1) == pytest.approx(2 / 3 * 2.718281828 ** (1 - 4 / 3))
    assert metrics.rouge_l("ABCD", "ACBD") == pytest.approx(0.75)  # LCS 3 of 4 both ways
    assert metrics.rouge_l("多 休 息", "多休息") == 1.0  # whitespace ignored
    assert metrics.distinct(["aab"], 1) == pytest.approx(2 / 3)
    assert metrics.length_ratio(["ab"], ["abcd"]) == 0.5
    assert metrics.average_precision([0.9, 0.8, 0.1], [0, 1, 1]) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert metrics.precision_at_1([0.9, 0.8, 0.1], [0, 1, 1]) == 0.0


def test_paired_bootstrap_is_seeded_and_paired():
    a = [1, 0, 1, 0, 1, 0, 1, 0] * 25
    b = [1, 1, 1, 0, 1, 1, 1, 0] * 25  # b is right wherever a is, and on 50 more
    r1, r2 = metrics.paired_bootstrap(a, b, 1000, 7), metrics.paired_bootstrap(a, b, 1000, 7)
    assert r1 == r2 and r1["diff"] == pytest.approx(0.25) and 0 < r1["low"] < 0.25 < r1["high"]
    same = metrics.paired_bootstrap(a, a, 500, 0)
    assert (same["diff"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    low, high = metrics.bootstrap_ci(a, 1000, 0)
    assert low < 0.5 < high


def test_loaders_map_each_benchmark_to_the_unified_record(tmp_path):
    cmb = tmp_path / "cmb.json"
    cmb.write_text(json.dumps([
        {"exam_type": "医师考试", "exam_class": "执业医师", "exam_subject": "口腔执业医师", "question_type": "多项选择题",
         "question": "问1", "option": {"A": "甲", "B": "乙", "C": "丙", "D": "丁", "E": ""}, "answer": "ACD"},
        {"exam_type": "护理考试", "exam_class": "护士", "question_type": "单项选择题", "question": "问2",
         "option": {"A": "甲", "B": "乙"}, "answer": "F"}], ensure_ascii=False), encoding="utf-8")
    items, dropped = load_mc("cmb", cmb)
    assert [(i.question, i.options, i.answer, i.multi) for i in items] == [
        ("问1", {"A": "甲", "B": "乙", "C": "丙", "D": "丁"}, "ACD", True)]  # empty option E removed
    assert items[0].meta == {"exam_type": "医师考试", "exam_class": "执业医师", "exam_subject": "口腔执业医师",
                             "question_type": "多项选择题"}
    assert [(d.where, d.reason) for d in dropped] == [(f"{cmb}:2", "answer_not_an_option")]

    cmexam = tmp_path / "test.csv"
    cmexam.write_text('Question,Options,Answer,Explanation,Clinical Department\n'
                      '"问3","A 甲\nB 乙\nC 丙",BC,解释,内科\n', encoding="utf-8")
    (item,), _ = load_mc("cmexam", cmexam)
    assert (item.options, item.answer, item.meta) == ({"A": "甲", "B": "乙", "C": "丙"}, "BC",
                                                      {"Clinical Department": "内科"})

    medqa = tmp_path / "medqa.jsonl"
    medqa.write_text(json.dumps({"question": "问4", "options": {"A": "甲", "B": "乙"}, "answer": "乙",
                                 "answer_idx": "B", "meta_info": "第一阶段"}, ensure_ascii=False) + "\n")
    (item,), _ = load_mc("medqa", medqa)
    assert (item.answer, item.meta) == ("B", {"meta_info": "第一阶段"})

    ceval = tmp_path / "ceval"
    ceval.mkdir()
    (ceval / "physician_val.csv").write_text("id,question,A,B,C,D,answer,explanation\n0,问5,甲,乙,丙,丁,D,\n",
                                             encoding="utf-8")
    (item,), _ = load_mc("ceval", ceval)
    assert (item.id, item.answer, item.meta) == ("ceval-physician-0", "D", {"subject": "physician"})

    items, dropped = load_mc("cmmlu", shared("cmmlu_medical/dev"))
    assert len(items) == 35 and not dropped
    assert {i.meta["subject"] for i in items} == {"anatomy", "clinical_knowledge", "college_medicine", "genetics",
                                                   "nutrition", "traditional_chinese_medicine", "virology"}


def test_a_wrong_format_names_file_line_and_field(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"question": "问", "choices": ["甲", "乙"], "answer": "A"}, ensure_ascii=False) + "\n")
    with pytest.raises(Exception, match=r"x.jsonl:1: field 'options' is missing"):
        load_mc("unified", f)


def test_permutations_rotate_options_and_remap_the_answer(tmp_path):
    from medtune.eval.records import MCItem

    item = MCItem("q", "问", {"A": "甲", "B": "乙", "C": "丙"}, "AC")
    rows = permuted([item], 3)
    assert [(r.id, r.options, r.answer) for r in rows] == [
        ("q", {"A": "甲", "B": "乙", "C": "丙"}, "AC"),
        ("q#1", {"A": "乙", "B": "丙", "C": "甲"}, "BC"),
        ("q#2", {"A": "丙", "B": "甲", "C": "乙"}, "AB")]


def test_multiple_choice_prompt_exact_string():
    from medtune.eval.records import MCItem

    task = Task(name="t", type="multiple_choice", data="x")
    shot = MCItem("s", "问题一", {"A": "甲", "B": "乙"}, "B")
    assert render_prompt(task, question="问题二", options={"A": "丙", "B": "丁"}, multi=False, shots=[shot]) == (
        "以下是中国医学考试的一道单项选择题，不需要做任何分析和解释，直接输出答案选项。\n\n"
        "问题一\nA. 甲\nB. 乙\n答案：B\n\n问题二\nA. 丙\nB. 丁\n答案：")
    task.prompt_vars = {"exam": "常识测试"}
    assert render_prompt(task, question="问", options={"A": "甲"}, multi=True, shots=[]).startswith(
        "以下是中国常识测试的一道多项选择题")


def test_cloze_prompt_exact_string():
    from medtune.eval.records import MCItem

    task = Task(name="t", type="multiple_choice", data="x")
    shot = MCItem("s", "问题一", {"A": "甲", "B": "乙"}, "B")
    shots = [{"question": shot.question, "options": shot.options, "answer": shot.answer}]
    assert render_prompt(task, cloze=True, question="问题二", shots=shots) == "问题：问题一\n答案：乙\n\n问题：问题二"
    assert render_prompt(task, cloze=True, question="问题二", shots=[]) == "问题二"


def test_cloze_scores_each_option_text_and_normalises_like_lm_eval(tmp_path):
    """Through the CLI: every single-answer item's options scored as the assistant's reply to the
    question alone; the summed log-probs equal an independent scoring of each (prompt, option) pair,
    and acc / acc_norm (per character, per token) pick the argmax of sum, sum/chars and sum/tokens."""
    from medtune.config import ModelConfig
    from medtune.eval.scoring import LoglikScorer
    from medtune.model.load import load_model

    cfg = _eval_config(tmp_path, ["cmb_exam_sample"], [{"name": "base"}], modes=["cloze"], limit=6)
    assert main(["eval", str(cfg)]) == 0
    rows = [json.loads(x) for x in (tmp_path / "out/predictions/base/cmb_exam_sample.cloze.jsonl")
            .read_text(encoding="utf-8").splitlines()]
    items = {i.id: i for i in load_mc("unified", ROOT / "src/medtune/eval/samples/cmb_exam_dev.jsonl")[0]}
    model, tok, template = load_model(ModelConfig("tiny:llama", "chatml"))
    scorer = LoglikScorer(model, tok, template)
    assert len(rows) == 6
    for row in rows:
        item = items[row["id"]]
        text = scorer.prompt_text([{"role": "user", "content": item.question}])
        lps = {k: scorer.continuations([scorer._split(text, v)])[0] for k, v in item.options.items()}
        assert row["logprobs"] == pytest.approx({k: sum(v) for k, v in lps.items()}, abs=1e-3)
        assert row["tokens"] == {k: len(v) for k, v in lps.items()}
        wants = {"": {k: sum(v) for k, v in lps.items()},
                 "_norm_char": {k: sum(v) / len(item.options[k]) for k, v in lps.items()},
                 "_norm_token": {k: sum(v) / len(v) for k, v in lps.items()}}
        for suffix, want in wants.items():
            assert row[f"pred{suffix}"] == max(want, key=want.__getitem__)
            assert row[f"correct{suffix}"] == int(row[f"pred{suffix}"] == item.answer)
    res = json.loads((tmp_path / "out/results.json").read_text(encoding="utf-8"))
    block = res["tasks"]["cmb_exam_sample"]["modes"]["cloze"]["models"]["base"]
    assert block["metrics"]["accuracy_norm_char"]["value"] == pytest.approx(
        sum(r["correct_norm_char"] for r in rows) / 6)
    report = (tmp_path / "out/report.md").read_text(encoding="utf-8")
    assert "| cmb_exam_sample | cloze | acc_norm (per char) | 6 |" in report


def test_refusal_rules():
    rules = RefusalRules.load()
    assert rules.refused("抱歉，我无法提供这类信息。如有需要请拨打心理援助热线。")
    assert rules.refused("作为AI，我不能帮你伪造病历。")
    assert not rules.refused("高血压患者可以适量服用党参，建议咨询医生。")
    assert not rules.refused("请尽快就医，完善血常规检查。")


def _eval_config(tmp_path, tasks, models, **eval_extra):
    cfg = {"model": {"name_or_path": "tiny:llama", "template": "chatml"},
           "eval": {"tasks": tasks, "models": models, "output_dir": str(tmp_path / "out"), "bootstrap": 300,
                    **eval_extra}}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def test_fidelity_gold_scores_100_and_all_a_scores_the_exact_fraction(tmp_path):
    """Scoring outputs saved elsewhere (predictions files) through the whole CLI: the gold answers
    score 100%, "A" for everything scores exactly the share of A answers, B超 for everything is
    100% unparseable (never B), and CMExam's multi-answer questions are scored by exact set."""
    cmexam = shared("cmexam/cmexam_dev.jsonl")
    tasks = ["cmb_exam_sample", {"name": "cmexam", "type": "multiple_choice", "data": str(cmexam)}]
    gold_rows = {name: load_mc("unified", path)[0] for name, path in
                 [("cmb_exam_sample", ROOT / "src/medtune/eval/samples/cmb_exam_dev.jsonl"), ("cmexam", cmexam)]}
    files = {}
    for label, output in [("gold", None), ("all_a", "A"), ("b_chao", "建议做B超")]:
        files[label] = tmp_path / f"{label}.jsonl"
        files[label].write_text("".join(
            json.dumps({"task": t, "id": i.id, "output": output or f"答案：{i.answer}"}, ensure_ascii=False) + "\n"
            for t, items in gold_rows.items() for i in items), encoding="utf-8")
    cfg = _eval_config(tmp_path, tasks, [{"name": n, "predictions": str(f)} for n, f in files.items()],
                       modes=["generate"])
    assert main(["eval", str(cfg)]) == 0
    res = json.loads((tmp_path / "out/results.json").read_text(encoding="utf-8"))
    for task, items in gold_rows.items():
        block = res["tasks"][task]["modes"]["generate"]
        assert list(res["tasks"][task]["modes"]) == ["generate"]  # no log-likelihood without weights
        gold, all_a, chao = (block["models"][m] for m in ("gold", "all_a", "b_chao"))
        assert gold["metrics"]["accuracy"]["value"] == 1.0 and gold["parse_fail_rate"] == 0.0
        assert all_a["metrics"]["accuracy"]["value"] == sum(i.answer == "A" for i in items) / len(items)
        assert chao["metrics"]["accuracy"]["value"] == 0.0 and chao["parse_fail_rate"] == 1.0
        assert chao["pred_hist"] == {"unparseable": len(items)}
        diff = block["vs_reference"]["all_a"]["accuracy"]
        assert diff["diff"] == pytest.approx(all_a["metrics"]["accuracy"]["value"] - 1.0) and diff["high"] < 0
    multi = res["tasks"]["cmexam"]["modes"]["generate"]["models"]["all_a"]["multi"]
    assert multi["n"] == 4 and multi["accuracy"] == 0.0
    report = (tmp_path / "out/report.md").read_text(encoding="utf-8")
    assert "| cmb_exam_sample | generate | accuracy | 90 | 100.0 [100.0, 100.0] |" in report


def test_predictions_file_must_cover_every_item(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"task": "general_zh", "id": "general-zh-000", "output": "B"}) + "\n")
    cfg = _eval_config(tmp_path, ["general_zh"], [{"name": "p", "predictions": str(f)}], modes=["generate"])
    with pytest.raises(Exception, match="no output for task 'general_zh', id 'general-zh-001' \\(39 missing\\)"):
        from medtune.config import load_config
        from medtune.eval.run import run

        run(load_config(cfg))


def test_unknown_task_is_a_clear_cli_error(tmp_path, capsys):
    cfg = _eval_config(tmp_path, ["cmb_exam_smaple"], [{"name": "base"}])
    assert main(["eval", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "'cmb_exam_smaple' is neither a built-in task" in err and "cmb_exam_sample" in err


def test_loglik_letters_equal_continuation_scores_alone_or_batched():
    from medtune.config import ModelConfig
    from medtune.eval.scoring import LoglikScorer
    from medtune.model.load import load_model

    model, tok, template = load_model(ModelConfig("tiny:qwen2", "chatml"))
    scorer = LoglikScorer(model, tok, template, batch_size=4)
    prompts = [[{"role": "user", "content": f"问题{i}：头痛怎么办？" + "很" * i}] for i in range(5)]
    letters = [list("ABCD")] * 5
    batched = scorer.letters(prompts, letters)
    alone = [scorer.letters([p], [ls])[0] for p, ls in zip(prompts, letters, strict=True)]
    for b, a in zip(batched, alone, strict=True):
        assert b == pytest.approx(a, abs=1e-4)
    # The one-forward fast path agrees with scoring each letter as a continuation.
    text = scorer.prompt_text(prompts[0])
    slow = [sum(x) for x in scorer.continuations([scorer._split(text, letter) for letter in "ABCD"])]
    assert [batched[0][k] for k in "ABCD"] == pytest.approx(slow, abs=1e-4)


def test_trained_model_ranks_and_answers_what_it_learned(tmp_path, trained):
    """Log-likelihood points the right way: the memorising model ranks its own answers first (P@1 =
    MAP = 1 on a cMedQA2-layout folder) and reproduces them (ROUGE-L = 1); a random model does not."""
    rank = tmp_path / "rank"
    rank.mkdir()
    qs, answers = list(QA), list(QA.values()) + ["建议多喝热水。", "注意饮食清淡。"]
    (rank / "question.csv").write_text("question_id,content\n" + "".join(f"{i},{q}\n" for i, q in enumerate(qs)),
                                       encoding="utf-8")
    (rank / "answer.csv").write_text("ans_id,question_id,content\n" + "".join(
        f"{j},{j % 2},{a}\n" for j, a in enumerate(answers)), encoding="utf-8")
    (rank / "test_candidates.txt").write_text("question_id,ans_id,cnt,label\n" + "".join(
        f"{i},{j},{j},{int(i == j)}\n" for i in range(2) for j in range(4)), encoding="utf-8")
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}, ensure_ascii=False) + "\n"
                                               for q, a in QA.items()), encoding="utf-8")
    tasks = [{"name": "rank", "type": "ranking", "data": str(rank), "split": "test"},
             {"name": "qa", "type": "open_qa", "data": str(tmp_path / "qa.jsonl")}]
    cfg = _eval_config(tmp_path, tasks, [{"name": "random"}, {"name": "trained", "name_or_path": str(trained)}],
                       max_new_tokens=16)
    assert main(["eval", str(cfg)]) == 0
    res = json.loads((tmp_path / "out/results.json").read_text(encoding="utf-8"))["tasks"]
    ranked = res["rank"]["modes"]["loglik"]["models"]["trained"]["metrics"]
    assert ranked["p_at_1"]["value"] == 1.0 and ranked["ap"]["value"] == 1.0
    qa = res["qa"]["modes"]["generate"]["models"]
    assert qa["trained"]["metrics"]["rouge_l"]["value"] == 1.0 > qa["random"]["metrics"]["rouge_l"]["value"]
    html = (tmp_path / "out/report.html").read_text(encoding="utf-8")
    assert "多休息，少熬夜。" in html  # the side-by-side sample


def test_shared_dev_samples_two_models_with_cis_and_identical_reruns(tmp_path):
    """The issue's acceptance run: CMB-Exam, CMExam, MedQA-MCMLE, CMMLU medical and Huatuo-26M dev samples
    plus safety and retention, two models, both scoring modes, option permutations, 1-shot; results.json,
    report.md and report.html with CIs; a second run gives identical numbers."""
    src = yaml.safe_load((ROOT / "configs/eval/shared_dev.yaml").read_text(encoding="utf-8"))
    for t in src["eval"]["tasks"]:
        if isinstance(t, dict):
            t["data"] = str((ROOT / "configs/eval" / t["data"]).resolve())
            shared(str(t["data"]).split("shared/data/")[1])
    models = [{"name": "llama"}, {"name": "qwen2", "name_or_path": "tiny:qwen2"}]
    results = []
    for run in ("a", "b"):
        cfg = _eval_config(tmp_path / run, src["eval"]["tasks"], models, limit=6, shots=1, permutations=2,
                           mc_max_new_tokens=6, max_new_tokens=8)
        assert main(["eval", str(cfg)]) == 0
        out = tmp_path / run / "out"
        results.append(json.loads((out / "results.json").read_text(encoding="utf-8")))
        for f in ("report.md", "report.html", "charts/overview.png", "predictions/qwen2/cmexam.generate.jsonl"):
            assert (out / f).is_file(), f
    a, b = results
    a["card"].pop("date"), b["card"].pop("date")
    a["card"]["eval"].pop("output_dir"), b["card"]["eval"].pop("output_dir")
    assert a == b
    tasks = a["tasks"]
    assert set(tasks) == {"cmb_exam", "cmexam", "medqa_mcmle", "cmmlu_medical", "huatuo26m", "harmful_medical_zh",
                          "benign_medical_zh", "general_zh"}
    assert set(tasks["cmb_exam"]["modes"]) == {"loglik", "cloze", "generate"}
    assert set(tasks["cmb_exam"]["modes"]["cloze"]["models"]["llama"]["metrics"]) == {
        "accuracy", "accuracy_norm_char", "accuracy_norm_token"}
    mc = tasks["medqa_mcmle"]["modes"]["loglik"]
    assert mc["models"]["llama"]["n"] == 6 and "consistency" in mc["models"]["llama"]
    assert set(mc["vs_reference"]["qwen2"]["accuracy"]) >= {"diff", "low", "high"}
    assert a["card"]["tasks"]["cmb_exam"]["shots"] == 1
    report = (tmp_path / "a/out/report.md").read_text(encoding="utf-8")
    for heading in ("## Medical knowledge and QA", "## Safety", "## General-knowledge retention (forgetting)",
                    "## Run card", "over-refusal rate", "refusal rate", "qwen2 − llama"):
        assert heading in report


def test_retention_callback_records_and_warns(tmp_path, caplog):
    out = tmp_path / "run"
    assert main(["train", str(ROOT / "configs/tiny/sft_lora.yaml"), f"train.output_dir={out}", "train.max_steps=4",
                 "train.eval_strategy=no", "data.test_size=0", "train.save_steps=100", "finetune.retention.task=general_zh",
                 "finetune.retention.every_steps=2", "finetune.retention.limit=8",
                 "finetune.retention.max_drop=-1.0"]) == 0  # any value "drops" by more than -1: forces the warning
    r = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["retention"]
    assert [h["step"] for h in r["history"]] == [0, 2, 4] and r["questions"] == 8 and r["warned"] is True
    assert "is forgetting general knowledge" in caplog.text


def test_ls_tasks(capsys):
    assert main(["ls", "tasks"]) == 0
    listed = capsys.readouterr().out
    for name in ("cmb_exam_sample", "medqa_mcmle_sample", "huatuo26m_sample", "harmful_medical_zh",
                 "benign_medical_zh", "general_zh"):
        assert name in listed
