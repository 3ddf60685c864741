"""ORPO / SimPO through TRL's fused LM head vs TRL's full-logits forward: train_runtime and peak RSS, side by side.

    python benchmarks/fused_pairs.py [--stage orpo] [--model gguf:gemma3-270m] [--steps 8] [--batch 2] \
        [--repeats 3] [--threads 2]

Workload: `configs/tiny/{stage}_lora.yaml` with the model swapped for `--model` (template gemma for Gemma), the
shipped Toyhom pairs, LoRA, max_length 256. The two variants differ only in `finetune.loss_chunk_size`
(null: TRL's own forward, which takes the [tokens × vocab] logits; auto: medtune's `train/fused_pairs.py`).
Each run is its own `medtune train` process under `/usr/bin/time -v` (peak RSS of that process), alternating,
medians of --repeats. The final train loss of both is printed: the paths are exact, so they should agree.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: argparse.Namespace, work: Path, fused: bool, k: int) -> tuple[float, float, float]:
    """(train_runtime s, peak RSS GiB, train_loss) of one run."""
    out = work / f"{'fused' if fused else 'plain'}-{k}"
    template = "gemma" if "gemma" in args.model else "chatml"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "medtune.cli", "train", str(ROOT / f"configs/tiny/{args.stage}_lora.yaml"),
           f"model.name_or_path={args.model}", f"model.template={template}", f"train.output_dir={out}",
           f"train.max_steps={args.steps}", f"train.per_device_train_batch_size={args.batch}", "data.max_length=256",
           f"finetune.loss_chunk_size={'auto' if fused else 'null'}", "train.eval_strategy=no", "train.save_strategy=no",
           "data.test_size=0", "train.learning_rate=1.0e-4"]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics["train_runtime"], rss_kib / 2**20, metrics["train_loss"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["orpo", "simpo"], default="orpo")
    ap.add_argument("--model", default="gguf:gemma3-270m")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fused_pairs_"))
    res: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    for k in range(args.repeats):
        for fused in (False, True):
            res[fused].append(run(args, work, fused, k))
            t, rss, loss = res[fused][-1]
            print(f"  run {k + 1} {'fused' if fused else 'plain'}: {t:.1f} s, peak RSS {rss:.2f} GiB, loss {loss:.4f}",
                  flush=True)
    med = {f: [statistics.median(x[i] for x in res[f]) for i in range(3)] for f in res}
    print(f"\n{args.stage}, {args.model}, {args.steps} steps x {args.batch} pairs, {args.threads} thread(s), "
          f"medians of {args.repeats}\n")
    print("| forward | train_runtime s | peak RSS GiB | train loss | speed vs plain |\n|---|---|---|---|---|")
    for f in (False, True):
        t, rss, loss = med[f]
        print(f"| {'fused head (medtune)' if f else 'full logits (TRL)'} | {t:.1f} | {rss:.2f} | {loss:.4f} | "
              f"{med[False][0] / t:.2f}x |")


if __name__ == "__main__":
    main()
