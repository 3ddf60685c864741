"""tools/compare_predictions.py: models from different eval runs compared on the items they share."""

import json
import subprocess
import sys

from conftest import ROOT

TOOL = str(ROOT / "tools/compare_predictions.py")


def write(folder, name, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_only_shared_items_are_compared_with_paired_differences(tmp_path):
    # run 1 scored 4 items, run 2 a subset of 2 (plus one item run 1 never saw)
    write(tmp_path / "a", "harm.generate.jsonl", [{"id": f"q{i}", "refused": r} for i, r in enumerate([0, 0, 1, 0])])
    write(tmp_path / "b", "harm.generate.jsonl", [{"id": "q0", "refused": 1}, {"id": "q2", "refused": 1},
                                                  {"id": "q9", "refused": 0}])
    write(tmp_path / "a", "only_in_a.cloze.jsonl", [{"id": "x", "correct": True}])
    done = subprocess.run([sys.executable, TOOL, f"base={tmp_path / 'a'}", f"arm={tmp_path / 'b'}"],
                          capture_output=True, text=True, check=True)
    rows = done.stdout.strip().splitlines()
    assert rows[0] == "| task.mode | N | base | arm | arm − base |"
    assert len(rows) == 3  # header, rule, the one task both runs have
    # items q0, q2: base refused 1 of 2, the arm both
    assert rows[2].startswith("| harm.generate | 2 | 50.0 [") and "| 100.0 [100.0, 100.0] | +50.0 [" in rows[2]


def test_a_file_without_per_item_scores_is_refused(tmp_path):
    write(tmp_path / "a", "qa.generate.jsonl", [{"id": "q0", "output": "..."}])
    done = subprocess.run([sys.executable, TOOL, str(tmp_path / "a"), str(tmp_path / "a")], capture_output=True, text=True)
    assert done.returncode == 1 and "only refusal and multiple-choice files compare" in done.stderr
    missing = subprocess.run([sys.executable, TOOL, str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 1 and "not a predictions folder" in missing.stderr
