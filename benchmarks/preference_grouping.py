"""DPO with length-grouped batches vs shuffled batches: padding efficiency and train_runtime, side by side.

    python benchmarks/preference_grouping.py [--steps 30] [--batch 8] [--repeats 3] [--threads 1]

Workload: `configs/tiny/dpo_lora.yaml` (the tiny random-init Llama, LoRA, the shipped Toyhom pairs, whose
answers run from a few to a few hundred tokens) with 136 pairs, max_length 512. The two variants differ only
in `data.group_by_length`; each runs `medtune train` in its own process, alternating, medians of --repeats.
Padding efficiency is computed from the samplers themselves over one epoch of the same tokenised pairs:
each pair's longer sequence / the length the collator pads it to (the batch's longest), summed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/tiny/dpo_lora.yaml"


def overrides(args: argparse.Namespace, out: Path, grouped: bool) -> list[str]:
    return [f"train.output_dir={out}", "data.max_samples=152", "data.max_length=512", f"train.max_steps={args.steps}",
            f"train.per_device_train_batch_size={args.batch}", f"data.group_by_length={str(grouped).lower()}",
            "train.eval_strategy=no", "train.save_strategy=no"]


def efficiency(args: argparse.Namespace, work: Path) -> dict[str, float]:
    """Real / padded tokens over one epoch for both samplers, on the pairs as TRL tokenised them."""
    from medtune.cli import main as cli
    from medtune.train import preference
    from medtune.train.samplers import LengthGrouped, Permutation

    seen = {}
    preference.train_and_save = lambda cfg, trainer, *a: seen.setdefault("trainer", trainer) and {}
    cli(["train", str(CONFIG), *overrides(args, work / "probe", True)])
    lengths = [int(x) for x in seen["trainer"].lengths]

    def ratio(order: list[int]) -> float:
        batches = [order[i:i + args.batch] for i in range(0, len(order), args.batch)]
        return sum(lengths[i] for b in batches for i in b) / sum(max(lengths[i] for i in b) * len(b) for b in batches)

    return {"grouped": ratio([int(i) for i in LengthGrouped(lengths, args.batch, 42).order()]),
            "shuffled": ratio([int(i) for i in Permutation(len(lengths), 42).order()])}


def runtime(args: argparse.Namespace, work: Path, grouped: bool, run: int) -> float:
    out = work / f"{'grouped' if grouped else 'shuffled'}-{run}"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run([sys.executable, "-m", "medtune.cli", "train", str(CONFIG), *overrides(args, out, grouped)],
                          env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads((out / "metrics.json").read_text())["train_runtime"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pref_grouping_"))
    eff = efficiency(args, work)
    times: dict[bool, list[float]] = {True: [], False: []}
    for run in range(args.repeats):
        for grouped in (False, True):
            times[grouped].append(runtime(args, work, grouped, run))
            print(f"  run {run + 1} {'grouped' if grouped else 'shuffled'}: {times[grouped][-1]:.1f} s", flush=True)
    g, s = statistics.median(times[True]), statistics.median(times[False])
    print(f"\nDPO, tiny Llama, {args.steps} steps x {args.batch} pairs, {args.threads} thread(s), medians of {args.repeats}\n")
    print("| batches | padding efficiency | train_runtime s | speed vs shuffled |\n|---|---|---|---|")
    print(f"| shuffled | {eff['shuffled']:.3f} | {s:.1f} | 1.00x |")
    print(f"| length-grouped | {eff['grouped']:.3f} | {g:.1f} | {s / g:.2f}x |")


if __name__ == "__main__":
    main()
