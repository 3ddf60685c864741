"""Faults injected by hand (issue 20): one request must not spoil another's answer, resume must survive
repeated kills, no folder may look complete when it is not, I/O faults are messages."""

import hashlib
import json
import shutil
import subprocess
import threading

import pytest
from conftest import QA, ROOT

from medtune.cli import main
from medtune.config import load_config
from medtune.errors import ConfigError

LORA = str(ROOT / "configs/tiny/sft_lora.yaml")
QUICK = ["data.max_samples=16", "data.test_size=0", "train.eval_strategy=no", "train.logging_steps=1",
         "train.per_device_train_batch_size=4", "train.learning_rate=1e-2"]


# 1. one bad row in a batch fails only its own request
def test_a_failing_row_does_not_empty_its_batch_mates(trained):
    from medtune.infer.batching import Request
    from medtune.infer.engine import ChatEngine

    cfg = load_config(LORA, [f"model.name_or_path={trained}", "generation.do_sample=false",
                             "generation.repetition_penalty=1.0", "generation.max_new_tokens=16"])
    engine = ChatEngine(cfg.model, cfg.generation, max_batch_size=8, max_wait_ms=300)
    params = {k: getattr(cfg.generation, k) for k in ("do_sample", "temperature", "top_p", "top_k",
                                                      "repetition_penalty", "num_beams", "min_new_tokens")}
    done = [threading.Event() for _ in range(8)]
    texts = [[] for _ in range(8)]

    def emit(i):
        return lambda p: done[i].set() if p is None else texts[i].append(p)

    requests = []
    for i in range(8):
        # Row 0 carries a seed torch refuses (the batcher seeds a group with its first row's seed):
        # before, the whole batch failed and seven good requests got empty answers.
        seed = 2**64 if i == 0 else None
        ids = engine.prompt_ids([{"role": "user", "content": "头痛怎么办？"}])
        requests.append(engine.batcher.submit(Request(ids=ids, params=params, max_new_tokens=16, emit=emit(i),
                                                      seed=seed)))
    for e in done:
        assert e.wait(60)
    engine.close()
    assert requests[0].finish_reason.startswith("error")
    for i, r in enumerate(requests):
        if i != 0:
            assert r.finish_reason == "stop" and engine.clean("".join(texts[i])) == QA["头痛怎么办？"], i


def test_generation_config_out_of_range_is_refused_before_loading():
    from medtune.infer.engine import ChatEngine

    cfg = load_config(LORA, ["generation.top_p=-1"])
    with pytest.raises(ConfigError, match="generation.top_p=-1.0 is outside"):
        ChatEngine(cfg.model, cfg.generation)


# 2 + 4. two kills at the same checkpoint, then resume; metrics right after resuming
def _torn(out, step):
    torn = out / f"checkpoint-{step}"
    torn.mkdir()
    (torn / "adapter_model.safetensors").write_bytes(b"\0" * 10)  # a save cut short: no COMPLETE marker


def test_two_kills_at_one_checkpoint_then_resume_with_right_metrics(tmp_path):
    out = tmp_path / "run"
    args = [*QUICK, "train.max_steps=2", "train.save_steps=2"]
    assert main(["train", LORA, f"train.output_dir={out}", *args]) == 0
    straight = json.loads((out / "metrics.json").read_text())
    for _ in range(2):  # the same interrupted save twice: the second set-aside used to fail
        _torn(out, 4)
        assert main(["train", LORA, f"train.output_dir={out}", *args, "train.resume_from_checkpoint=true"]) == 0
    assert (out / "incomplete-checkpoint-4").is_dir() and (out / "incomplete-checkpoint-4-2").is_dir()
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["global_step"] == straight["global_step"] == 2  # transformers alone would train a third step
    # Resuming at the last checkpoint ran no step: the run's loss and time are still the run's.
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-6) and resumed["train_loss"] > 0
    # The time carried is the one the last checkpoint recorded (a session that trains nothing adds ~0):
    # compared with that record, not with the straight run's clock, which also counts its final save.
    recorded = json.loads((out / "checkpoint-2" / "medtune_progress.json").read_text())["elapsed_s"]
    assert straight["train_runtime"] >= recorded > 0 and resumed["train_runtime"] >= recorded
    assert (out / "COMPLETE").is_file()


def test_resume_from_an_earlier_checkpoint_reports_the_straight_runs_loss(tmp_path):
    out = tmp_path / "run"
    args = [*QUICK, "train.max_steps=4", "train.save_steps=2", "train.save_total_limit=null"]
    assert main(["train", LORA, f"train.output_dir={out}", *args]) == 0
    straight = json.loads((out / "metrics.json").read_text())
    copy = tmp_path / "copy"
    shutil.copytree(out / "checkpoint-2", copy / "checkpoint-2")
    shutil.copy(out / "lineage.json", copy)
    assert main(["train", LORA, f"train.output_dir={copy}", *args, f"train.resume_from_checkpoint={copy}/checkpoint-2"]) == 0
    assert json.loads((copy / "metrics.json").read_text())["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-5)


# 3. folders that look complete and are not
def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_killed_re_export_leaves_the_previous_export_whole(tmp_path, monkeypatch):
    import medtune.export as export

    run = tmp_path / "run"
    assert main(["train", LORA, f"train.output_dir={run}", *QUICK, "train.max_steps=1"]) == 0
    merged = tmp_path / "merged"
    assert main(["export", LORA, f"train.output_dir={run}", f"export.output_dir={merged}"]) == 0
    before = _digest(merged)
    assert "COMPLETE" in before

    def killed(*a, **k):
        raise KeyboardInterrupt  # as if the process died after the weights were written

    monkeypatch.setattr(export, "dump_config", killed)
    assert main(["export", LORA, f"train.output_dir={run}", f"export.output_dir={merged}", "export.dtype=float16"]) == 130
    assert _digest(merged) == before  # not new weights beside the old README and config
    assert not list(tmp_path.glob(".merged.*"))  # no build folder left behind


def test_a_folder_without_its_marker_is_never_loaded(tmp_path):
    from medtune.model.load import load_model

    run = tmp_path / "run"
    assert main(["train", LORA, f"train.output_dir={run}", *QUICK, "train.max_steps=1"]) == 0
    (run / "COMPLETE").unlink()  # e.g. the final save died on a full disk
    with pytest.raises(ConfigError, match="is incomplete"):
        load_model(load_config(LORA, [f"model.adapters=[{run}]"]).model)
    stale = tmp_path / ".merged.tmp-999999"  # a build folder of an export killed earlier
    stale.mkdir()
    (run / "COMPLETE").write_text("x")
    assert main(["export", LORA, f"train.output_dir={run}", f"export.output_dir={tmp_path / 'merged'}"]) == 0
    assert not stale.exists() and (tmp_path / "merged" / "COMPLETE").is_file()


def test_output_folder_with_foreign_files_is_not_replaced(tmp_path, capsys):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("do not delete")
    assert main(["prepare", LORA, f"data.output_dir={precious}"]) == 2
    assert "holds files medtune did not write" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "do not delete"


# 3 + 5. a small tmpfs: full disk during prepare, save and export; a read-only output folder
@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only, as on this project's machines and CI); skipped where mount is refused."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _rows(d, n, size):
    path = d / "big.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"问题{i}" + "头痛" * size, "output": "回答" * size},
                                       ensure_ascii=False) + "\n" for i in range(n)), encoding="utf-8")
    (d / "big.yaml").write_text(f"big: {{path: {path}, format: alpaca, license: test, source: test}}\n")
    return d / "big.yaml"


def test_disk_full_during_prepare_keeps_the_previous_folder(small_disk, tmp_path, capsys):
    reg = _rows(tmp_path, 400, 400)  # about 1.3 MB of prepared JSONL: more than the disk holds
    out = small_disk / "data"
    base = [LORA, f"data.registries=[{reg}]", "data.datasets=[big]", f"data.output_dir={out}", "data.test_size=0"]
    assert main(["prepare", *base, "data.max_samples=10"]) == 0
    before = json.loads((out / "report.json").read_text())
    assert main(["prepare", *base, "data.max_samples=null"]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device" in err and "Traceback" not in err
    assert json.loads((out / "report.json").read_text()) == before and (out / "COMPLETE").is_file()
    assert sum(1 for _ in open(out / "big.jsonl", encoding="utf-8")) == 10  # the old, whole file
    assert [p.name for p in small_disk.iterdir()] == ["data"]  # no build folder left


def test_disk_full_during_the_final_save_is_a_message_and_the_run_is_not_loadable(small_disk, capsys):
    from medtune.model.load import load_model

    out = small_disk / "run"
    assert main(["train", LORA, f"train.output_dir={out}", *QUICK, "train.max_steps=1", "finetune.method=full",
                 "train.save_steps=100"]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device" in err and "Traceback" not in err
    assert not (out / "COMPLETE").exists()
    with pytest.raises(ConfigError):
        load_model(load_config(LORA, [f"model.name_or_path={out}"]).model)


def test_disk_full_in_the_middle_of_an_export_leaves_no_folder(tmp_path, capsys):
    """Room for the weights (the pre-check passes) but not for the tokenizer and card that follow."""
    run = tmp_path / "run"
    assert main(["train", LORA, f"train.output_dir={run}", *QUICK, "train.max_steps=1"]) == 0
    from medtune.model.tiny import tiny_model_path

    weights = (tiny_model_path("llama") / "model.safetensors").stat().st_size
    mnt = tmp_path / "disk"
    mnt.mkdir()
    size_kib = int(weights * 1.12) // 1024 + 1
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        assert main(["export", LORA, f"train.output_dir={run}", f"export.output_dir={mnt / 'merged'}"]) == 2
        err = capsys.readouterr().err
        assert "no space left on the device" in err and "Traceback" not in err
        assert list(mnt.iterdir()) == []  # neither a half-written export nor its build folder
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_export_checks_room_before_loading(small_disk, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", LORA, f"train.output_dir={run}", *QUICK, "train.max_steps=1"]) == 0
    assert main(["export", LORA, f"train.output_dir={run}", f"export.output_dir={small_disk / 'merged'}"]) == 2
    assert "Not enough free space" in capsys.readouterr().err


def test_read_only_output_folder_fails_before_any_work(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        assert main(["train", LORA, f"train.output_dir={ro / 'run'}", *QUICK, "train.max_steps=1"]) == 2
        err = capsys.readouterr().err
        assert "read-only" in err and str(ro) in err and "Traceback" not in err
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
