"""Soak test of `medtune serve` under hostile traffic, with /health probed all along.

    python benchmarks/serve_soak.py [--model tiny:llama] [--requests 2000] [--concurrency 32] [--threads 2]

A real `medtune serve` process on 127.0.0.1 (loopback only, bounded in count and time). Workers send a
mix of requests: good ones (streaming and not, some with near-limit prompts that take a while to
tokenise), 20% malformed (bad JSON, 10,000-deep nesting, out-of-range sampling values such as seed
2^64 or top_k -3, oversized and over-declared bodies, image parts) and 10% clients that disconnect
mid-answer. A prober calls /health every 50 ms. Reported: responses by status, 5xx count, connection
resets, server RSS before and after, p50/p95/max /health latency, and whether greedy answers to the
same questions are identical before and after the soak (no request spoiled another's state).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [json.loads(line)["question"] for line in
             (ROOT / "src/medtune/data/samples/quickstart_questions.jsonl").read_text(encoding="utf-8").splitlines()]
LIMIT = 1_000_000  # serve.max_request_bytes (the default)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bad_bodies() -> list[tuple[str, bytes, dict]]:
    ask = [{"role": "user", "content": "头痛怎么办？"}]
    j = lambda body: json.dumps(body, ensure_ascii=False).encode()  # noqa: E731
    return [
        ("bad_json", b"{not json", {}),
        ("deep", b'{"messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", {}),
        ("seed", j({"messages": ask, "seed": 2**64}), {}),
        ("top_k", j({"messages": ask, "top_k": -3}), {}),
        ("top_p", j({"messages": ask, "top_p": -1}), {}),
        ("rep", j({"messages": ask, "repetition_penalty": 0}), {}),
        ("temp", j({"messages": ask, "temperature": -1}), {}),
        ("image", j({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}), {}),
        ("oversized", b'{"messages": "' + b"x" * (LIMIT + 10) + b'"}', {}),
        ("declared", b"{}", {"Content-Length": str(100 * LIMIT)}),
    ]


async def good(client: httpx.AsyncClient, url: str, rng: random.Random, stats: Counter, disconnect: bool) -> None:
    q = rng.choice(QUESTIONS)
    if rng.random() < 0.05:  # a near-limit prompt: slow to tokenise, must not block /health
        q = "头痛" * 60_000
    body = {"messages": [{"role": "user", "content": q}], "max_tokens": 32, "temperature": 0,
            "stream": rng.random() < 0.5 or disconnect}
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        stats[f"good_{r.status_code}"] += 1
        n = 0
        async for _ in r.aiter_lines():
            n += 1
            if disconnect and n >= 3:
                stats["disconnected"] += 1
                return  # leaving the block closes the connection mid-answer


async def bad(client: httpx.AsyncClient, url: str, rng: random.Random, stats: Counter) -> None:
    name, content, headers = rng.choice(bad_bodies())
    if name == "declared":  # the server must answer from the header alone
        r = await client.post(url + "/v1/chat/completions", content=content,
                              headers={"Content-Type": "application/json"})
    else:
        r = await client.post(url + "/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})
    stats[f"bad_{r.status_code}"] += 1
    if r.status_code >= 500 or "error" not in r.json():
        stats["bad_not_json_4xx"] += 1


async def soak(url: str, n: int, concurrency: int, seed: int, pid: int) -> tuple[Counter, list[float], list[float]]:
    stats: Counter = Counter()
    health: list[float] = []
    rss: list[float] = []
    todo = iter(range(n))
    done = asyncio.Event()

    async def prober() -> None:
        async with httpx.AsyncClient(timeout=30) as c:
            while not done.is_set():
                t = time.perf_counter()
                r = await c.get(url + "/health")
                health.append(time.perf_counter() - t)
                stats[f"health_{r.status_code}"] += 1
                if len(health) % 40 == 0:
                    rss.append(rss_mib(pid))
                await asyncio.sleep(0.05)

    async def worker(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        async with httpx.AsyncClient(timeout=120) as client:
            for _ in todo:
                roll = rng.random()
                try:
                    if roll < 0.2:
                        await bad(client, url, rng, stats)
                    else:
                        await good(client, url, rng, stats, disconnect=roll < 0.3)
                except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError) as e:
                    stats[f"reset_{type(e).__name__}"] += 1

    probe = asyncio.create_task(prober())
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    done.set()
    await probe
    return stats, health, rss


def answers(url: str) -> list[str]:
    out = []
    for q in QUESTIONS:
        r = httpx.post(url + "/v1/chat/completions", timeout=120,
                       json={"messages": [{"role": "user", "content": q}], "max_tokens": 32, "temperature": 0})
        out.append(r.json()["choices"][0]["message"]["content"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny:llama")
    ap.add_argument("--template", default="chatml")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    env.pop("MEDTUNE_API_KEY", None)
    server = subprocess.Popen([sys.executable, "-m", "medtune", "serve", str(ROOT / "configs/tiny/chat.yaml"),
                               f"model.name_or_path={args.model}", f"model.template={args.template}",
                               "chat.system=null", f"serve.port={port}", "serve.max_tokens_cap=64",
                               "generation.do_sample=false", "generation.repetition_penalty=1.0"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        before_answers, rss0 = answers(url), rss_mib(server.pid)
        start = time.perf_counter()
        stats, health, rss = asyncio.run(soak(url, args.requests, args.concurrency, args.seed, server.pid))
        wall = time.perf_counter() - start
        rss1, after_answers = rss_mib(server.pid), answers(url)
    finally:
        server.terminate()
        server.wait(timeout=30)
    fivexx = sum(v for k, v in stats.items() if k.split("_")[-1].startswith("5"))
    q = statistics.quantiles(health, n=100)
    print(f"{args.requests} requests at concurrency {args.concurrency} in {wall:.1f} s ({args.model}, {args.threads} threads)")
    print("responses:", dict(sorted(stats.items())))
    print(f"5xx: {fivexx}; resets: {sum(v for k, v in stats.items() if k.startswith('reset'))}; "
          f"server RSS {rss0:.0f} -> {rss1:.0f} MiB")
    quarter = max(1, len(rss) // 4)
    print("server RSS during the soak (MiB, every 40 probes):", " ".join(f"{x:.0f}" for x in rss[::quarter]),
          f"| first quarter max {max(rss[:quarter]):.0f}, last quarter max {max(rss[-quarter:]):.0f}")
    print(f"/health latency over {len(health)} probes: p50 {q[49] * 1000:.1f} ms, p95 {q[94] * 1000:.1f} ms, "
          f"max {max(health) * 1000:.1f} ms")
    print(f"greedy answers identical before and after: {before_answers == after_answers}")


if __name__ == "__main__":
    main()
