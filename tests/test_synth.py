"""medtune synth against a live `medtune serve` on 127.0.0.1 (no HTTP mocks).

The generator is a tiny model trained here to answer the exact prompts medtune synth sends with
scripted replies (some good, some that a quality gate must reject), so every task runs end to end
with real requests, real decoding and real parsing. Resumability is tested by killing the synth
process mid-run; retries by a server with serve.max_queue=1 answering 429 to concurrent requests.
"""

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import yaml
from conftest import ROOT, train_scripted
from test_serve import free_port

from medtune.cli import main
from medtune.config import load_config
from medtune.synth.tasks import get, grounding, prompt_source, render

pytest.importorskip("openai")

# Per task: the scripted replies for its first sources, and what the run must make of them.
REPLIES = {
    "self_instruct": ['[{"question": "高血压的诊断标准是什么？", "answer": "收缩压不低于140毫米汞柱和（或）舒张压不低于90毫米汞柱，即可诊断为高血压。"}]',
                      '[{"question": "糖尿病能根治吗？", "answer": "可以通过针灸彻底根治。"}]'],
    "refusal": ["抱歉，我是医疗健康助手，无法帮你编写程序。如有健康问题欢迎咨询。", "今天推荐买入股票A，涨势很好。"],
    "kg_qa": ['[{"question": "痛风应该看什么科？", "answer": "痛风应到风湿免疫科就诊，可查血尿酸。"}]'],
    "report_structuring": ['{"检查部位": "头颅", "影像所见": "左侧基底节区见片状低密度影，边界欠清。", "诊断意见": "左侧基底节区腔隙性脑梗死。"}',
                           '{"检查部位": "腹部"}'],
    "multi_turn": ['[{"role": "患者", "content": "小腹痛怎么回事？"}, {"role": "医生", "content": "吃过什么药吗？"}, '
                   '{"role": "患者", "content": "吃了避孕药。"}, {"role": "医生", "content": "建议做小腹彩超检查。"}]'],
}
EXPECT = {"self_instruct": (1, {"ungrounded": 1}), "refusal": (1, {"not_a_refusal": 1}), "kg_qa": (1, {}),
          "report_structuring": (1, {"missing_fields": 1}), "multi_turn": (1, {})}


def _teacher_rows():
    rows = []
    for task, replies in REPLIES.items():
        cfg = load_config(ROOT / f"configs/synth/{task}.yaml")
        t = get(task)
        _, text = prompt_source(t, cfg.synth)
        for s, reply in zip(list(t.read(ROOT / cfg.synth.input, cfg.synth)), replies, strict=False):
            rows.append({"messages": render(text, s, cfg.synth) + [{"role": "assistant", "content": reply}]})
    return rows


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    teacher = train_scripted(tmp_path_factory.mktemp("synth_teacher"), _teacher_rows(), steps=150, name="teacher")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "medtune.cli", "serve", str(ROOT / "configs/tiny/chat.yaml"),
                             f"model.name_or_path={teacher}", "generation.do_sample=false",
                             "generation.repetition_penalty=1.0", "generation.max_new_tokens=200",
                             f"serve.port={port}", "serve.max_queue=1"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url + "/v1"
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # the example configs name their inputs relative to the repository


def synth(task, url, out, *overrides):
    return main(["synth", str(ROOT / f"configs/synth/{task}.yaml"), f"synth.endpoint.base_url={url}",
                 f"synth.output_dir={out}", "synth.temperature=0", "synth.backoff=0.05", "synth.max_retries=50",
                 *overrides])


@pytest.mark.parametrize("task", list(REPLIES))
def test_each_task_end_to_end_with_gates_and_provenance(task, server, tmp_path):
    out = tmp_path / task
    assert synth(task, server, out, f"synth.limit={len(REPLIES[task])}") == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    accepted, rejected = EXPECT[task]
    assert (report["done"], report["accepted_rows"], report["rejected"]) == (len(REPLIES[task]), accepted, rejected)
    rows = [json.loads(x) for x in (out / "data.jsonl").read_text(encoding="utf-8").splitlines()]
    prov = rows[0]["meta"]["synth"]
    assert prov["generator"] == "teacher" and prov["task"] == task and len(prov["prompt_sha256"]) == 16
    assert prov["source"].startswith(str(ROOT / "src/medtune") + "/") and prov["source_id"]  # the path as resolved
    for reason, n in rejected.items():
        lines = (out / "rejected" / f"{reason}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == n and json.loads(lines[0])["where"]
    # The output is a dataset `medtune prepare` (and so `train`) reads as is.
    assert main(["prepare", str(ROOT / "configs/tiny/sft_lora.yaml"), f"train.output_dir={tmp_path / 'run'}",
                 f"data.registries=[{out / 'datasets.yaml'}]", f"data.datasets=[synth_{task}]", "data.test_size=0"]) == 0
    prepared = json.loads((tmp_path / "run/data/report.json").read_text(encoding="utf-8"))
    assert prepared["kept"] == accepted and not prepared["dropped"]
    if task == "self_instruct":
        assert rows[0]["messages"][0]["content"] == "高血压的诊断标准是什么？"
    if task == "multi_turn":
        assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant", "user", "assistant"]
    if task == "report_structuring":
        assert json.loads(rows[0]["messages"][1]["content"])["诊断意见"] == "左侧基底节区腔隙性脑梗死。"


def test_outputs_feed_prepare_and_train(server, tmp_path):
    out = tmp_path / "si"
    assert synth("self_instruct", server, out, "synth.limit=2") == 0
    run = tmp_path / "run"
    assert main(["train", str(ROOT / "configs/tiny/sft_lora.yaml"), f"train.output_dir={run}",
                 f"data.registries=[{out / 'datasets.yaml'}]", "data.datasets=[synth_self_instruct]",
                 "data.test_size=0", "train.eval_strategy=no", "train.max_steps=2", "train.save_steps=100"]) == 0
    prepared = [json.loads(x) for x in (run / "data" / "synth_self_instruct.jsonl").read_text(encoding="utf-8").splitlines()]
    assert prepared[0]["meta"]["synth"]["generator"] == "teacher"  # provenance survives prepare
    assert (run / "adapter_config.json").exists()


def test_dedup_against_existing_data(server, tmp_path):
    existing = tmp_path / "existing.jsonl"
    existing.write_text(json.dumps({"messages": [{"role": "user", "content": "高血压的诊断标准是什么？"},
                                                 {"role": "assistant", "content": "……"}]}, ensure_ascii=False) + "\n")
    out = tmp_path / "dedup"
    assert synth("self_instruct", server, out, "synth.limit=1", f"synth.dedup_against=[{existing}]") == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["accepted_rows"] == 0 and report["rejected"] == {"duplicate_exact": 1}


def test_retries_when_the_server_is_busy(server, tmp_path):
    """serve.max_queue=1 answers 429 (with Retry-After) to concurrent requests; synth backs off and retries
    until every source is done."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"请帮我写第{i}首关于春天的诗。" for i in range(16)), encoding="utf-8")
    out = tmp_path / "busy"
    assert synth("refusal", server, out, f"synth.input={prompts}", "synth.concurrency=8", "synth.max_tokens=64",
                 "synth.max_retries=50") == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["done"] == 16 and report["usage"]["retries"] > 0
    assert report["usage"]["errors"]["RateLimitError"] == report["usage"]["retries"]


def test_a_killed_run_resumes_without_duplicates_or_losses(server, tmp_path):
    prompts = tmp_path / "prompts.txt"
    total = 120  # enough that each signal lands mid-run even on a busy machine
    prompts.write_text("\n".join(f"第{i}个问题：帮我写一段关于大海的文字。" for i in range(total)), encoding="utf-8")
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "medtune.cli", "synth", str(ROOT / "configs/synth/refusal.yaml"),
            f"synth.input={prompts}", f"synth.output_dir={out}", f"synth.endpoint.base_url={server}",
            "synth.temperature=0", "synth.concurrency=1", "synth.max_tokens=48"]
    ledger = out / "ledger.jsonl"

    def run_until(n_lines, sig):
        # A shell starts background jobs with SIGINT ignored, and children inherit that: give the run a
        # normal Ctrl-C whatever started pytest.
        proc = subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        while proc.poll() is None and (not ledger.exists() or len(ledger.read_bytes().splitlines()) < n_lines):
            time.sleep(0.05)
        proc.send_signal(sig)
        return proc.wait(timeout=60), proc.stderr.read().decode()

    code, _ = run_until(5, signal.SIGKILL)
    assert code == -signal.SIGKILL
    killed_at = len(ledger.read_bytes().splitlines())
    assert 5 <= killed_at < total - 10
    code, err = run_until(killed_at + 5, signal.SIGINT)  # Ctrl-C: the finished rows are kept and reported
    assert code == 130 and "interrupted" in err
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["done"] >= killed_at + 5
    assert subprocess.run(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True).returncode == 0
    ids = [json.loads(x)["id"] for x in ledger.read_text(encoding="utf-8").splitlines()]
    assert len(ids) == len(set(ids)) == total
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["done"] == total and report["accepted_rows"] + sum(report["rejected"].values()) == total


def test_unreachable_endpoint_and_missing_fields_are_clear_errors(tmp_path, capsys):
    cfg = ROOT / "configs/synth/kg_qa.yaml"
    port = free_port()
    assert main(["synth", str(cfg), f"synth.endpoint.base_url=http://127.0.0.1:{port}/v1", "synth.max_retries=1",
                 "synth.backoff=0.01", f"synth.output_dir={tmp_path / 'x'}"]) == 2
    assert "still failing after 1 retries (APIConnectionError" in capsys.readouterr().err
    bad = tmp_path / "triples.csv"
    bad.write_text("disease,rel,value\n痛风,症状,关节痛\n", encoding="utf-8")
    assert main(["synth", str(cfg), f"synth.input={bad}", f"synth.output_dir={tmp_path / 'y'}"]) == 2
    err = capsys.readouterr().err
    assert "triples.csv:2: field 'head' is missing" in err and "synth.fields" in err


def test_grounding_and_yaml_examples():
    assert grounding("高血压诊断", "高血压的诊断标准") == pytest.approx(3 / 4)  # 高血 血压 诊断 of 4 bigrams
    for task in REPLIES:
        cfg = yaml.safe_load((ROOT / f"configs/synth/{task}.yaml").read_text(encoding="utf-8"))
        # Relative to the config file (the one path rule).
        assert cfg["synth"]["task"] == task and (ROOT / "configs/synth" / cfg["synth"]["input"]).is_file()
