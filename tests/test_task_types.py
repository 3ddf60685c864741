"""A task type is one registered object: a new one, defined here and nowhere else, runs through
`medtune eval` end to end (loading, scoring, CIs, paired differences, its own report section)."""

import json

import pytest
import yaml

from medtune.cli import main
from medtune.eval import task_types
from medtune.eval.records import load_qa
from medtune.eval.task_types import TASK_TYPES, TaskType, answers
from medtune.eval.tasks import TaskData, data_files


class YesNo(TaskType):
    """是/否 questions: an answer is right when it starts with the gold word."""

    name = "yes_no"
    metrics = ("correct",)
    labels = {"correct": "yes/no accuracy"}

    def load(self, task, ev):
        return TaskData(task, load_qa(task.path(task.data)), files=data_files(task))

    def run(self, td, s, ev, rules):
        return {"generate": [{"id": r["id"], "output": o, "correct": int(o.strip().startswith(r["reference"]))}
                             for r, o in zip(td.items, answers(td, s, ev), strict=True)]}

    def details(self, td, rows):
        return {"said_yes": sum(r["output"].startswith("是") for r in rows)}

    def report(self, summary, charts):
        rows = [[n, m, str(d["said_yes"])] for n, t in summary["tasks"].items() if t["type"] == self.name
                for m, d in t["modes"]["generate"]["models"].items()]
        return [("h", 2, "Yes/no details"), ("table", ["task", "model", "said 是"], rows)] if rows else []


@pytest.fixture
def yes_no():
    task_types.names()
    TASK_TYPES.register("yes_no", "是/否 questions")(YesNo)
    yield
    TASK_TYPES._items.pop("yes_no")
    TASK_TYPES._help.pop("yes_no")
    task_types._instance.cache_clear()


def test_a_new_task_type_is_one_object(tmp_path, yes_no, capsys):
    items = [("q1", "阿司匹林是抗血小板药吗？", "是"), ("q2", "胰岛素可以口服吗？", "否"),
             ("q3", "高血压需要长期管理吗？", "是"), ("q4", "抗生素能治病毒感冒吗？", "否")]
    data = tmp_path / "yn.jsonl"
    data.write_text("".join(json.dumps({"id": i, "question": q, "answer": a}, ensure_ascii=False) + "\n"
                            for i, q, a in items), encoding="utf-8")
    outputs = {"always_yes": ["是"] * 4, "right": [a for *_, a in items]}
    models = []
    for name, outs in outputs.items():
        f = tmp_path / f"{name}.jsonl"
        f.write_text("".join(json.dumps({"task": "yn", "id": i, "output": o}, ensure_ascii=False) + "\n"
                             for (i, *_), o in zip(items, outs, strict=True)), encoding="utf-8")
        models.append({"name": name, "predictions": str(f)})
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name_or_path": "tiny:llama", "template": "chatml"}, "eval": {
        "tasks": [{"name": "yn", "type": "yes_no", "data": str(data)}], "models": models, "modes": ["generate"],
        "output_dir": str(tmp_path / "out"), "bootstrap": 200}}, allow_unicode=True), encoding="utf-8")
    assert main(["eval", str(cfg)]) == 0
    res = json.loads((tmp_path / "out/results.json").read_text(encoding="utf-8"))
    block = res["tasks"]["yn"]["modes"]["generate"]
    assert res["tasks"]["yn"]["items"] == 4
    assert block["models"]["always_yes"]["metrics"]["correct"]["value"] == 0.5
    assert block["models"]["right"] == {**block["models"]["right"], "n": 4, "said_yes": 2}
    assert block["vs_reference"]["right"]["correct"]["diff"] == pytest.approx(0.5)
    report = (tmp_path / "out/report.md").read_text(encoding="utf-8")
    assert "| yn | generate | yes/no accuracy | 4 | 50.0 [" in report
    assert "## Yes/no details" in report and "| yn | right | 2 |" in report and "| yn | always_yes | 4 |" in report
    capsys.readouterr()
    assert main(["ls", "task-types"]) == 0
    listed = capsys.readouterr().out
    assert "yes_no" in listed and "multiple_choice" in listed and "rubric" in listed


def test_an_unknown_type_names_the_registered_ones(tmp_path, capsys):
    data = tmp_path / "x.jsonl"
    data.write_text('{"id": "1", "question": "q", "answer": "a"}\n', encoding="utf-8")
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name_or_path": "tiny:llama"}, "eval": {
        "tasks": [{"name": "x", "type": "open_q", "data": str(data)}], "output_dir": str(tmp_path / "o")}}))
    assert main(["eval", str(cfg)]) == 2
    assert "task 'x': type 'open_q' is not one of grounded_qa, multiple_choice, open_qa, ranking, refusal, retrieval, rubric." \
        in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
