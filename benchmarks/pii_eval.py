"""Score medtune's PII/PHI detection span-exact on the generated records, and count what it flags in real text.

    python benchmarks/pii_eval.py [--split dev|test|holdout|holdout2] [--errors 20] [--real 1000] [--model DIR]

Records: tests/fixtures/pii_gen/{dev,test}.jsonl (benchmarks/pii_generator.py). A detection is a true
positive when its type, start and end equal a labelled span's. `--real N`: N rows each of Huatuo,
CMtMedQA and Toyhom (../shared/data) — consultations and answers that carry almost no PII — with every
detection printed for a human to judge.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections import Counter
from pathlib import Path

from medtune.data.pii import ModelDetector, detect

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared/data"


def score(records: list[dict], model=None) -> tuple[dict[str, dict[str, float]], list[str]]:
    tp, fp, fn = Counter(), Counter(), Counter()
    errors = []
    for r in records:
        gold = {(s["type"], s["start"], s["end"]) for s in r["spans"]}
        found = {(s.type, s.start, s.end) for s in detect(r["text"], model)}
        for t, _, _ in found & gold:
            tp[t] += 1
        for t, a, b in found - gold:
            fp[t] += 1
            errors.append(f"FP {t} {r['text'][a:b]!r} in {r['id']}: …{r['text'][max(0, a - 12):b + 12]!r}…")
        for t, a, b in gold - found:
            fn[t] += 1
            errors.append(f"FN {t} {r['text'][a:b]!r} in {r['id']}: …{r['text'][max(0, a - 12):b + 12]!r}…")
    table = {}
    for t in sorted(set(tp) | set(fp) | set(fn)):
        p = tp[t] / (tp[t] + fp[t]) if tp[t] + fp[t] else 1.0
        rc = tp[t] / (tp[t] + fn[t]) if tp[t] + fn[t] else 1.0
        table[t] = {"precision": round(p, 3), "recall": round(rc, 3), "spans": tp[t] + fn[t], "tp": tp[t],
                    "fp": fp[t], "fn": fn[t]}
    total = sum(tp.values()), sum(fp.values()), sum(fn.values())
    table["micro"] = {"precision": round(total[0] / max(total[0] + total[1], 1), 3),
                      "recall": round(total[0] / max(total[0] + total[2], 1), 3), "spans": total[0] + total[2],
                      "tp": total[0], "fp": total[1], "fn": total[2]}
    return table, errors


def real_texts(n: int) -> dict[str, list[str]]:
    out = {}
    with (SHARED / "huatuo_llama_med_chinese/llama_data.json").open(encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(n)]
    out["huatuo"] = [r["instruction"] + "\n" + r["output"] for r in rows]
    path = next((SHARED / "cmtmedqa_zhongjing").rglob("*.json*"), None)
    if path:
        text = path.read_text(encoding="utf-8")
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines()[:n] if x.strip()]
        out["cmtmedqa"] = [json.dumps(r, ensure_ascii=False) for r in rows[:n]]
    toyhom = next((SHARED / "chinese_medical_dialogue_toyhom").glob("*.csv"))
    rows = list(csv.DictReader(io.StringIO(toyhom.read_bytes().decode("gb18030"))))[:n]
    out["toyhom"] = [f"{r['title']}\n{r['ask']}\n{r['answer']}" for r in rows]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--errors", type=int, default=20)
    ap.add_argument("--real", type=int, default=0)
    ap.add_argument("--model", help="a token-classification folder (tools/train_pii_ner.py) merged with the rules")
    args = ap.parse_args()
    model = ModelDetector(args.model) if args.model else None
    records = [json.loads(x) for x in (ROOT / f"tests/fixtures/pii_gen/{args.split}.jsonl").read_text(encoding="utf-8").splitlines()]
    table, errors = score(records, model)
    print(f"{args.split}: {len(records)} records\n\n| type | spans | P | R | FP | FN |\n|---|---|---|---|---|---|")
    for t, v in table.items():
        print(f"| {t} | {v['spans']} | {v['precision']:.3f} | {v['recall']:.3f} | {v['fp']} | {v['fn']} |")
    for e in errors[: args.errors]:
        print(e)
    if args.real:
        for name, texts in real_texts(args.real).items():
            hits = [(s, t) for t in texts for s in detect(t, model)]
            print(f"\nreal {name}: {len(texts)} rows, {len(hits)} detections {dict(Counter(s.type for s, _ in hits))}")
            for s, t in hits[:40]:
                print(f"  {s.type} {s.value!r}: …{t[max(0, s.start - 15):s.end + 15]!r}…")


if __name__ == "__main__":
    main()
