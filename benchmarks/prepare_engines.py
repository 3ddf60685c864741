"""`medtune prepare` on its two engines, side by side: in process (`data.engine: local`) against
datatrove's executors (`data.engine: datatrove`, local processes), the same input and config.

    python benchmarks/prepare_engines.py [--sizes 1000000 5000000] [--shards 8] [--workers 2] [--local-max 1000000]

Input as in `prepare_scale.py` (the real Toyhom 内科 consultations replicated and perturbed to N alpaca
rows), written as `--shards` consecutive JSONL shards. Steps normalize, quality, redact; exact and MinHash
near dedup on the question. For each size: wall time, the peak of the summed RSS of the whole process
tree (sampled every 0.2 s: the main process and its workers together, what the machine must hold), the
largest single process, the disk the datatrove work folder took, and whether both engines gave the same
report (kept, dropped by reason, changed). The in-process engine runs only up to `--local-max` rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from prepare_scale import make_input

ROOT = Path(__file__).resolve().parents[1]


def tree_rss_kib(root: int) -> tuple[int, int]:
    """(sum, max) of VmRSS over `root` and all its descendants, in KiB (walks /proc/PID/task/*/children,
    cheap enough to sample often on a 2-core machine)."""
    values, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        try:
            with open(f"/proc/{pid}/statm") as f:
                values.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024)
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    frontier.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return sum(values), max(values, default=0)


def du_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.exists() else 0.0


def run(work: Path, data: Path, engine: str, workers: int) -> dict:
    reg = work / "reg.yaml"
    reg.write_text(yaml.safe_dump({"big": {"path": str(data), "format": "alpaca", "license": "MIT", "source": "bench"}}))
    out = work / f"out_{engine}"
    cmd = [sys.executable, "-m", "medtune", "prepare", str(ROOT / "configs/tiny/sft_lora.yaml"),
           f"data.registries=[{reg}]", "data.datasets=[big]", "data.max_samples=null", f"data.output_dir={out}",
           "data.steps=[normalize, {quality: {}}, redact]", "data.dedup={exact: true, near: true, on: question}",
           f"data.engine={engine}", f"data.datatrove={{workers: {workers}}}"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    peak_sum = peak_max = 0
    work_peak = 0.0
    samples = 0
    while proc.poll() is None:
        s, m = tree_rss_kib(proc.pid)
        peak_sum, peak_max = max(peak_sum, s), max(peak_max, m)
        if samples % 25 == 0:  # the work folder's size every ~5 s
            work_peak = max(work_peak, sum(du_mib(p) for p in out.parent.glob(f".{out.name}*/.work")))
        samples += 1
        time.sleep(0.2)
    err = proc.stderr.read()
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(err[-3000:])
    report = json.loads((out / "report.json").read_text())
    result = {"wall": wall, "sum_mib": peak_sum // 1024, "max_mib": peak_max // 1024, "work_mib": work_peak,
              "kept": report["kept"], "dropped": report["dropped"], "changed": report["changed"],
              "datasets": report["datasets"]}
    shutil.rmtree(out)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--local-max", type=int, default=1_000_000)
    ap.add_argument("--source", type=Path,
                    default=ROOT.parent / "shared/data/chinese_medical_dialogue_toyhom/sample_IM_neike_5000-6000.csv")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prepare_engines_"))
    lines = []
    for n in args.sizes:
        data = work / f"rows_{n}"
        make_input(data, n, args.source, shards=args.shards)
        results = {}
        for engine in (["local"] if n <= args.local_max else []) + ["datatrove"]:
            r = results[engine] = run(work, data, engine, args.workers)
            print(f"{n:,} rows, {engine}: {r['wall']:.0f} s, peak {r['sum_mib']:,} MiB (largest process "
                  f"{r['max_mib']:,} MiB), work folder {r['work_mib']:.0f} MiB, kept {r['kept']:,}, dropped {r['dropped']}",
                  flush=True)
        same = "—"
        if len(results) == 2:
            a, b = results["local"], results["datatrove"]
            same = "yes" if all(a[k] == b[k] for k in ("kept", "dropped", "changed", "datasets")) else "NO"
        for engine, r in results.items():
            lines.append(f"| {n:,} | {engine} | {r['wall']:.0f} | {n / r['wall']:,.0f} | {r['sum_mib']:,} | {r['max_mib']:,} "
                         f"| {r['work_mib']:.0f} | {r['kept']:,} | {same} |")
        shutil.rmtree(data)
    print(f"\n{args.shards} shards, {args.workers} datatrove workers\n\n| rows | engine | wall s | rows/s | peak RSS MiB "
          "(all processes) | largest process MiB | work folder MiB | kept | same report |\n|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
