"""What a new user trips over in the first hour (issue 11): each defect through the CLI, as they hit it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from medtune.cli import main
from medtune.config import load_config
from medtune.errors import ConfigError

LORA = str(ROOT / "configs/tiny/sft_lora.yaml")
RM = str(ROOT / "configs/tiny/rm_lora.yaml")
QUICK = ["data.max_samples=16", "data.test_size=0", "train.eval_strategy=no", "train.max_steps=1",
         "train.save_steps=100"]


def _registry(d, name, rows, fmt="alpaca", **extra):
    (d / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    entry = {"path": f"{name}.jsonl", "format": fmt, "license": "test", "source": "test", **extra}
    (d / f"{name}.yaml").write_text(json.dumps({name: entry}, ensure_ascii=False), encoding="utf-8")
    return d / f"{name}.yaml"


def _prepare(tmp_path, reg, name, *more):
    out = tmp_path / "prep"
    assert main(["prepare", LORA, f"data.registries=[{reg}]", f"data.datasets=[{name}]", f"data.output_dir={out}",
                 "data.max_samples=null", "data.test_size=0", *more]) == 0
    rows = [json.loads(x) for x in (out / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()] \
        if (out / f"{name}.jsonl").exists() else []
    return out, rows, json.loads((out / "report.json").read_text())


# 1. redact must not replace ordinary words after 患者 / 病人
def test_redaction_keeps_ordinary_words_after_patient(tmp_path):
    texts = {"患者叶酸的水平偏低，需要补充吗？": "患者叶酸的水平偏低，需要补充吗？",
             "患者曾经是吸烟者，现在咳嗽。": "患者曾经是吸烟者，现在咳嗽。",
             "病人常常会头晕，怎么办？": "病人常常会头晕，怎么办？",
             "病人黄芪的用量是多少？": "病人黄芪的用量是多少？",
             "患者张伟的血压偏高怎么办？": "患者<NAME_1>的血压偏高怎么办？"}
    reg = _registry(tmp_path, "notes", [{"instruction": q, "output": "请遵医嘱。"} for q in texts])
    _, rows, report = _prepare(tmp_path, reg, "notes", "data.steps=[redact]")
    assert [r["messages"][0]["content"] for r in rows] == list(texts.values())
    assert report["pii_replaced"] == {"NAME": 1}


# 3. JSON numbers, booleans, lists and objects in text fields are dropped with the field, not stringified
def test_wrong_types_are_dropped_with_the_field_and_list_answers_become_answers(tmp_path):
    rows = [{"instruction": "头痛怎么办？", "output": "多休息。"},
            {"instruction": "发烧怎么办？", "output": ["多喝水。", "及时就医。"]},   # several answers (Huatuo-26M raw)
            {"instruction": "咳嗽怎么办？", "output": 123},
            {"instruction": True, "output": "不知道。"},
            {"instruction": "腹泻怎么办？", "output": {"text": "补液"}},
            {"instruct": "失眠怎么办？", "output": "规律作息。"}]                   # CMtMedQA's second spelling
    reg = _registry(tmp_path, "mixed", rows, columns={"instruction": ["instruction", "instruct"]})
    out, kept, report = _prepare(tmp_path, reg, "mixed")
    answers = [r["messages"][1]["content"] for r in kept]
    assert answers == ["多休息。", "多喝水。", "及时就医。", "规律作息。"]
    assert not any("[" in a or "123" in a or "True" in a for r in kept for a in (m["content"] for m in r["messages"]))
    assert report["dropped"] == {"wrong_type": 3}
    dropped = [json.loads(x) for x in (out / "dropped/wrong_type.jsonl").read_text().splitlines()]
    assert [(d["field"], d["type"], d["where"].rsplit(":", 1)[1]) for d in dropped] == \
        [("output", "int", "3"), ("instruction", "bool", "4"), ("output", "dict", "5")]


def test_missing_field_drop_names_the_field(tmp_path):
    rows = [{"instruction": "头痛怎么办？", "output": "多休息。"}, {"instruct": "失眠怎么办？", "output": "早睡。"}]
    out, kept, report = _prepare(tmp_path, _registry(tmp_path, "two", rows), "two")
    assert report["dropped"] == {"missing_field": 1}
    assert json.loads((out / "dropped/missing_field.jsonl").read_text())["field"] == "instruction"


# 2. rm counts and reports the pairs it drops; a vanished eval split is an error, not a silence
def test_rm_reports_pairs_dropped_for_length(tmp_path, capsys):
    assert main(["train", RM, f"train.output_dir={tmp_path / 'rm'}", "data.max_length=110", "data.test_size=0",
                 "train.eval_strategy=no", "train.max_steps=1"]) == 0
    m = json.loads((tmp_path / "rm" / "metrics.json").read_text())
    assert m["dropped_too_long"]["train"] > 0
    assert m["train_pairs"] + m["dropped_too_long"]["train"] == m["prepared_pairs"]["train"] == 120
    assert main(["train", RM, f"train.output_dir={tmp_path / 'rm2'}", "data.max_length=20", "data.test_size=16",
                 "train.eval_strategy=steps", "train.max_steps=1"]) == 2
    assert "longer than data.max_length=20" in capsys.readouterr().err


# 4. one path rule: relative to the file that names the path
def test_relative_paths_follow_the_file_that_names_them(tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    (proj / "configs").mkdir(parents=True)
    (proj / "data").mkdir()
    _registry(proj / "data", "qa", [{"instruction": f"问题{i}", "output": "回答。"} for i in range(8)])
    (proj / "configs" / "run.yaml").write_text(
        "model: {name_or_path: 'tiny:llama'}\n"
        "data: {registries: [../data/qa.yaml], datasets: [qa]}\n"
        "compare: {questions: ../data/q.jsonl}\n"
        "train: {output_dir: ../outputs/run, max_steps: 1, eval_strategy: 'no'}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # anywhere but the project: the config still means the same files
    cfg = load_config(proj / "configs" / "run.yaml", ["model.adapters=[elsewhere/a]"])
    assert cfg.data.registries == [str(proj / "data" / "qa.yaml")]
    assert cfg.compare.questions == str(proj / "data" / "q.jsonl")
    assert cfg.train["output_dir"] == str(proj / "outputs" / "run")
    assert cfg.model.adapters == [str(tmp_path / "elsewhere" / "a")]  # the command line: the working directory
    assert main(["train", str(proj / "configs" / "run.yaml")]) == 0
    assert (proj / "outputs" / "run" / "adapter_model.safetensors").is_file()


# 5. validate and every verb check types, data shape, template, method and model before any work
@pytest.mark.parametrize("override, message", [
    ("train.learning_rate=abc", "train.learning_rate must be a float; got 'abc'"),
    ("train.max_steps=2.5", "train.max_steps must be an integer"),
    ("model.template=chatmll", "Unknown chat template"),
    ("finetune.method=lroa", "Unknown method 'lroa'. Did you mean 'lora'?"),
    ("model.name_or_path=tiny:lama", "unknown tiny architecture"),
    ("model.name_or_path=./no/such/model", "does not exist"),
    ("data.datasets=[toyhom_pairs]", "Stage sft trains on a conversation format"),
])
def test_mistakes_are_reported_before_data_preparation(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert main(["validate", LORA, f"train.output_dir={out}", override]) == 2
    assert message in capsys.readouterr().err
    assert main(["train", LORA, f"train.output_dir={out}", override]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "data").exists()  # nothing was prepared


def test_pt_on_conversations_and_dpo_on_text_are_refused(tmp_path, capsys):
    assert main(["validate", str(ROOT / "configs/tiny/pt_lora.yaml"), "data.datasets=[toyhom_neike_sample]"]) == 2
    assert "Stage pt trains on format `text`" in capsys.readouterr().err
    assert main(["validate", str(ROOT / "configs/tiny/dpo_lora.yaml"), "data.datasets=[toyhom_answers]"]) == 2
    assert "Stage dpo trains on format `pairwise`" in capsys.readouterr().err


# 6. compatibility: architecture, reward adapters, exported folders and their template
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("compat")
    assert main(["train", LORA, f"train.output_dir={d / 'lora'}", *QUICK]) == 0
    assert main(["train", RM, f"train.output_dir={d / 'rm'}", "data.test_size=0", "train.eval_strategy=no",
                 "train.max_steps=1"]) == 0
    assert main(["export", LORA, f"train.output_dir={d / 'lora'}", f"export.output_dir={d / 'merged'}"]) == 0
    return d


def test_lora_on_another_architecture_is_refused(runs):
    from medtune.model.load import load_model

    cfg = load_config(LORA, ["model.name_or_path=tiny:qwen2", f"model.adapters=[{runs / 'lora'}]"])
    with pytest.raises(ConfigError, match="was trained on 'tiny:llama'"):
        load_model(cfg.model)


def test_reward_adapter_cannot_chat_or_start_dpo(runs, tmp_path, capsys):
    from medtune.model.load import load_model

    with pytest.raises(ConfigError, match="is a reward model"):
        load_model(load_config(LORA, [f"model.adapters=[{runs / 'rm'}]"]).model)
    assert main(["train", str(ROOT / "configs/tiny/dpo_lora.yaml"), f"train.output_dir={tmp_path}",
                 f"model.adapters=[{runs / 'rm'}]"]) == 2
    assert "is a reward model" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_exported_folder_refuses_another_template(runs):
    from medtune.model.load import load_model

    with pytest.raises(ConfigError, match="trained \\(or exported\\) with chat template 'chatml'"):
        load_model(load_config(LORA, [f"model.name_or_path={runs / 'merged'}", "model.template=gemma"]).model)
    assert json.loads((runs / "merged" / "lineage.json").read_text())["absorbs"] == [str((runs / "lora").resolve())]


# 10. smaller: resume error lists checkpoints; no bitsandbytes 'kernels' warning; save_total_limit said
def test_resume_error_lists_the_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", LORA, f"train.output_dir={out}", *QUICK[:-2], "train.max_steps=2", "train.save_steps=1"]) == 0
    assert main(["train", LORA, f"train.output_dir={out}", *QUICK, f"train.resume_from_checkpoint={out}/checkpoint-9"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint-1, checkpoint-2" in err and "save_total_limit" in err


def test_cli_output_has_no_kernels_warning_and_states_the_checkpoint_limit(tmp_path):
    r = subprocess.run([sys.executable, "-m", "medtune", "train", LORA, f"train.output_dir={tmp_path}", *QUICK],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "No module named 'kernels'" not in r.stderr + r.stdout
    assert "keeping the newest 3 checkpoints" in r.stderr


# 8. terminal chat: Ctrl-C stops the answer and keeps the chat; /help is not sent to the model
def test_chat_ctrl_c_stops_the_answer_and_keeps_the_session(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medtune", "chat", str(ROOT / "configs/tiny/chat.yaml"),
                             "generation.max_new_tokens=4000", "generation.do_sample=true", "chat.system=null"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out = []

    def read_until(marker, timeout=120):
        end = time.time() + timeout
        while time.time() < end:
            ch = proc.stdout.read(1)
            if not ch:
                break
            out.append(ch)
            if "".join(out).endswith(marker):
                return
        raise AssertionError("".join(out)[-500:])

    read_until("用户> ")
    proc.stdin.write("/help\n")
    proc.stdin.flush()
    read_until("用户> ")
    proc.stdin.write("头痛怎么办？\n")
    proc.stdin.flush()
    read_until("助手> ")
    time.sleep(1.0)  # mid-answer (4,000 tokens of a random model take far longer)
    proc.send_signal(signal.SIGINT)
    read_until("用户> ")
    proc.stdin.write("/exit\n")
    proc.stdin.flush()
    rest, err = proc.communicate(timeout=60)
    text = "".join(out) + rest
    assert proc.returncode == 0, err[-2000:]
    assert "(已停止 / stopped)" in text
    assert text.count("助手> ") == 1  # /help was answered by medtune, not sent to the model
    assert text.count("Ctrl-C stops the answer") == 2  # the banner and /help
