"""Tokenisation throughput: medtune's tokenised cache vs LLaMA-Factory's preprocessing, same rows and tokenizer.

    python benchmarks/tokenize_vs_llamafactory.py [--lf-venv LFVENV] [--rows 20000] [--repeats 2]

Rows: Huatuo's llama_data.json repeated in order to N rows (as in shared/research/llamafactory_cpu.md §6).
Tokenizer: the tiny-llama folder of sft_vs_llamafactory.py (8k byte-level BPE, Qwen-2.5 template).
medtune: convert (alpaca) → render the template → tokenise with exact label masks → pack into 512-token
bins, in this process, 1 thread ("per row": the encoder one row at a time, as before the cache).
"cache, N workers": the prepared rows (JSONL, as `prepare` writes them) → `medtune.data.tokenized.encoded`
(template once per row, batched fast-tokenizer calls, N processes, Arrow files written and committed),
timed end to end including process start-up and the write. LLaMA-Factory: `llamafactory-cli train`
with max_steps 1, and its "Running tokenizer on dataset" rate read from its progress bar (template +
tokenise (+ knapsack)), preprocessing_num_workers 1. Runs alternate; medians of --repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    import statistics

    from sft_vs_llamafactory import build_tiny_llama

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lf-venv", type=Path)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/huatuo_llama_med_chinese/llama_data.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tok_vs_lf_"))
    source = args.data.read_text(encoding="utf-8").splitlines()
    lines = [source[i % len(source)] for i in range(args.rows)]
    (work / "data").mkdir()
    (work / "data/rows.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (work / "data/dataset_info.json").write_text(json.dumps({"rows": {
        "file_name": "rows.jsonl", "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output"}}}))
    model = work / "tiny-llama"
    build_tiny_llama([json.loads(x) for x in source[:2000]], model)
    prepared = prepared_rows(work)
    variants = {"per row": lambda: medtune_rate(work, model, False),
                "cache, 1 worker": lambda: cache_rate(work, model, prepared, 1),
                "cache, 2 workers": lambda: cache_rate(work, model, prepared, 2)}
    if args.lf_venv:
        variants["LLaMA-Factory, 1 worker"] = lambda: lf_rate(work, model, False, args.lf_venv)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.repeats):
        for name, fn in variants.items():
            rates[name].append(fn())
            print(f"  repeat {r + 1}: {name}: {rates[name][-1]:,.0f} rows/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    base = med.get("LLaMA-Factory, 1 worker")
    print(f"\n{args.rows:,} rows, 1 thread per process, medians of {args.repeats}\n\n| variant | rows/s | vs per row |"
          f"{' vs LLaMA-Factory |' if base else ''}\n|---|---|---|{'---|' if base else ''}")
    for k, v in med.items():
        print(f"| {k} | {v:,.0f} | {v / med['per row']:.2f}x |{f' {v / base:.2f}x |' if base else ''}")
    print(f"\n2 workers / 1 worker: {med['cache, 2 workers'] / med['cache, 1 worker']:.2f}x")


def prepared_rows(work: Path) -> Path:
    """The rows as `prepare` writes them ({"messages": ...} JSONL), from the alpaca converter."""
    from medtune.data.datasets import DatasetSpec
    from medtune.data.formats import FORMATS

    spec = DatasetSpec(name="rows", path=str(work / "data/rows.jsonl"), format="alpaca")
    out = work / "prepared.jsonl"
    with out.open("w", encoding="utf-8") as f:
        for item in FORMATS.get("alpaca")(spec):
            if item.example:
                f.write(json.dumps({**item.example, "meta": {"dataset": "rows"}}, ensure_ascii=False) + "\n")
    return out


def cache_rate(work: Path, model: Path, prepared: Path, workers: int) -> float:
    """Rows/s of building the tokenised cache from scratch (a fresh cache folder each time)."""
    import shutil

    import torch
    from transformers import AutoTokenizer

    from medtune.data.templates import load_template
    from medtune.data.tokenized import encoded

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(model)
    template = load_template(str(ROOT / "benchmarks/qwen25.jinja"))
    root = work / "cache"
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    ds = encoded([str(prepared)], tok, template, 512, "all", root, workers)
    return len(ds) / (time.perf_counter() - start)


def medtune_rate(work: Path, model: Path, packing: bool) -> float:
    import torch
    from transformers import AutoTokenizer

    from medtune.data.datasets import DatasetSpec
    from medtune.data.encode import encode_messages
    from medtune.data.formats import FORMATS
    from medtune.data.packing import pack
    from medtune.data.templates import load_template

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(model)
    template = load_template(str(ROOT / "benchmarks/qwen25.jinja"))
    spec = DatasetSpec(name="rows", path=str(work / "data/rows.jsonl"), format="alpaca")
    start = time.perf_counter()
    encoded = [e for item in FORMATS.get("alpaca")(spec) if item.example
               if (e := encode_messages(tok, template, item.example["messages"], 512))]
    if packing:
        pack(encoded, 512)
    return len(encoded) / (time.perf_counter() - start)


def lf_rate(work: Path, model: Path, packing: bool, lf_venv: Path) -> float:
    cfg = {"model_name_or_path": str(model), "stage": "sft", "do_train": True, "finetuning_type": "lora",
           "lora_target": "all", "dataset": "rows", "dataset_dir": str(work / "data"), "template": "qwen",
           "cutoff_len": 512, "overwrite_cache": True, "preprocessing_num_workers": 1, "max_steps": 1,
           "output_dir": str(work / "lf_out"), "overwrite_output_dir": True, "save_strategy": "no", "report_to": "none",
           "per_device_train_batch_size": 4, "disable_gradient_checkpointing": True,
           **({"packing": True} if packing else {})}
    path = work / "lf.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(work / "hf_cache")}
    proc = subprocess.run([str(lf_venv / "bin/llamafactory-cli"), "train", str(path)], capture_output=True, text=True, env=env)
    rates = re.findall(r"Running tokenizer on dataset[^\n\r]*?([\d.]+) examples/s", proc.stderr + proc.stdout)
    if not rates:
        raise SystemExit(f"no tokenizer rate in LLaMA-Factory's output:\n{(proc.stderr or proc.stdout)[-2000:]}")
    return float(rates[-1])


if __name__ == "__main__":
    main()
