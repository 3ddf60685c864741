"""Peak memory and speed of SFT with the standard loss vs medtune's chunked loss, at Gemma's vocabulary.

    python benchmarks/lean_loss.py [--steps 10] [--batch 8] [--max-length 256] [--repeats 2] [--threads 1]

A 2-layer model of hidden size 64 with Gemma-3's 262,144-token vocabulary: its logits for a batch of
8 × 256 tokens take 2 GiB in fp32, so the loss, not the model, sets the memory. Each variant trains
LoRA SFT on the shipped Toyhom sample in its own process (peak RSS of that process), alternating.
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
RSS = "import resource,subprocess,sys;r=subprocess.run(sys.argv[1:]);print('MAXRSS_KB',resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);sys.exit(r.returncode)"
VOCAB = 262_144


def build(path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from medtune.model.tiny import tiny_model_path

    tok = AutoTokenizer.from_pretrained(tiny_model_path("llama"))
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lean_loss_"))
    build(work / "model")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    runs: dict[str, list[tuple[float, int, float]]] = {"standard": [], "chunked": []}
    for rep in range(args.repeats):
        for variant in runs:
            out = work / f"{variant}_{rep}"
            cmd = [sys.executable, "-m", "medtune", "train", str(ROOT / "configs/tiny/sft_lora.yaml"),
                   f"model.name_or_path={work / 'model'}", f"train.output_dir={out}", "data.max_samples=null",
                   "data.test_size=0", "train.eval_strategy=no", f"train.max_steps={args.steps}",
                   f"train.per_device_train_batch_size={args.batch}", f"data.max_length={args.max_length}",
                   "train.save_strategy=no", "train.logging_steps=5"]
            if variant == "chunked":
                cmd.append(f"finetune.loss_chunk_size={args.chunk}")
            proc = subprocess.run([sys.executable, "-c", RSS, *cmd], capture_output=True, text=True, env=env)
            if proc.returncode:
                raise SystemExit(proc.stderr[-3000:])
            m = json.loads((out / "metrics.json").read_text())
            rss = int(re.search(r"MAXRSS_KB (\d+)", proc.stdout).group(1)) // 1024
            runs[variant].append((m["train_runtime"] / args.steps, rss, m["train_loss"]))
            print(f"  {variant:8s} #{rep}: {m['train_runtime'] / args.steps:.3f} s/step, peak RSS {rss} MiB, "
                  f"loss {m['train_loss']:.5f}, {m['train_tokens']} tokens")
    print(f"\nvocab {VOCAB:,}, batch {args.batch} × ≤{args.max_length} tokens, {args.steps} steps, "
          f"{args.threads} thread(s), chunk {args.chunk}; medians\n")
    print("| loss | s/step | peak RSS MiB | train_loss |\n|---|---|---|---|")
    med = {}
    for variant, rs in runs.items():
        med[variant] = (statistics.median(r[0] for r in rs), max(r[1] for r in rs))
        print(f"| {variant} | {med[variant][0]:.3f} | {med[variant][1]:,} | {rs[0][2]:.5f} |")
    print(f"\nchunked / standard: time {med['chunked'][0] / med['standard'][0]:.2f}x, "
          f"peak RSS {med['chunked'][1] / med['standard'][1]:.2f}x")


if __name__ == "__main__":
    main()
