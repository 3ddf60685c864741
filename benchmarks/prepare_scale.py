"""`medtune prepare` at scale: rows/s and peak memory from 100k to 1M rows, streaming.

    python benchmarks/prepare_scale.py [--sizes 100000 300000 1000000] [--near-at 100000]

Input: the 7,644 real Toyhom 内科 consultations (../shared/data) replicated and perturbed to N rows
(alpaca JSONL): every copy gets a varied question suffix, 1 in 50 gets a synthetic phone number to
redact, 1 in 20 is an exact repeat to deduplicate. Each size runs `medtune prepare` in its own process
(steps normalize, length, quality, redact; exact dedup on the question) and reports wall time,
rows/s and peak RSS. Memory grows only with the dedup index (12-byte digests), not with the input.
`--near-at N` adds one run with MinHash near-dedup at N rows, to show its cost.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RSS = "import resource,subprocess,sys;r=subprocess.run(sys.argv[1:]);print('MAXRSS_KB',resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);sys.exit(r.returncode)"


def make_input(path: Path, n: int, source: Path, shards: int = 1) -> None:
    """N rows in one JSONL file at `path`, or (shards > 1) in a folder `path` of `shards` files holding
    consecutive slices of the same rows."""
    rows = list(csv.DictReader(io.StringIO(source.read_bytes().decode("gb18030"))))
    rng = random.Random(0)
    if shards > 1:
        path.mkdir(parents=True, exist_ok=True)
    files = [path / f"part-{k:03d}.jsonl" for k in range(shards)] if shards > 1 else [path]
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(p.open("w", encoding="utf-8")) for p in files]
        last = None
        for i in range(n):
            f = handles[i * len(handles) // n]
            if last and i % 20 == 0:
                f.write(last)
                continue
            r = rows[i % len(rows)]
            ask = f"{r['ask']}（第{i // len(rows)}次咨询，{rng.choice(['急', '请回复', '谢谢', '在线等'])}）"
            if i % 50 == 0:
                ask += f"我的电话是13{rng.randrange(10**9):09d}"
            last = json.dumps({"instruction": ask, "input": "", "output": r["answer"]}, ensure_ascii=False) + "\n"
            f.write(last)


def run(work: Path, data: Path, near: bool) -> dict:
    reg = work / "reg.yaml"
    reg.write_text(yaml.safe_dump({"big": {"path": str(data), "format": "alpaca", "license": "MIT", "source": "bench"}}))
    dedup = "{exact: true, near: true, on: question}" if near else "{exact: true, on: question}"
    cmd = [sys.executable, "-m", "medtune", "prepare", str(ROOT / "configs/tiny/sft_lora.yaml"),
           f"data.registries=[{reg}]", "data.datasets=[big]", "data.max_samples=null", f"data.output_dir={work / 'out'}",
           "data.steps=[normalize, {length: {min_answer: 4}}, {quality: {}}, redact]", f"data.dedup={dedup}"]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RSS, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    report = json.loads((work / "out/report.json").read_text())
    d = report["datasets"]["big"]
    return {"wall": wall, "rss": int(re.search(r"MAXRSS_KB (\d+)", proc.stdout).group(1)) // 1024,
            "read": d["rows_read"], "kept": d["kept"], "dropped": d["dropped"], "pii": d["pii_replaced"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--near-at", type=int, default=0)
    ap.add_argument("--source", type=Path,
                    default=ROOT.parent / "shared/data/chinese_medical_dialogue_toyhom/sample_IM_neike_5000-6000.csv")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prepare_scale_"))
    results = []
    for n in sorted(set(args.sizes + ([args.near_at] if args.near_at else []))):
        data = work / f"rows_{n}.jsonl"
        make_input(data, n, args.source)
        for near in ([False, True] if n == args.near_at else [False]):
            r = run(work, data, near)
            results.append((n, near, r))
            print(f"  {n:>9,} rows near={near}: {r['wall']:.1f} s, {r['read'] / r['wall']:,.0f} rows/s, "
                  f"peak RSS {r['rss']} MiB, kept {r['kept']:,}, dropped {r['dropped']}, PII {r['pii']}", flush=True)
        data.unlink()
    print("\n| rows | near dedup | wall s | rows/s | peak RSS MiB | kept | dropped |\n|---|---|---|---|---|---|---|")
    for n, near, r in results:
        print(f"| {n:,} | {'yes' if near else 'no'} | {r['wall']:.1f} | {r['read'] / r['wall']:,.0f} | {r['rss']:,} "
              f"| {r['kept']:,} | {sum(r['dropped'].values()):,} |")


if __name__ == "__main__":
    main()
