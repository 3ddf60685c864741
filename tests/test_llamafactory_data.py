"""LLaMA-Factory's dataset_info.json as a registry (entries written the way its data/dataset_info.json writes
them), and medtune's registry exported as one and read back."""

import json

import pytest
from conftest import ROOT

from medtune.cli import main
from medtune.data.datasets import load_registry, resolve
from medtune.data.formats import FORMATS
from medtune.errors import ConfigError

INFO = {
    "alpaca_zh_demo": {"file_name": "alpaca_zh_demo.json"},
    "med_alpaca_full": {"file_name": "med_alpaca_full.json",
                        "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                                    "history": "history"}},
    "glaive_toolcall_zh_demo": {"file_name": "glaive_toolcall_zh_demo.json", "formatting": "sharegpt",
                                "columns": {"messages": "conversations", "tools": "tools"}},
    "dpo_zh_demo": {"file_name": "dpo_zh_demo.json", "ranking": True, "formatting": "sharegpt",
                    "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
    "rm_alpaca": {"file_name": "rm_alpaca.json", "ranking": True,
                  "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}},
    "openai_style": {"file_name": "openai_style.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"},
                     "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                              "assistant_tag": "assistant", "system_tag": "system"}},
    "clinic_dialogue": {"file_name": "clinic", "formatting": "sharegpt",
                        "columns": {"messages": "turns", "system": "persona"},
                        "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "患者", "assistant_tag": "医生"}},
    "c4_demo": {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}},
    "kto_en_demo": {"file_name": "kto_en_demo.json", "formatting": "sharegpt",
                    "columns": {"messages": "messages", "kto_tag": "label"}},
    "mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                  "columns": {"messages": "messages", "images": "images"}},
    "alpaca_en": {"hf_hub_url": "llamafactory/alpaca_en", "ms_hub_url": "llamafactory/alpaca_en"},
    "sampled": {"file_name": "alpaca_zh_demo.json", "num_samples": 1},
}


@pytest.fixture
def registry(tmp_path):
    def put(name, rows, lines=False):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) if lines else \
            json.dumps(rows, ensure_ascii=False, indent=2)
        (tmp_path / name).write_text(text, encoding="utf-8")

    put("alpaca_zh_demo.json", [{"instruction": "头痛怎么办？", "input": "", "output": "多休息。", "history": [["x", "y"]],
                                 "system": "ignored unless mapped"},
                                {"instruction": "翻译", "input": "发烧", "output": "fever"}])
    put("med_alpaca_full.json", [{"instruction": "还需要吃药吗？", "input": "", "output": "遵医嘱。", "system": "你是医生。",
                                  "history": [["血压高怎么办？", "少吃盐。"]]}])
    put("glaive_toolcall_zh_demo.json", [
        {"conversations": [{"from": "human", "value": "查天气"}, {"from": "function_call", "value": "{}"},
                           {"from": "observation", "value": "晴"}, {"from": "gpt", "value": "晴天"}], "tools": "[...]"},
        {"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "您好"}], "tools": ""}])
    put("dpo_zh_demo.json", [{"conversations": [{"from": "human", "value": "感冒吃什么？"}],
                              "chosen": {"from": "gpt", "value": "多喝水，必要时就医。"},
                              "rejected": {"from": "gpt", "value": "随便吃抗生素。"}}])
    put("rm_alpaca.json", [{"instruction": "解释", "input": "高血压", "chosen": "血压持续升高。", "rejected": "不知道"}])
    put("openai_style.jsonl", [{"messages": [{"role": "system", "content": "助手"}, {"role": "user", "content": "问"},
                                             {"role": "assistant", "content": "答"}]}], lines=True)
    (tmp_path / "clinic").mkdir()
    (tmp_path / "clinic/part1.jsonl").write_text(json.dumps(
        {"persona": "你是儿科医生。", "turns": [{"speaker": "患者", "text": "孩子发烧"}, {"speaker": "医生", "text": "量体温"}]},
        ensure_ascii=False) + "\n", encoding="utf-8")
    put("c4_demo.jsonl", [{"text": "高血压是常见病。"}], lines=True)
    (tmp_path / "dataset_info.json").write_text(json.dumps(INFO, indent=2), encoding="utf-8")
    return tmp_path / "dataset_info.json"


def converted(name, registry):
    (spec,) = resolve([name], [str(registry)])
    items = list(FORMATS.get(spec.format)(spec))
    return [i.example for i in items if i.example], sorted(i.reason for i in items if not i.example)


def test_every_entry_reads_as_llamafactory_reads_it(registry):
    u, a = "user", "assistant"
    assert converted("alpaca_zh_demo", registry) == ([  # unmapped system/history are ignored, as LLaMA-Factory does
        {"messages": [{"role": u, "content": "头痛怎么办？"}, {"role": a, "content": "多休息。"}]},
        {"messages": [{"role": u, "content": "翻译\n发烧"}, {"role": a, "content": "fever"}]}], [])
    assert converted("med_alpaca_full", registry)[0] == [{"messages": [
        {"role": "system", "content": "你是医生。"}, {"role": u, "content": "血压高怎么办？"}, {"role": a, "content": "少吃盐。"},
        {"role": u, "content": "还需要吃药吗？"}, {"role": a, "content": "遵医嘱。"}]}]
    assert converted("glaive_toolcall_zh_demo", registry) == (
        [{"messages": [{"role": u, "content": "你好"}, {"role": a, "content": "您好"}]}], ["tool_turns"])
    assert converted("dpo_zh_demo", registry)[0] == [{"prompt": [{"role": u, "content": "感冒吃什么？"}],
                                                       "chosen": [{"role": a, "content": "多喝水，必要时就医。"}],
                                                       "rejected": [{"role": a, "content": "随便吃抗生素。"}]}]
    assert converted("rm_alpaca", registry)[0][0]["prompt"] == [{"role": u, "content": "解释\n高血压"}]
    assert converted("openai_style", registry)[0] == [{"messages": [
        {"role": "system", "content": "助手"}, {"role": u, "content": "问"}, {"role": a, "content": "答"}]}]
    assert converted("clinic_dialogue", registry)[0] == [{"messages": [  # custom role tags, a folder, a system column
        {"role": "system", "content": "你是儿科医生。"}, {"role": u, "content": "孩子发烧"}, {"role": a, "content": "量体温"}]}]
    assert converted("c4_demo", registry)[0] == [{"text": "高血压是常见病。"}]


@pytest.mark.parametrize("name, message", [
    ("kto_en_demo", "unpaired KTO feedback (kto_tag)"),
    ("mllm_demo", "it is multimodal (images); medtune trains text models"),
    ("alpaca_en", "it names 'llamafactory/alpaca_en' on a hub or in a script, and medtune reads local files"),
    ("sampled", "it sets num_samples, which medtune does not apply"),
])
def test_entries_medtune_cannot_honour_say_why_when_used(registry, name, message):
    assert name in load_registry([str(registry)])  # listed (ls datasets shows why), refused only when used
    with pytest.raises(ConfigError, match="cannot be used") as e:
        resolve([name], [str(registry)])
    assert message in str(e.value) and str(registry) in str(e.value)


def test_bad_dataset_info_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "dataset_info.json"
    bad.write_text(json.dumps({"x": {"file_name": "a.json", "formating": "sharegpt"}}))
    assert main(["ls", "datasets", "--registries", str(bad)]) == 2
    assert "dataset 'x': unknown attribute 'formating'" in capsys.readouterr().err
    bad.write_text("{not json")
    assert main(["ls", "datasets", "--registries", str(bad)]) == 2
    assert "not valid JSON (line 1" in capsys.readouterr().err


def test_prepare_trains_from_a_dataset_info_and_the_sha1_is_checked(registry, tmp_path, caplog):
    info = json.loads(registry.read_text())
    info["alpaca_zh_demo"]["file_sha1"] = "0" * 40
    registry.write_text(json.dumps(info))
    assert main(["prepare", str(ROOT / "configs/tiny/sft_lora.yaml"), f"data.output_dir={tmp_path / 'prep'}",
                 f"data.registries=[{registry}]", "data.datasets=[alpaca_zh_demo, clinic_dialogue]", "data.test_size=0",
                 "data.steps=[]"]) == 0
    report = json.loads((tmp_path / "prep/report.json").read_text())
    assert {k: v["kept"] for k, v in report["datasets"].items()} == {"alpaca_zh_demo": 2, "clinic_dialogue": 1}
    assert "not the file_sha1 0000000000000000000000000000000000000000" in caplog.text


def test_export_writes_a_dataset_info_that_reads_back_to_the_same_rows(registry, tmp_path, capsys):
    out = tmp_path / "exported/dataset_info.json"
    out.parent.mkdir()
    yaml_reg = tmp_path / "reg.yaml"
    yaml_reg.write_text(f"""
alp: {{path: {tmp_path / 'med_alpaca_full.json'}, format: alpaca, license: test}}
oa: {{path: {tmp_path / 'openai_style.jsonl'}, format: openai, license: test}}
pw: {{path: {tmp_path / 'rm_alpaca.json'}, format: pairwise, columns: {{prompt: instruction}}, license: test}}
toy: {{path: {ROOT / 'src/medtune/data/samples/toyhom_neike_sample.csv'}, format: toyhom, encoding: gb18030, license: MIT}}
""")
    assert main(["ls", "datasets", "--registries", str(yaml_reg), "--export", "dataset_info", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped toy: format toyhom: LLaMA-Factory has no reader for it" in printed
    info = json.loads(out.read_text())
    assert info["oa"] == {"file_name": "../openai_style.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"},
                          "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                   "assistant_tag": "assistant", "system_tag": "system"}}
    assert info["pw"]["ranking"] is True and info["pw"]["columns"]["prompt"] == "instruction"
    for name in ("alp", "oa"):
        assert converted(name, out) == converted(name, yaml_reg)
    assert converted("pw", out)[0][0]["chosen"] == converted("pw", yaml_reg)[0][0]["chosen"]
