"""Knowledge-base build rate and query latency at 100k chunks: `medtune kb` (bm25s over jieba words) against
rank_bm25 (the BM25 most RAG demos reach for: LangChain's BM25Retriever, MedicalGPT-style scripts).

    pip install rank_bm25          # the baseline only
    OMP_NUM_THREADS=1 python benchmarks/kb_scale.py --chunks 100000 --queries 200 [--encoder ST_FOLDER]

The corpus is real medical answers from ../shared/data (Toyhom, Huatuo-Llama, CMtMedQA, Huatuo-26M test),
repeated with a numbered suffix until it reaches --chunks records of at most 200 characters (one chunk
each), split over 100 JSONL files. Queries are real patient questions (Huatuo-26M test). Measured:
  build        `medtune kb` from scratch: seconds, chunks/s, peak RSS (each build in its own process)
  rebuild      one of the 100 files changed: seconds (only its records are re-read and segmented)
  query        per-query latency, p50 / p95 ms, medtune bm25 vs rank_bm25's get_top_n on the same words,
               alternating query by query; top-5 overlap between the two (same BM25, other parameters)
  dense        with --encoder: embedding throughput and faiss query latency (plumbing with a tiny model)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def corpus(folder: Path, n: int) -> list[str]:
    texts: list[str] = []
    for name, field in [("chinese_medical_dialogue_toyhom", None), ("huatuo_llama_med_chinese", "output"),
                        ("cmtmedqa_zhongjing", None), ("huatuo26m_test/huatuo26m_test_dev300.jsonl", "answer")]:
        for f in sorted((DATA / name).rglob("*")) if (DATA / name).is_dir() else [DATA / name]:
            if f.suffix in (".json", ".jsonl"):
                raw = f.read_text(encoding="utf-8")
                rows = json.loads(raw) if raw.lstrip().startswith("[") else [json.loads(x) for x in raw.splitlines() if x]
                for r in rows:
                    value = r.get(field) if field else next((r[k] for k in ("output", "answer", "response") if
                                                             isinstance(r, dict) and isinstance(r.get(k), str)), None)
                    if isinstance(value, str) and len(value) > 20:
                        texts.append(value[:190])
    if not texts:
        sys.exit(f"no texts found under {DATA}")
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-n // 100)
    for part in range(100):
        rows = [{"id": f"r{i}", "text": f"{texts[i % len(texts)]}（{i}）"} for i in range(part * per, min(n, (part + 1) * per))]
        (folder / f"part{part:03d}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                      encoding="utf-8")
    return texts


def build(cfg: Path, extra: list[str]) -> dict:
    """One `medtune kb` in its own process: wall seconds and the child's peak RSS."""
    code = ("import resource, sys, time; from medtune.cli import main; t = time.perf_counter(); "
            f"rc = main(['kb', {str(cfg)!r}, *{extra!r}]); "
            "print('BENCH', time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    _, seconds, rss, rc = next(x for x in out.splitlines() if x.startswith("BENCH")).split()
    assert rc == "0", out
    return {"seconds": float(seconds), "rss_mib": int(rss) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--encoder", help="a sentence-transformers folder: also time dense retrieval")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kb-bench-"))
    corpus(work / "docs", args.chunks)
    cfg = work / "kb.yaml"
    cfg.write_text(json.dumps({"kb": {"documents": [str(work / "docs")], "index": str(work / "kb"), "chunk_chars": 300,
                                      "embedding_model": args.encoder}}))
    full = build(cfg, [])
    chunks = sum(1 for _ in open(work / "kb/chunks.jsonl", encoding="utf-8"))
    print(f"build: {chunks} chunks in {full['seconds']:.1f} s = {chunks / full['seconds']:,.0f} chunks/s, "
          f"peak RSS {full['rss_mib']:,.0f} MiB" + (" (with embeddings)" if args.encoder else ""))
    changed = work / "docs/part050.jsonl"
    changed.write_text(changed.read_text(encoding="utf-8").replace("（", "(", 5), encoding="utf-8")
    again = build(cfg, [])
    report = json.loads((work / "kb/report.json").read_text())
    print(f"rebuild, 1 of 100 files changed: {again['seconds']:.1f} s ({full['seconds'] / again['seconds']:.1f}x faster "
          f"than from scratch; {report['embedded']} chunks re-embedded), peak RSS {again['rss_mib']:,.0f} MiB")

    from rank_bm25 import BM25Okapi

    from medtune.kb.retrieve import KnowledgeBase, words

    kb = KnowledgeBase.open(work / "kb", args.encoder)
    t = time.perf_counter()
    baseline = BM25Okapi([c["words"] for c in kb.chunks])
    print(f"rank_bm25 index over the same words: {time.perf_counter() - t:.1f} s (medtune's includes reading, "
          "chunking and segmenting the documents)")
    raw = (DATA / "huatuo26m_test/huatuo26m_test_dev300.jsonl").read_text(encoding="utf-8").splitlines()
    questions = [json.loads(x)["question"] for x in raw][: args.queries]
    kb.search(questions[0], 5)  # load the index
    ours, theirs, overlap = [], [], []
    for q in questions:  # alternating, query by query
        t = time.perf_counter()
        a = [h.chunk["id"] for h in kb.search(q, 5)]
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        terms = words(q)
        scores = baseline.get_scores(terms)
        b = [kb.chunks[i]["id"] for i in sorted(range(len(scores)), key=lambda i: -scores[i])[:5]]
        theirs.append(time.perf_counter() - t)
        overlap.append(len(set(a) & set(b)) / 5)

    def ms(xs: list[float], p: float) -> float:
        return 1000 * statistics.quantiles(xs, n=100)[int(p) - 1]

    print(f"query over {chunks} chunks, {len(questions)} queries: medtune bm25 p50 {ms(ours, 50):.1f} ms, "
          f"p95 {ms(ours, 95):.1f} ms | rank_bm25 p50 {ms(theirs, 50):.1f} ms, p95 {ms(theirs, 95):.1f} ms | "
          f"speed-up at p50 {ms(theirs, 50) / ms(ours, 50):.1f}x; top-5 overlap {statistics.mean(overlap):.2f}")
    if args.encoder:
        lat = []
        for q in questions:
            t = time.perf_counter()
            kb.search(q, 5, "dense")
            lat.append(time.perf_counter() - t)
        print(f"dense query (encode + faiss flat IP over {chunks}): p50 {ms(lat, 50):.1f} ms, p95 {ms(lat, 95):.1f} ms")
    print(f"machine: {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
