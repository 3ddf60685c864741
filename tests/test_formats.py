"""Converters on real data (../shared/data) and on the cMedQA2-layout fixture."""

import json

import pytest
from conftest import FIXTURES, ROOT, shared

from medtune.cli import main
from medtune.data.datasets import DatasetSpec, resolve
from medtune.data.formats import FORMATS
from medtune.errors import DataError

SHARED_REGISTRY = [str(ROOT / "configs" / "shared_datasets.yaml")]
CMEDQA2_REGISTRY = [str(FIXTURES / "cmedqa2_registry.yaml")]


def convert(name, registries=SHARED_REGISTRY):
    (spec,) = resolve([name], registries)
    if "shared" in spec.path:
        shared(spec.path.split("shared/data/")[1])
    items = list(FORMATS.get(spec.format)(spec))
    return [i for i in items if i.example], [i for i in items if not i.example]


def test_alpaca_huatuo_llama_data():
    kept, dropped = convert("huatuo_llama_data")
    assert len(kept) == 8658 and not dropped
    assert kept[0].example == {"messages": [
        {"role": "user", "content": "一名年龄在70岁的女性，出现了晕厥、不自主颤抖、情绪不稳等症状，请详细说明其手术治疗和术前准备。"},
        {"role": "assistant", "content": "该病需要进行电极导线、脉冲发生器和永久心脏起搏器置入术，并需要使用镇静药物和局麻对病人进行"
                                         "手术治疗。术前准备包括1-3天的时间进行术前检查和生活方式的调整。"}]}


def test_chatglm_context_target_strips_its_prompt():
    kept, _ = convert("med_chatglm")
    assert kept[0].example["messages"][0] == {
        "role": "user", "content": "患者反复出现反酸、烧心等症状，考虑为Barrett食管，需要注意哪些并发症？"}
    assert kept[0].example["messages"][1]["content"].startswith("根据知识，Barrett食管的并发症")


def test_sharegpt_and_openai_messages():
    kept, _ = convert("medicalgpt_sft")
    assert [m["role"] for m in kept[0].example["messages"]] == ["user", "assistant"]
    kept, dropped = convert("disc_med_sft")
    assert len(kept) == 160
    # Three DISC conversations end on a patient turn nobody answered: dropped, with their line.
    assert [d.reason for d in dropped] == ["ends_without_answer"] * 3
    assert dropped[0].where.endswith("disc_med_sft_examples.jsonl:47")


def test_alpaca_history_becomes_multi_turn_and_bad_rows_are_dropped():
    kept, dropped = convert("cmtmedqa")
    first = kept[0].example["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"] * 4
    assert first[-2]["content"] == "我知道了，谢谢医生的解答。"
    # Rows 1001+ of the real file spell the field `instruct`: counted and kept for audit, not fatal.
    assert len(kept) == 1000 and {d.reason for d in dropped} == {"missing_field"}
    assert "instruct" in dropped[0].raw
    # A JSON array's records are numbered by the physical line they start on (record 1001 of the array).
    path, line = dropped[0].where.rsplit(":", 1)
    lines = open(path, encoding="utf-8").read().splitlines()
    assert lines[int(line) - 1].strip() == "{" and lines[int(line)].strip().startswith('"instruct"')


def test_toyhom_gb18030_csv():
    kept, _ = convert("toyhom_neike")
    assert len(kept) == 7644
    assert kept[0].example["messages"][0]["content"] == "我有高血压这两天女婿来的时候给我拿了些党参泡水喝，您好高血压可以吃党参吗？"
    assert kept[0].meta == {"department": "心血管科"}


def test_dialogue_utterances():
    kept, _ = convert("covid_dialogue")
    msgs = kept[0].example["messages"]
    assert msgs[0]["role"] == "user" and msgs[0]["content"].startswith("今年1月初以来")
    assert msgs[1] == {"role": "assistant", "content": "呛咳病程多久了？神志清醒？"}
    assert len(msgs) % 2 == 0


def test_text_and_pairwise():
    kept, _ = convert("medicalgpt_pretrain")
    assert kept[0].example == {"text": "第一章论"}
    kept, _ = convert("medicalgpt_dpo")
    ex = kept[0].example
    assert set(ex) == {"prompt", "chosen", "rejected"}
    assert ex["prompt"][0]["role"] == "user" and ex["chosen"][0]["role"] == "assistant"
    assert ex["chosen"] != ex["rejected"]


def test_cmedqa2_official_split_first_answer():
    kept, dropped = convert("cmedqa2_first", CMEDQA2_REGISTRY)
    split = {i.meta["question_id"]: i.example["split"] for i in kept}
    assert split == {"101": "train", "102": "train", "103": "dev", "104": "test", "105": "test"}
    # 105 is listed for training AND test: it stays in test only, and the report says so.
    q105 = next(i for i in kept if i.meta["question_id"] == "105")
    assert q105.meta["also_listed_in"] == ["train"]
    assert {d.reason for d in dropped} == {"no_answer", "not_in_any_split"}
    q101 = next(i for i in kept if i.meta["question_id"] == "101")
    assert q101.example["messages"] == [
        {"role": "user", "content": "高血压患者能吃党参吗？我有高血压，这两天女婿拿了些党参泡水喝。"},
        {"role": "assistant", "content": "高血压病人可以适量服用党参，党参有一定的降压作用。"}]
    assert next(i for i in kept if i.meta["question_id"] == "105").example["messages"][0]["content"] == \
        '乙肝小三阳需要吃药吗？医生说"肝功能正常"。'


def test_cmedqa2_all_answers_with_prompt_pool():
    kept, _ = convert("cmedqa2_all_pool", CMEDQA2_REGISTRY)
    q101 = [i.example["messages"] for i in kept if i.meta["question_id"] == "101"]
    assert [m[1]["content"] for m in q101] == ["高血压病人可以适量服用党参，党参有一定的降压作用。",
                                                "建议在医生指导下服用，同时监测血压。"]
    user = q101[0][0]["content"]
    prompt, _, question = user.partition("\n")
    assert question == "病人：高血压患者能吃党参吗？我有高血压，这两天女婿拿了些党参泡水喝。"
    assert prompt.endswith("。") and "医生" in prompt
    # Seeded by question id: the same question always gets the same prompt.
    again, _ = convert("cmedqa2_all_pool", CMEDQA2_REGISTRY)
    assert again[0].example == kept[0].example


def test_cmedqa2_merge_with_persona():
    kept, _ = convert("cmedqa2_merge_persona", CMEDQA2_REGISTRY)
    msgs = next(i.example["messages"] for i in kept if i.meta["question_id"] == "101")
    assert msgs[0] == {"role": "system", "content": "你是医生。"}
    assert msgs[2]["content"] == "高血压病人可以适量服用党参，党参有一定的降压作用。\n建议在医生指导下服用，同时监测血压。"


def test_cmedqa2_prepare_writes_one_file_per_split_and_no_question_twice(tmp_path):
    assert main(["prepare", str(ROOT / "configs/tiny/sft_lora.yaml"), f"data.output_dir={tmp_path}",
                 f"data.registries=[{CMEDQA2_REGISTRY[0]}]", "data.datasets=[cmedqa2_first]",
                 "data.max_samples=null"]) == 0
    ids = {}
    for split in ("train", "dev", "test"):
        rows = [json.loads(x) for x in (tmp_path / f"cmedqa2_first.{split}.jsonl").read_text().splitlines()]
        ids[split] = {r["meta"]["question_id"] for r in rows}
    assert ids == {"train": {"101", "102"}, "dev": {"103"}, "test": {"104", "105"}}
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["datasets"]["cmedqa2_first"]["dropped"] == {"no_answer": 1, "not_in_any_split": 1}
    dropped = [json.loads(x) for x in (tmp_path / "dropped" / "no_answer.jsonl").read_text().splitlines()]
    assert dropped[0]["row"] == {"question_id": "106", "content": "最近总是失眠，怎么办？"}
    assert dropped[0]["where"].endswith("question.csv:7")


def test_bad_registry_key_suggests(tmp_path):
    reg = tmp_path / "r.yaml"
    reg.write_text("x: {path: a.jsonl, format: alpaca, licence: MIT}\n")
    from medtune.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown key 'licence'. Did you mean 'license'"):
        resolve(["x"], [str(reg)])


BAD = [str(FIXTURES / "bad" / "registry.yaml")]


@pytest.mark.parametrize("dataset, message", [
    ("broken_jsonl", r"broken\.jsonl, line 2, column \d+: invalid JSON"),
    ("wrong_columns", r"wrong_columns\.jsonl:1: missing field 'instruction'.*the row has \['answer', 'question'\]"
                      r".*columns: \{instruction: <your column>\}"),
    ("wrong_encoding", r"gbk\.jsonl, line 1: cannot decode .* as utf-8\. The file decodes as gb18030: set "
                       r"`encoding: gb18030`"),
])
def test_malformed_files_give_a_clear_error(dataset, message):
    with pytest.raises(DataError, match=message):
        convert(dataset, BAD)


def test_cli_error_is_one_paragraph_without_traceback(tmp_path, capsys):
    code = main(["prepare", str(ROOT / "configs/tiny/sft_lora.yaml"), f"data.output_dir={tmp_path}",
                 f"data.registries=[{BAD[0]}]", "data.datasets=[broken_jsonl]"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and err.count("\n") == 1
    assert "broken.jsonl, line 2" in err and err.startswith("medtune prepare: error:")


def test_csv_with_missing_column(tmp_path):
    f = tmp_path / "dept.csv"
    f.write_bytes("科室,问题,回答\n内科,头痛怎么办,注意休息\n".encode("gb18030"))
    spec = DatasetSpec(name="t", path=str(f), format="toyhom", encoding="gb18030")
    with pytest.raises(DataError, match=r"dept\.csv, line 1: missing column\(s\) \['title', 'ask', 'answer'\]"):
        list(FORMATS.get("toyhom")(spec))
    spec.columns = {"title": "问题", "ask": "问题", "answer": "回答"}
    (item,) = FORMATS.get("toyhom")(spec)
    assert item.example["messages"][1]["content"] == "注意休息"


def test_multi_turn_reconstruction_round_trips_real_dialogues(tmp_path):
    import random

    source = shared("cmtmedqa_zhongjing/CMtMedQA_test.json")
    dialogues = [d for d in json.loads(source.read_text(encoding="utf-8"))[:40] if d.get("history")]
    rows, rng = [], random.Random(0)
    for d in dialogues:
        exchanges = [*d["history"], [d["instruction"], d["output"]]]
        turns = [{"dialogue_id": d["id"], "turn": k, "question": q, "answer": a} for k, (q, a) in enumerate(exchanges)]
        rng.shuffle(turns)  # turn numbers, not file order, give the order
        rows += turns
    (tmp_path / "turns.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "orig.json").write_text(json.dumps(dialogues, ensure_ascii=False), encoding="utf-8")
    spec = DatasetSpec(name="t", path=str(tmp_path / "turns.jsonl"), format="turns")
    rebuilt = [i.example["messages"] for i in FORMATS.get("turns")(spec)]
    original = [i.example["messages"] for i in FORMATS.get("alpaca")(DatasetSpec(name="o", path=str(tmp_path / "orig.json"), format="alpaca"))]
    assert len(rebuilt) == len(dialogues) > 10 and rebuilt == original


def test_interleaved_dialogue_rows_are_refused(tmp_path):
    rows = [{"dialogue_id": "a", "question": "q1", "answer": "a1"}, {"dialogue_id": "b", "question": "q", "answer": "a"},
            {"dialogue_id": "a", "question": "q2", "answer": "a2"}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"t\.jsonl:3: dialogue 'a' continues after other dialogues \(it ended at line 1\)"):
        list(FORMATS.get("turns")(DatasetSpec(name="t", path=str(tmp_path / "t.jsonl"), format="turns")))
