"""The LLM judge end to end: a tiny model trained to give scripted verdicts to medtune's own judge
prompts, served by `medtune serve` on 127.0.0.1, judges base against tuned (pairwise in both orders),
grades binary criteria (HealthBench style) and 1-5 aspects (CMB-Clin style); unparseable verdicts are
counted, not guessed; a rerun is answered from the cache. The strict parsers and the rubric loaders
are tested on their own, the CMB-Clin loader on the real shared sample."""

import json

import pytest
import yaml
from conftest import shared, train_scripted

from medtune.cli import main
from medtune.eval import judge as J
from medtune.eval.rubric import CMB_CLIN_ASPECTS, conversation_text, load_rubric
from medtune.eval.tasks import PROMPT_DIR

pytest.importorskip("openai")
pytest.importorskip("fastapi")
from test_serve import serving

CONSULT = [("头痛三天怎么办？", "注意休息，必要时就医。"), ("孩子发烧39度怎么办？", "物理降温，及时就诊。"),
           ("血糖高要注意什么？", "控制饮食，监测血糖。")]
OUTPUTS = {  # (task, id) → (base's answer, tuned's answer)
    ("consult", "c0"): ("多喝热水。", "头痛持续三天应测血压，必要时到神经内科就诊。"),
    ("consult", "c1"): ("吃点药。", "先物理降温，超过三天或精神差要去儿科。"),
    ("consult", "c2"): ("少吃糖。", "控制主食和甜食，定期测空腹血糖。"),
    ("rub", "r1"): ("自己买点阿莫西林吃。", "胸痛伴出汗请立即拨打120就医。"),
    ("rub", "r2"): ("没什么事。", "请每天早晚测量血压并记录。"),
    ("clin", "7-1"): ("可能是胃病。", "考虑急性心肌梗死，需立即做心电图。"),
}
RUBRIC = [{"id": "r1", "question": "胸口痛还出冷汗，在家吃什么药？",
           "rubric": [{"criterion": "建议立即就医或拨打急救电话", "points": 5},
                      {"criterion": "推荐自行服用抗生素", "points": -3}]},
          {"id": "r2", "question": "血压有点高，平时要做什么？",
           "rubric": [{"criterion": "建议定期测量血压", "points": 4}]}]
CLIN = [{"id": "7", "title": "胸痛", "description": "男，58岁，突发胸痛2小时，伴大汗。",
         "QA_pairs": [{"question": "初步诊断是什么？", "answer": "急性心肌梗死可能性大。"}]}]
ASPECTS = {"base": {"fluency": 3, "relevance": 4, "completeness": 2, "proficiency": 3},
           "tuned": {"fluency": 5, "relevance": 5, "completeness": 4, "proficiency": 4}}
# Pairwise, per consult question: (verdict with base's answer first, verdict with tuned's first).
PAIRWISE = {"c0": ("理由：B更具体。[[B]]", "理由：A更具体。[[A]]"),   # tuned wins in both orders
            "c1": ("[[A]]", "[[A]]"),                                # position bias: a tie after the swap
            "c2": ("都差不多吧。", "[[C]]")}                         # unparseable in one order
CRITERIA = {("base", "r1"): ['{"criteria_met": false}', '{"criteria_met": true}'],
            ("tuned", "r1"): ['{"criteria_met": true}', '{"criteria_met": false}'],
            ("base", "r2"): ['{"criteria_met": false}'],
            ("tuned", "r2"): ['{"criteria_met": "yes"}']}  # not a boolean: unparseable


def _p(name, **values):
    return J.render(PROMPT_DIR / name, **values)


def _scripted() -> list[dict]:
    """(judge prompt as medtune renders it → verdict) pairs for every request the eval run makes."""
    pairs = []
    questions = {f"c{i}": (q, a) for i, (q, a) in enumerate(CONSULT)}
    items = {x["id"]: x for x in RUBRIC}
    for (task, i), (base, tuned) in OUTPUTS.items():
        if task == "consult":
            q, ref = questions[i]
            ab, ba = PAIRWISE[i]
        else:
            q = f"用户：{items[i]['question']}" if task == "rub" else \
                f"用户：{CLIN[0]['description']}\n\n{CLIN[0]['QA_pairs'][0]['question']}"
            ref = "" if task == "rub" else CLIN[0]["QA_pairs"][0]["answer"]
            ab = ba = "两个回答相当。[[C]]"
        pairs.append((_p("judge_pairwise_zh.jinja", question=q, reference=ref, answer_a=base, answer_b=tuned), ab))
        pairs.append((_p("judge_pairwise_zh.jinja", question=q, reference=ref, answer_a=tuned, answer_b=base), ba))
        for model, answer in (("base", base), ("tuned", tuned)):
            if task == "rub":
                for c, verdict in zip(items[i]["rubric"], CRITERIA[(model, i)], strict=True):
                    pairs.append((_p("judge_criterion_zh.jinja", conversation=q, answer=answer, reference="",
                                     criterion=c["criterion"], points=c["points"]), verdict))
            if task == "clin":
                pairs.append((_p("judge_aspects_zh.jinja", conversation=q, answer=answer, reference=ref),
                               json.dumps(ASPECTS[model])))
    return pairs


@pytest.fixture(scope="module")
def judge_url(tmp_path_factory):
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": v}]} for p, v in _scripted()]
    judge = train_scripted(tmp_path_factory.mktemp("judge"), rows, steps=200, name="judge")
    with serving(str(judge)) as handle:
        yield handle.url + "/v1"


def _config(tmp_path, url):
    (tmp_path / "consult.jsonl").write_text("".join(json.dumps({"id": f"c{i}", "question": q, "answer": a},
                                                               ensure_ascii=False) + "\n"
                                                    for i, (q, a) in enumerate(CONSULT)), encoding="utf-8")
    (tmp_path / "rub.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RUBRIC),
                                        encoding="utf-8")
    (tmp_path / "clin.json").write_text(json.dumps(CLIN, ensure_ascii=False), encoding="utf-8")
    for k, model in enumerate(("base", "tuned")):
        (tmp_path / f"{model}.jsonl").write_text("".join(
            json.dumps({"task": t, "id": i, "output": outs[k]}, ensure_ascii=False) + "\n"
            for (t, i), outs in OUTPUTS.items()), encoding="utf-8")
    cfg = {"eval": {"tasks": [{"name": "consult", "type": "open_qa", "data": "consult.jsonl"},
                              {"name": "rub", "type": "rubric", "format": "rubric", "data": "rub.jsonl"},
                              {"name": "clin", "type": "rubric", "format": "cmb_clin", "data": "clin.json"}],
                    "models": [{"name": "base", "predictions": str(tmp_path / "base.jsonl")},
                               {"name": "tuned", "predictions": str(tmp_path / "tuned.jsonl")}],
                    "bootstrap": 200, "output_dir": str(tmp_path / "out"),
                    "judge": {"endpoint": {"base_url": url, "api_key_env": "MEDTUNE_TEST_KEY", "concurrency": 4,
                                           "price_per_1k_prompt": 1.0, "price_per_1k_completion": 3.0},
                              "max_tokens": 120, "cache_dir": str(tmp_path / "cache")}}}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def test_the_judge_compares_both_orders_grades_rubrics_counts_unparseable_and_caches(tmp_path, judge_url):
    path = _config(tmp_path, judge_url)
    assert main(["eval", str(path)]) == 0
    out = tmp_path / "out"
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    j = res["judge"]
    pw = j["pairwise"]["consult"]["tuned"]
    assert (pw["n"], pw["scored"], pw["wins"], pw["ties"], pw["losses"], pw["unparseable"]) == (3, 2, 1, 1, 0, 1)
    assert pw["win_rate"]["value"] == pytest.approx(0.75) and pw["swap_agreement"] == pytest.approx(0.5)
    assert pw["first_position"] == pytest.approx(3 / 5)  # A, B | A, A | (unparseable), C
    assert j["pairwise"]["rub"]["tuned"]["ties"] == 2 and j["pairwise"]["clin"]["tuned"]["ties"] == 1
    records = [json.loads(x) for x in (out / "judge/consult.tuned_vs_base.pairwise.jsonl").read_text().splitlines()]
    assert [r["score"] for r in records] == [1.0, 0.5, None]
    assert records[2]["reference_first"] == {"verdict": None, "reply": "都差不多吧。"}

    rub = res["tasks"]["rub"]["modes"]["generate"]["models"]
    # base: r1 (−3)/5 = −0.6, r2 0/4 = 0 → mean −0.3, clipped to 0; tuned: r1 5/5, r2 unparseable (not scored).
    assert rub["base"]["metrics"]["rubric_score"]["value"] == 0.0 and rub["base"]["n"] == 2
    assert rub["tuned"]["metrics"]["rubric_score"]["value"] == 1.0 and rub["tuned"]["n"] == 1
    assert j["rubric"]["rub"]["tuned"] == {"n": 2, "graded": 1, "unparseable": 1}
    diff = res["tasks"]["rub"]["modes"]["generate"]["vs_reference"]["tuned"]["rubric_score"]
    assert diff["diff"] == pytest.approx(1.0 - (-0.6))  # paired over r1, on the unclipped item scores
    clin = res["tasks"]["clin"]["modes"]["generate"]["models"]
    assert clin["base"]["metrics"]["rubric_score"]["value"] == pytest.approx(12 / 20)
    assert clin["tuned"]["metrics"]["rubric_score"]["value"] == pytest.approx(18 / 20)
    graded = [json.loads(x) for x in (out / "predictions/tuned/rub.generate.jsonl").read_text().splitlines()]
    assert graded[1]["grades"][0]["met"] is None and graded[1]["grades"][0]["reply"] == '{"criteria_met": "yes"}'

    card = j["judge"]
    asked = 2 * 6 + 6 + 2  # pairwise in both orders for 6 questions, 6 criteria, 2 aspect ratings
    assert (card["asked"], card["cached"], card["retries"]) == (asked, 0, 0)
    assert card["requests"] == asked + 1  # + the model listing that resolves the judge's id
    assert card["cost"] == pytest.approx((card["prompt_tokens"] * 1.0 + card["completion_tokens"] * 3.0) / 1000)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| consult | tuned vs base | 3 | 2 | 1 / 1 / 0 | 75.0 [" in report
    assert "| 50.0 | 60.0 | 1 |" in report  # self-agreement, first position, unparseable
    assert f"Judge: `judge` at {judge_url}" in report and "judge_pairwise_zh.jinja (" in report
    assert "| rub | tuned | 2 | 1 | 1 |" in report

    # The same run again: every verdict from the cache, one request (which model is served), the same numbers.
    assert main(["eval", str(path)]) == 0
    again = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert (again["judge"]["judge"]["asked"], again["judge"]["judge"]["cached"]) == (0, asked)
    assert again["judge"]["judge"]["requests"] == 1 and again["judge"]["judge"]["model"] == "judge"
    assert again["judge"]["pairwise"] == j["pairwise"]


def test_a_rubric_task_without_a_judge_is_one_clear_error(tmp_path, capsys):
    path = _config(tmp_path, "http://127.0.0.1:9/v1")
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    del cfg["eval"]["judge"]
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    assert main(["eval", str(path)]) == 2
    err = capsys.readouterr().err
    assert "task 'rub' is a rubric task" in err and "eval.judge.endpoint" in err and "Traceback" not in err


def test_verdicts_are_parsed_strictly():
    assert J.parse_pairwise("理由……\n[[B]]") == "B" and J.parse_pairwise("[[C]]") == "C"
    assert J.parse_pairwise("A更好") is None and J.parse_pairwise("[[A]] 还是 [[B]]") is None
    assert J.parse_pairwise("[[A]] 结论：[[A]]") == "A"  # the same verdict twice is still one verdict
    assert J.parse_criterion('{"criteria_met": true, "explanation": "提到了就医"}') is True
    assert J.parse_criterion('```json\n{"criteria_met": false}\n```') is False
    for bad in ('{"criteria_met": "true"}', '{"criteria_met": 1}', "criteria_met: true", "[true]", ""):
        assert J.parse_criterion(bad) is None, bad
    names = list(CMB_CLIN_ASPECTS)
    assert J.parse_aspects('{"fluency": 5, "relevance": 4, "completeness": 3, "proficiency": 1}', names) == \
        {"fluency": 5, "relevance": 4, "completeness": 3, "proficiency": 1}
    for bad in ('{"fluency": 6, "relevance": 4, "completeness": 3, "proficiency": 1}',
                '{"fluency": 4.5, "relevance": 4, "completeness": 3, "proficiency": 1}',
                '{"fluency": true, "relevance": 4, "completeness": 3, "proficiency": 1}',
                '{"fluency": 4, "relevance": 4, "completeness": 3}'):
        assert J.parse_aspects(bad, names) is None, bad


def test_cmb_clin_cases_become_one_item_per_question_with_the_earlier_answers_as_history():
    path = shared("cmb_clin/cmb_clin_dev4.json")
    cases = json.loads(path.read_text(encoding="utf-8"))
    items, dropped = load_rubric("cmb_clin", path)
    assert not dropped and len(items) == sum(len(c["QA_pairs"]) for c in cases)
    first, second = items[0], items[1]
    case = cases[0]
    assert first["id"] == f"{case['id']}-1" and first["aspects"] == list(CMB_CLIN_ASPECTS) and not first["criteria"]
    assert first["messages"] == [{"role": "user", "content": case["description"].strip() + "\n\n"
                                  + case["QA_pairs"][0]["question"]}]
    assert second["messages"][1] == {"role": "assistant", "content": case["QA_pairs"][0]["answer"]}
    assert second["messages"][2]["content"] == case["QA_pairs"][1]["question"]
    assert second["reference"] == case["QA_pairs"][1]["answer"]
    assert second["question"] == conversation_text(second["messages"])


def test_bad_rubric_rows_are_dropped_with_their_reason(tmp_path):
    rows = [{"id": "ok", "question": "头痛？", "rubric": [{"criterion": "建议就医", "points": 3}]},
            {"id": "no_q", "rubric": [{"criterion": "建议就医", "points": 3}]},
            {"id": "neg", "question": "头痛？", "rubric": [{"criterion": "推荐抗生素", "points": -2}]},
            {"id": "pts", "question": "头痛？", "rubric": [{"criterion": "建议就医", "points": "3"}]},
            {"id": "last", "messages": [{"role": "user", "content": "头痛"}, {"role": "assistant", "content": "嗯"}],
             "rubric": [{"criterion": "建议就医", "points": 3}]}]
    f = tmp_path / "r.jsonl"
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    items, dropped = load_rubric("rubric", f)
    assert [x["id"] for x in items] == ["ok"]
    assert [(d.where, d.reason) for d in dropped] == [
        (f"{f}:2", "no question (text) or messages"),
        (f"{f}:3", "no criterion has positive points: the item has no score to earn"),
        (f"{f}:4", "criterion '建议就医': points must be a non-zero number, got '3'"),
        (f"{f}:5", "the last message is not the user's: there is nothing for the model to answer")]


def test_healthbench_rows_load_as_conversations_with_their_criteria(tmp_path):
    row = {"prompt_id": "hb-1", "prompt": [{"role": "user", "content": "我胸口痛"},
                                           {"role": "assistant", "content": "多久了？"},
                                           {"role": "user", "content": "两小时，出冷汗"}],
           "rubrics": [{"criterion": "建议立即拨打急救电话", "points": 10, "tags": ["axis:accuracy"]},
                       {"criterion": "建议观察几天再说", "points": -8, "tags": ["axis:completeness"]}],
           "example_tags": ["theme:emergency_referrals"]}
    f = tmp_path / "hb.jsonl"
    f.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    (item,), dropped = load_rubric("healthbench", f)
    assert not dropped and item["id"] == "hb-1" and item["messages"] == row["prompt"]
    assert item["criteria"] == [{"criterion": "建议立即拨打急救电话", "points": 10},
                                {"criterion": "建议观察几天再说", "points": -8}]
    assert item["question"] == "用户：我胸口痛\n助手：多久了？\n用户：两小时，出冷汗"
    from medtune.eval.rubric import criteria_score
    assert criteria_score(item["criteria"], [True, True]) == pytest.approx(0.2)
    assert criteria_score(item["criteria"], [False, True]) == pytest.approx(-0.8)
