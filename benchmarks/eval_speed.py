"""Questions per second of `medtune eval` multiple-choice scoring, both modes, batched vs one at a time.

    OMP_NUM_THREADS=2 python benchmarks/eval_speed.py [--models tiny:qwen2 gguf:gemma3-270m] [--n 32]

For each model: log-likelihood over the option letters (one forward pass per question, batched and
left-padded) and generation + strict extraction (the ChatEngine's dynamic batcher, greedy, 24 new
tokens), each at batch size 8 and at batch size 1 (the baseline), on the first N CMB-Exam sample
questions. Prints questions/s and the batched/unbatched ratio; also checks both give the same answers.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny:qwen2", "gguf:gemma3-270m"])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--gen-n", type=int, default=16)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from medtune.config import EvalConfig, GenerationConfig, ModelConfig
    from medtune.eval.extract import extract
    from medtune.eval.scoring import LoglikScorer
    from medtune.eval.tasks import load_data, load_task, render_prompt
    from medtune.infer.engine import ChatEngine

    task = load_task("cmb_exam_sample", Path("."))
    items = load_data(task, EvalConfig()).items
    prompts = [[{"role": "user", "content": render_prompt(task, question=x.question, options=x.options, multi=False,
                                                          shots=[])}] for x in items]
    print(f"{'model':<18} {'mode':<9} {'batch 8 q/s':>11} {'batch 1 q/s':>11} {'ratio':>6}  same answers")
    for name in args.models:
        template = "gemma" if "gemma" in name else "chatml"
        gen = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=24)
        engine = ChatEngine(ModelConfig(name, template), gen, max_batch_size=8, max_wait_ms=200)
        rates, answers = {}, {}
        for bs in (8, 1):
            scorer = LoglikScorer(engine.model, engine.tokenizer, engine.template, batch_size=bs)
            sub = prompts[: args.n]
            t = time.perf_counter()
            lp = scorer.letters(sub, [list(x.options) for x in items[: args.n]])
            rates[("loglik", bs)] = len(sub) / (time.perf_counter() - t)
            answers[("loglik", bs)] = [max(d, key=d.get) for d in lp]

            engine.batcher.max_batch_size = bs
            sub = prompts[: args.gen_n]
            t = time.perf_counter()
            outs = []
            for i in range(0, len(sub), bs):
                outs += engine.chat_many(sub[i: i + bs])
            rates[("generate", bs)] = len(sub) / (time.perf_counter() - t)
            answers[("generate", bs)] = [extract(o, x.options) for o, x in zip(outs, items, strict=False)]
        for mode in ("loglik", "generate"):
            same = answers[(mode, 8)] == answers[(mode, 1)]
            print(f"{name:<18} {mode:<9} {rates[(mode, 8)]:>11.2f} {rates[(mode, 1)]:>11.2f} "
                  f"{rates[(mode, 8)] / rates[(mode, 1)]:>5.1f}x  {same}")
        del engine


if __name__ == "__main__":
    main()
