"""The auditable data pipeline: cleaning steps, dedup, de-identification, decontamination, card, licences."""

import json

import pytest
from conftest import FIXTURES, ROOT, shared

from medtune.cli import main
from medtune.config import load_config
from medtune.data.prepare import prepare
from medtune.errors import ConfigError

CFG = str(ROOT / "configs/tiny/sft_lora.yaml")


def write_dataset(tmp_path, rows, name="hand"):
    (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                            encoding="utf-8")
    reg = tmp_path / f"{name}_reg.yaml"
    reg.write_text(f"{name}: {{path: {tmp_path / f'{name}.jsonl'}, format: alpaca, license: test, source: hand}}\n")
    return str(reg)


def run(tmp_path, registries, datasets, *overrides):
    cfg = load_config(CFG, [f"data.output_dir={tmp_path / 'out'}", f"data.registries={registries}",
                            f"data.datasets={datasets}", "data.max_samples=null", *overrides])
    return prepare(cfg), tmp_path / "out"


def read(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_mixed_real_sources_count_up_and_get_a_card(tmp_path):
    shared("huatuo_llama_med_chinese/llama_data.json")
    regs = [str(ROOT / "configs/shared_datasets.yaml"), str(FIXTURES / "cmedqa2_registry.yaml")]
    report, out = run(tmp_path, f"[{', '.join(regs)}]",
                      "[cmedqa2_first, toyhom_neike_sample, huatuo_llama_data, covid_dialogue]",
                      "data.steps=[normalize, {length: {min_answer: 4}}, {quality: {}}, redact]",
                      "data.dedup={exact: true, near: true, threshold: 0.8, on: question}")
    for name, d in report["datasets"].items():
        assert d["rows_read"] == d["kept"] + sum(d["dropped"].values()) + d["not_sampled"], name
        for reason, n in d["dropped"].items():  # every dropped row is written out
            assert n <= len(read(out / "dropped" / f"{reason}.jsonl"))
    assert report["datasets"]["huatuo_llama_data"]["dropped"].get("duplicate_exact", 0) > 0  # real repeats exist
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "| toyhom_neike_sample | https://github.com/Toyhom" in card and "sha256" in card
    assert "cmedqa2_first.train.jsonl" in card and "## Config" in card
    kept = sum(len(read(out / f"{n}.jsonl")) for n in report["files"])
    assert kept == report["kept"]


def test_near_duplicates_are_caught_and_point_at_the_original(tmp_path):
    q = "我最近经常头痛，晚上睡不好觉，白天也没有精神，请问应该怎么办？"
    rows = [{"instruction": q, "output": "建议规律作息，必要时到神经内科就诊。"},
            {"instruction": "我最近经常头痛,晚上睡不好觉,白天也没有精神,请问应该怎么办?", "output": "多休息。"},  # punctuation
            {"instruction": "我最近 经常头痛，晚上 睡不好觉，白天也没有精神，请问应该怎么办？", "output": "多休息。"},  # spacing
            {"instruction": "我最近常常头痛，晚上睡不好觉，白天也没什么精神，请问应该怎么办呢？", "output": "多喝水。"},  # chars
            {"instruction": "孩子发烧三十九度，需要马上去医院吗？", "output": "可以先物理降温，持续高热需就医。"}]
    report, out = run(tmp_path, f"[{write_dataset(tmp_path, rows)}]", "[hand]",
                      "data.dedup={exact: true, near: true, threshold: 0.6, ngram: 3, num_perm: 128, on: question}")
    d = report["datasets"]["hand"]
    assert d["kept"] == 2 and d["dropped"] == {"duplicate_exact": 2, "duplicate_near": 1}
    dups = read(out / "dropped/duplicate_exact.jsonl") + read(out / "dropped/duplicate_near.jsonl")
    assert {x["duplicate_of"] for x in dups} == {"hand:1"}  # dataset:line of the row kept


def test_redaction_keeps_no_pii_in_outputs_or_dropped_rows(tmp_path):
    rows = [{"instruction": "患者张伟，手机13912345678，反复胸闷怎么办？", "output": "张伟您好，建议做心电图，结果可发到 zw@163.com。"},
            {"instruction": "病人李秀英，电话13800001111，咳嗽", "output": "谢谢"}]  # boilerplate answer: dropped
    report, out = run(tmp_path, f"[{write_dataset(tmp_path, rows)}]", "[hand]",
                      "data.steps=[redact, {quality: {min_content: 4}}]")
    kept = (out / "hand.jsonl").read_text(encoding="utf-8")
    assert "<NAME_1>" in kept and "<PHONE_1>" in kept and "<EMAIL_1>" in kept and "13912345678" not in kept
    everything = "".join(p.read_text(encoding="utf-8") for p in out.rglob("*.jsonl"))
    assert "13912345678" not in everything and "13800001111" not in everything and "李秀英" not in everything
    assert "张伟" not in everything  # 张伟您好 in the answer too: a name found once is replaced throughout the row
    assert read(out / "changed/redacted.jsonl")[0] == {"dataset": "hand", "where": f"{tmp_path / 'hand.jsonl'}:1",
                                                       "pii": {"NAME": 2, "PHONE": 1, "EMAIL": 1}}
    assert report["pii_replaced"] == {"NAME": 3, "PHONE": 2, "EMAIL": 1}
    assert report["datasets"]["hand"]["dropped"] == {"boilerplate_answer": 1}


def test_a_row_copied_from_an_exam_is_caught(tmp_path):
    bench = shared("cmb_exam/cmb_exam_dev.jsonl")
    stem = json.loads(bench.read_text(encoding="utf-8").splitlines()[1])["question"]
    rows = [{"instruction": f"请回答：{stem}（单选）", "output": "C"},
            {"instruction": "高血压患者能吃党参吗？", "output": "可以适量服用，注意监测血压。"}]
    report, out = run(tmp_path, f"[{write_dataset(tmp_path, rows)}]", "[hand]",
                      f"data.decontaminate={{benchmarks: [{bench}], threshold: 0.5}}")
    assert report["datasets"]["hand"]["dropped"] == {"contaminated_cmb_exam_dev": 1}
    assert report["datasets"]["hand"]["contaminated"] == {"cmb_exam_dev": 1}
    assert read(out / "dropped/contaminated_cmb_exam_dev.jsonl")[0]["benchmark"] == "cmb_exam_dev"


def test_filters_and_normalisation(tmp_path):
    mojibake = "高血压能吃党参吗？".encode().decode("latin-1")
    rows = [{"instruction": "ＣＴ报告显示结节８ｍｍ，严重吗？", "output": "结节８ｍｍ需要定期复查，一般3到6个月。"},
            {"instruction": mojibake, "output": "可以适量服用，注意监测血压。"},
            {"instruction": "What should I eat with diabetes?", "output": "Eat more vegetables and less sugar."},
            {"instruction": "头痛", "output": "好"}]
    report, out = run(tmp_path, f"[{write_dataset(tmp_path, rows)}]", "[hand]",
                      "data.steps=[normalize, {language: {min_cjk_ratio: 0.3}}, {length: {min_answer: 4}}]")
    kept, repaired = read(out / "hand.jsonl")
    assert kept["messages"][0]["content"] == "CT报告显示结节8mm，严重吗？"  # Chinese punctuation kept
    assert repaired["messages"][0]["content"] == "高血压能吃党参吗？"  # mojibake repaired (ftfy)
    assert report["datasets"]["hand"]["dropped"] == {"not_chinese": 1, "too_short_answer": 1}
    assert report["datasets"]["hand"]["changed"] == {"normalized": 2}


def test_commercial_use_refuses_research_only_data(tmp_path, capsys):
    shared("huatuo_llama_med_chinese/llama_data.json")
    reg = str(ROOT / "configs/shared_datasets.yaml")
    with pytest.raises(ConfigError, match="do not allow commercial use.*huatuo_llama_data"):
        run(tmp_path, f"[{reg}]", "[huatuo_llama_data]", "data.intended_use=commercial")
    report, _ = run(tmp_path, "[]", "[toyhom_neike_sample]", "data.intended_use=commercial")  # MIT: allowed
    assert report["kept"] == 400


def test_unknown_step_is_explained(capsys):
    assert main(["prepare", CFG, "data.steps=[normalise]", "data.output_dir=/tmp/x"]) == 2
    assert "Unknown cleaning step 'normalise'. Did you mean 'normalize'?" in capsys.readouterr().err


def test_group_split_keeps_each_question_in_one_split(tmp_path):
    import csv
    import io

    sample = ROOT / "src/medtune/data/samples/toyhom_neike_sample.csv"
    questions = [r["ask"] for r in csv.DictReader(io.StringIO(sample.read_bytes().decode("gb18030")))][:60]
    rows = [{"instruction": q, "output": f"回答{j}：多喝水，注意休息。"} for q in questions for j in range(3)]
    rows += [{"instruction": q.replace("？", "?").replace("，", ","), "output": "另一个回答，注意休息。"} for q in questions]
    # Near-duplicates (two characters added) must join their question's split too.
    rows += [{"instruction": "请问" + q, "output": "近似问题的回答。"} for q in questions]
    report, out = run(tmp_path, f"[{write_dataset(tmp_path, rows)}]", "[hand]", "data.split={dev: 0.2, test: 0.2}")
    split_of = {}
    for split in ("train", "dev", "test"):
        for r in read(out / f"hand.{split}.jsonl"):
            key = r["messages"][0]["content"].replace("?", "？").replace(",", "，").removeprefix("请问")
            assert split_of.setdefault(key, split) == split  # all 5 variants of a question together
    assert set(split_of.values()) == {"train", "dev", "test"} and len(split_of) == 60
    assert report["datasets"]["hand"]["kept_by_split"]["hand.train"] > report["datasets"]["hand"]["kept_by_split"]["hand.dev"]


def test_cmedqa2_longest_answer_policy(tmp_path):
    reg = tmp_path / "r.yaml"
    reg.write_text(f"c: {{path: {FIXTURES / 'cmedqa2'}, format: cmedqa2, options: {{answers: longest}}, license: GPL-3.0, source: fixture}}\n")
    report, out = run(tmp_path, f"[{reg}]", "[c]")
    q101 = next(r for r in read(out / "c.train.jsonl") if r["meta"]["question_id"] == "101")
    assert q101["messages"][1]["content"] == "高血压病人可以适量服用党参，党参有一定的降压作用。"


@pytest.mark.parametrize("policy, expected", [
    ("all", ["多喝水。", "多喝温水，注意休息。", "可以吃退烧药。", "多休息。"]),
    ("first", ["多喝水。", "可以吃退烧药。"]),
    ("longest", ["多喝温水，注意休息。", "可以吃退烧药。"]),
    ("merge", ["可以吃退烧药。", "多喝水。\n多喝温水，注意休息。\n多休息。"]),
])
def test_several_answers_to_one_question(tmp_path, policy, expected):
    rows = [{"instruction": "感冒了怎么办？", "output": "多喝水。"},
            {"instruction": "感冒了 怎么办?", "output": "多喝温水，注意休息。"},  # the same question, normalised
            {"instruction": "发烧了怎么办？", "output": "可以吃退烧药。"},
            {"instruction": "感冒了怎么办", "output": "多休息。"}]
    report, out = run(tmp_path, f"[{write_dataset(tmp_path, rows)}]", "[hand]", f"data.answers={policy}")
    assert [r["messages"][1]["content"] for r in read(out / "hand.jsonl")] == expected
    d = report["datasets"]["hand"]
    assert d["rows_read"] == 4 and d["kept"] + sum(d["dropped"].values()) == 4
    assert d["dropped"].get("merged_answer", 0) == 4 - len(expected)
