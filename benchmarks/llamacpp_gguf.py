"""medtune's GGUF in llama.cpp itself: Gemma-3-270M + a LoRA adapter exported to f16, q8_0 and q4_k_m, then
size, perplexity, greedy agreement with transformers and generation speed, side by side.

    make llamacpp                                   # llama-cpp-python from PyPI (a source build)
    OMP_NUM_THREADS=2 python benchmarks/llamacpp_gguf.py --adapter outputs/quickstart [--texts 30]

Perplexity is over real text (the first --texts Huatuo-26M test answers in ../shared/data, else the shipped
knowledge-base leaflets), scored by llama.cpp for every file. Greedy agreement: the share of 24 greedy tokens,
for 8 held-out questions, that llama.cpp (each file) and transformers (the merged Hugging Face folder)
produce identically, token by token up to the first difference. Speed: tokens/s of greedy generation, llama.cpp
(f16 and q4_k_m) vs transformers, same prompts, 2 threads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ["头痛怎么办？", "高血压患者能吃党参吗？", "最近总是失眠，怎么办？", "孩子发烧38度要去医院吗？",
             "胃疼吃什么药好？", "糖尿病人能吃水果吗？", "感冒咳嗽一周了怎么办？", "腰疼是肾不好吗？"]


def texts(n: int) -> list[str]:
    data = ROOT.parent / "shared/data/huatuo26m_test/huatuo26m_test_dev300.jsonl"
    if data.is_file():
        return [json.loads(x)["answer"][:300] for x in data.read_text(encoding="utf-8").splitlines()[:n]]
    return [p.read_text(encoding="utf-8") for p in sorted((ROOT / "src/medtune/kb/samples/docs").glob("*.md"))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapter", default=str(ROOT / "outputs/quickstart"))
    ap.add_argument("--texts", type=int, default=30)
    args = ap.parse_args()
    import llama_cpp
    import numpy as np

    out = Path(tempfile.mkdtemp(prefix="gguf-bench-")) / "export"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medtune", "export", str(ROOT / "configs/quickstart.yaml"),
                    f"export.adapters=[{args.adapter}]", f"export.output_dir={out}", "export.gguf=true",
                    "export.gguf_dtype=f16", "export.gguf_quantize=[q8_0, q4_k_m]"], check=True)
    print(f"export + GGUF f16 + q8_0 + q4_k_m: {time.perf_counter() - t:.0f} s")
    files = {"f16": out / "model.gguf", "q8_0": out / "model-q8_0.gguf", "q4_k_m": out / "model-q4_k_m.gguf"}
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    corpus = texts(args.texts)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False)["input_ids"] for q in QUESTIONS]
    import torch

    torch.set_num_threads(threads)
    hf = AutoModelForCausalLM.from_pretrained(out)
    t, hf_out = time.perf_counter(), []
    with torch.no_grad():
        for ids in prompts:
            hf_out.append(hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, repetition_penalty=1.0,
                                      min_new_tokens=24, pad_token_id=tok.pad_token_id)[0, len(ids):].tolist())
    hf_rate = sum(map(len, hf_out)) / (time.perf_counter() - t)
    print(f"{'file':<8} {'MiB':>7} {'ppl':>8} {'greedy agree':>12} {'tok/s':>7}")
    base_ppl = None
    for kind, path in files.items():
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=threads, logits_all=True, verbose=False)
        nll = count = 0.0
        for text in corpus:
            ids = [llm.token_bos(), *llm.tokenize(text.encode(), add_bos=False)][:1024]
            llm.reset()
            llm.eval(ids)
            logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
            logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                - logits.max(-1, keepdims=True)
            nll -= logp[np.arange(len(ids) - 1), ids[1:]].sum()
            count += len(ids) - 1
        ppl = math.exp(nll / count)
        base_ppl = base_ppl or ppl
        agree, t, made = [], time.perf_counter(), 0
        for ids, ref in zip(prompts, hf_out, strict=True):
            llm.reset()
            got = []
            for tok_id in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
                got.append(tok_id)
                if len(got) == 24:
                    break
            made += len(got)
            same = next((i for i, (a, b) in enumerate(zip(got, ref, strict=False)) if a != b), min(len(got), len(ref)))
            agree.append(same / 24)
        rate = made / (time.perf_counter() - t)
        print(f"{kind:<8} {path.stat().st_size / 2**20:>7.1f} {ppl:>8.2f} {sum(agree) / len(agree):>12.2f} {rate:>7.1f}"
              f"   (ppl x{ppl / base_ppl:.3f} of f16)")
    print(f"transformers (merged folder, fp32): {hf_rate:.1f} tok/s greedy, {threads} threads; "
          f"{len(corpus)} texts, {int(count)} tokens scored")


if __name__ == "__main__":
    main()
