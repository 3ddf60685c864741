"""Millions of rows through `medtune train`: prepare + tokenise + two steps, memory and time per stage.

    python benchmarks/train_scale.py [--sizes 100000 1000000] [--workers 2] [--near] [--engine datatrove --shards 8]

Input as in `prepare_scale.py` (the real Toyhom 内科 consultations replicated and perturbed to N alpaca
rows). For each size, in separate processes:
1. `medtune prepare` (normalize, quality, redact, exact dedup; `--near` adds MinHash near dedup; `--engine
   datatrove` runs it on datatrove's local executor with `--workers` processes over `--shards` shards): wall, peak RSS.
2. `medtune train` (tiny Llama, LoRA, 2 steps): the prepared folder is reused, the tokenised cache built
   (`data.num_workers`); wall, start-up (wall − train_runtime), peak RSS of the trainer process.
3. the same `medtune train` again: the cache is present; start-up and peak RSS.
Peak RSS is the largest of the process and its waited-for children (the tokenising workers).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from prepare_scale import RSS, make_input

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RSS, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return wall, int(re.search(r"MAXRSS_KB (\d+)", proc.stdout).group(1)) // 1024, proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--near", action="store_true")
    ap.add_argument("--engine", choices=["local", "datatrove"], default="local")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--source", type=Path,
                    default=ROOT.parent / "shared/data/chinese_medical_dialogue_toyhom/sample_IM_neike_5000-6000.csv")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="train_scale_"))
    rows = []
    for n in args.sizes:
        data = work / (f"rows_{n}" if args.shards > 1 else f"rows_{n}.jsonl")
        make_input(data, n, args.source, shards=args.shards)
        reg = work / "reg.yaml"
        reg.write_text(yaml.safe_dump({"big": {"path": str(data), "format": "alpaca", "license": "MIT", "source": "b"}}))
        out = work / f"run_{n}"
        dedup = "{exact: true, near: true, on: question}" if args.near else "{exact: true, on: question}"
        common = [str(ROOT / "configs/tiny/sft_lora.yaml"), f"train.output_dir={out}", f"data.registries=[{reg}]",
                  "data.datasets=[big]", "data.max_samples=null", "data.test_size=0", f"data.dedup={dedup}",
                  "data.steps=[normalize, {quality: {}}, redact]", f"data.num_workers={args.workers}",
                  f"data.engine={args.engine}", f"data.datatrove={{workers: {args.workers}}}"]
        train = [sys.executable, "-m", "medtune", "train", *common, "train.max_steps=2", "train.eval_strategy=no",
                 "train.save_steps=1000", "train.logging_steps=1"]
        p_wall, p_rss, _ = timed([sys.executable, "-m", "medtune", "prepare", *common])
        kept = json.loads((out / "data/report.json").read_text())["kept"]
        t_wall, t_rss, t_err = timed(train)
        t_run = json.loads((out / "metrics.json").read_text())["train_runtime"]
        assert "is up to date" in t_err, "train re-prepared the data"
        c_wall, c_rss, c_err = timed(train)
        c_run = json.loads((out / "metrics.json").read_text())["train_runtime"]
        assert "tokenised cache hit" in c_err
        cache_mib = sum(f.stat().st_size for f in (out / "tokenized").rglob("*") if f.is_file()) / 2**20
        rows.append((n, kept, p_wall, p_rss, t_wall, t_wall - t_run, t_rss, c_wall - c_run, c_rss, cache_mib))
        print(f"{n:,} rows: prepare {p_wall:.0f} s / {p_rss} MiB; train (tokenise + 2 steps) {t_wall:.0f} s, "
              f"start-up {t_wall - t_run:.0f} s, {t_rss} MiB; again with the cache: start-up {c_wall - c_run:.0f} s, "
              f"{c_rss} MiB; cache {cache_mib:.0f} MiB", flush=True)
        shutil.rmtree(data) if data.is_dir() else data.unlink()
    print("\n| rows | kept | prepare s | prepare peak MiB | train s (tokenise + 2 steps) | start-up s | trainer peak MiB "
          "| start-up with cache s | peak with cache MiB | cache MiB |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]:,} | {r[1]:,} | {r[2]:.0f} | {r[3]:,} | {r[4]:.0f} | {r[5]:.0f} | {r[6]:,} | {r[7]:.0f} | {r[8]:,} "
              f"| {r[9]:.0f} |")


if __name__ == "__main__":
    main()
