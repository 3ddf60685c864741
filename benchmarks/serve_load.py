"""Load test of `medtune serve`: N concurrent streaming clients vs a naive one-at-a-time generate loop.

    python benchmarks/serve_load.py [--model tiny:llama] [--template chatml] [--concurrency 1 8 32]
                                    [--requests 32] [--max-tokens 32] [--threads 2]

Starts a real `medtune serve` process on 127.0.0.1, then for each concurrency level runs that many
streaming clients (httpx, loopback only) until `--requests` requests are done, bounded by
`--timeout-s`. Reports requests/s, completion tokens/s, p50/p95 time to first token and latency,
errors, and the server's RSS before and after. The baseline loads the same model in this process and
calls `model.generate` for the same prompts one request at a time. Ratios are printed against it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [json.loads(line)["question"] for line in
             (ROOT / "src/medtune/data/samples/quickstart_questions.jsonl").read_text(encoding="utf-8").splitlines()]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one(client: httpx.AsyncClient, url: str, q: str, max_tokens: int) -> dict:
    body = {"messages": [{"role": "user", "content": q}], "max_tokens": max_tokens, "stream": True,
            "temperature": 0, "stream_options": {"include_usage": True}}
    start, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return {"error": r.status_code}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - start
    return {"ttft": first if first is not None else time.perf_counter() - start,
            "latency": time.perf_counter() - start, "tokens": tokens}


def tokens_for(i: int, max_tokens: int, mixed: bool) -> int:
    """Request i's max_tokens: all equal, or (--mixed) spread over 0.5–1.5× so answers end at different
    steps, as real ones do (the same sequence for every concurrency level and the baseline)."""
    return max(1, round(max_tokens * (0.5 + (i * 0.6180339887) % 1))) if mixed else max_tokens


async def level(url: str, concurrency: int, n: int, max_tokens: int, timeout_s: float, mixed: bool = False,
                stagger_s: float = 0.0) -> dict:
    results: list[dict] = []
    todo = iter(range(n))
    deadline = time.perf_counter() + timeout_s

    async def worker(client: httpx.AsyncClient, j: int) -> None:
        await asyncio.sleep(j * stagger_s)  # --mixed: clients arrive one after another, not all at t=0
        for i in todo:
            if time.perf_counter() > deadline:
                return
            try:
                results.append(await one(client, url, QUESTIONS[i % len(QUESTIONS)], tokens_for(i, max_tokens, mixed)))
            except httpx.HTTPError as e:
                results.append({"error": type(e).__name__})

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=timeout_s, limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        await asyncio.gather(*(worker(client, j) for j in range(concurrency)))
    wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    pct = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1] if len(xs) > 1 else (xs[0] if xs else float("nan"))  # noqa: E731
    return {"requests": len(ok), "errors": len(results) - len(ok), "wall": wall, "rps": len(ok) / wall,
            "tps": sum(r["tokens"] for r in ok) / wall,
            "ttft_p50": pct([r["ttft"] for r in ok], 50), "ttft_p95": pct([r["ttft"] for r in ok], 95),
            "lat_p50": pct([r["latency"] for r in ok], 50), "lat_p95": pct([r["latency"] for r in ok], 95)}


def baseline(args: argparse.Namespace) -> dict:
    """The naive server: one request at a time, each a plain model.generate call."""
    import torch

    from medtune.config import load_config
    from medtune.data.encode import end_of_turn_ids, prompt_ids
    from medtune.model.load import load_model

    torch.set_num_threads(args.threads)
    cfg = load_config(None, [f"model.name_or_path={args.model}", f"model.template={args.template}"])
    model, tok, template = load_model(cfg.model)
    eos = end_of_turn_ids(tok, template)
    start, tokens, lat = time.perf_counter(), 0, []
    for i in range(args.requests):
        t = time.perf_counter()
        ids = torch.tensor([prompt_ids(tok, template, [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=tokens_for(i, args.max_tokens, args.mixed),
                                 do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id,
                                 repetition_penalty=args.repetition_penalty)
        new = out[0, ids.shape[1]:].tolist()
        tokens += next((j for j, x in enumerate(new) if x in eos), len(new))
        lat.append(time.perf_counter() - t)
        if time.perf_counter() - start > args.timeout_s:
            break
    wall = time.perf_counter() - start
    return {"requests": len(lat), "errors": 0, "wall": wall, "rps": len(lat) / wall, "tps": tokens / wall,
            "ttft_p50": float("nan"), "ttft_p95": float("nan"),
            "lat_p50": statistics.median(lat), "lat_p95": statistics.quantiles(lat, n=100)[94] if len(lat) > 1 else lat[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny:llama")
    ap.add_argument("--template", default="chatml")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repetition-penalty", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout-s", type=float, default=300)
    ap.add_argument("--mixed", action="store_true",
                    help="answers of 0.5-1.5x --max-tokens and clients starting --stagger-s apart (arrivals while "
                         "others decode); default: equal answers, every client at t=0 (synchronised waves)")
    ap.add_argument("--stagger-s", type=float, default=0.25)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    env.pop("MEDTUNE_API_KEY", None)
    server = subprocess.Popen([sys.executable, "-m", "medtune", "serve", str(ROOT / "configs/tiny/chat.yaml"),
                               f"model.name_or_path={args.model}", f"model.template={args.template}",
                               "chat.system=null", f"serve.port={port}", f"serve.max_batch_size={max(args.concurrency)}",
                               "generation.do_sample=false", f"generation.repetition_penalty={args.repetition_penalty}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        rss_before = rss_mib(server.pid)
        rows = {f"serve c={c}": asyncio.run(level(url, c, args.requests, args.max_tokens, args.timeout_s, args.mixed,
                                                           args.stagger_s if args.mixed else 0.0))
                for c in args.concurrency}
        rss_after = rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    rows["naive generate (one at a time)"] = baseline(args)
    base, c1 = rows["naive generate (one at a time)"], rows[f"serve c={args.concurrency[0]}"]
    print(f"\nmodel {args.model}, {args.requests} requests × ≤{args.max_tokens} tokens, greedy{', mixed lengths, staggered arrivals' if args.mixed else ''}, "
          f"{args.threads} thread(s); server RSS {rss_before:.0f} → {rss_after:.0f} MiB\n")
    print("| run | ok | errors | req/s | tok/s | TTFT p50 / p95 s | latency p50 / p95 s | tok/s vs naive | vs c=1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['requests']} | {r['errors']} | {r['rps']:.2f} | {r['tps']:.1f} | "
              f"{r['ttft_p50']:.3f} / {r['ttft_p95']:.3f} | {r['lat_p50']:.3f} / {r['lat_p95']:.3f} | "
              f"{r['tps'] / base['tps']:.2f}x | {r['tps'] / c1['tps']:.2f}x |")


if __name__ == "__main__":
    main()
