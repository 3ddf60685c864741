"""`data.engine: datatrove`: prepare scaled out on datatrove's executors gives the in-process result."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import FIXTURES, ROOT, shared

from medtune.config import load_config
from medtune.data.prepare import prepare

pytest.importorskip("datatrove")
CFG = str(ROOT / "configs/tiny/sft_lora.yaml")


def huatuo(n):
    with shared("huatuo_llama_med_chinese/llama_data.json").open(encoding="utf-8") as f:  # JSON Lines
        return [json.loads(next(f)) for _ in range(n)]


def perturbed_shards(tmp_path, n=400):
    """Real Huatuo rows in three shards (one gzipped): the second holds exact and near copies of the first's
    rows, so duplicates cross task boundaries."""
    rows = huatuo(n)
    folder = tmp_path / "shards"
    folder.mkdir()
    a = rows[: n // 2]
    b = [{**r, "instruction": r["instruction"] + ("" if i % 2 else "呢")} for i, r in enumerate(a)]  # exact / near
    (folder / "part-0.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in a), encoding="utf-8")
    (folder / "part-1.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in b), encoding="utf-8")
    with gzip.open(folder / "part-2.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[n // 2:])
    reg = tmp_path / "reg.yaml"
    reg.write_text(f"huatuo_shards: {{path: {folder}, format: alpaca, license: research only, source: Huatuo}}\n")
    return reg


def bench(tmp_path):
    """A benchmark file whose stems are training questions (so decontamination drops some)."""
    rows = huatuo(1010)
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps({"question": r["instruction"]}, ensure_ascii=False) + "\n"
                            for r in rows[1000:1010]), encoding="utf-8")
    return path


def run(tmp_path, name, engine, *extra):
    regs = [str(ROOT / "configs/shared_datasets.yaml"), str(FIXTURES / "cmedqa2_registry.yaml"),
            str(tmp_path / "reg.yaml")]
    cfg = load_config(CFG, [f"data.output_dir={tmp_path / name / 'out'}", f"data.registries=[{', '.join(regs)}]",
                            "data.datasets=[cmedqa2_first, toyhom_neike_sample, huatuo_shards, huatuo_llama_data, "
                            "covid_dialogue]", "data.max_samples=null",
                            "data.steps=[normalize, {length: {min_answer: 4}}, {quality: {}}, redact]",
                            "data.dedup={exact: true, near: true, threshold: 0.7, on: question}",
                            f"data.decontaminate={{benchmarks: [{bench(tmp_path)}]}}",
                            f"data.engine={engine}", *extra])
    return prepare(cfg), tmp_path / name / "out"


def files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.jsonl"))}


def test_datatrove_with_two_workers_gives_the_in_process_result(tmp_path):
    perturbed_shards(tmp_path)
    local, out_a = run(tmp_path, "a", "local")
    scaled, out_b = run(tmp_path, "b", "datatrove", "data.datatrove={workers: 2}")
    for key in ("datasets", "kept", "dropped", "changed", "pii_replaced", "fingerprint"):
        assert scaled[key] == local[key], key
    d = local["dropped"]
    assert d["duplicate_exact"] >= 100 and d["duplicate_near"] >= 50 and d.get("contaminated_bench", 0) >= 5, d
    assert local["datasets"]["huatuo_shards"]["dropped"]["duplicate_exact"] >= 90
    a, b = files(out_a), files(out_b)
    assert a.keys() == b.keys() and "dropped/duplicate_near.jsonl" in a
    for name in a:  # the same rows, in the same order, byte for byte
        assert a[name] == b[name], name
    near = [json.loads(x) for x in a["dropped/duplicate_near.jsonl"].decode().splitlines()]
    assert any(x["duplicate_of"].startswith("huatuo_shards:part-0.jsonl:") and "part-1" in x["where"] for x in near)
    assert not (out_b / ".work").exists() and (out_b / "COMPLETE").exists()


def many_shards(tmp_path, shards=16, rows=4000):
    base = huatuo(rows)
    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(shards):
        (folder / f"p{k:02d}.jsonl").write_text("".join(json.dumps({**r, "instruction": f"{r['instruction']}（{k}）"},
                                                                   ensure_ascii=False) + "\n" for r in base), encoding="utf-8")
    reg = tmp_path / "many.yaml"
    reg.write_text(f"many: {{path: {folder}, format: alpaca, license: research only, source: Huatuo}}\n")
    return reg, folder


def cli(tmp_path, reg, *extra):
    return [sys.executable, "-m", "medtune", "prepare", CFG, f"data.registries=[{reg}]", "data.datasets=[many]",
            f"data.output_dir={tmp_path / 'out'}", "data.steps=[normalize, redact]", "data.dedup={near: true}",
            "data.engine=datatrove", "data.datatrove={workers: 2}", *extra]


def _workers(pid):
    """The worker processes (spawned by the pool) of process `pid`."""
    out = []
    for p in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{p}/stat").read().split()
            cmd = open(f"/proc/{p}/cmdline", "rb").read()
        except OSError:
            continue
        if p.isdigit() and int(stat[3]) == pid and b"spawn_main" in cmd:
            out.append(int(p))
    return out


def test_a_worker_that_dies_fails_the_run_instead_of_hanging(tmp_path):
    reg, _ = many_shards(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cli(tmp_path, reg), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while not (workers := _workers(proc.pid)) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert workers, "no worker process appeared"
    time.sleep(1.0)  # the workers are importing and cleaning: 16 tasks of 4,000 rows take several seconds
    os.kill(workers[0], signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("prepare hung after a worker died")
    assert proc.returncode == 2, err  # a user-facing error, as for bad input
    assert "worker process died" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_damaged_shard_is_named_and_nothing_is_written(tmp_path):
    reg, folder = many_shards(tmp_path, shards=3, rows=200)
    (folder / "p03.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00 truncated")  # a gzip header, then garbage
    r = subprocess.run(cli(tmp_path, reg), capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{folder / 'p03.jsonl.gz'}: not a readable gzip file" in r.stderr
    assert not (tmp_path / "out").exists()
