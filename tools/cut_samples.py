"""Cut the samples shipped in src/medtune/data/samples/ from ../shared/data (run once; kept for provenance).

    python tools/cut_samples.py ../shared/data

Toyhom's 内科 sample CSV (MIT) → a quickstart training set in the original GB18030 CSV format
(so the demo exercises the real converter) plus ten held-out questions that are not trained on.
Selection: answers of 40–200 characters and asks of 10–120 (to keep the CPU demo short), one row
per title (no duplicate questions across train and held-out), shuffled with a fixed seed.
"""

import csv
import io
import json
import random
import sys
from pathlib import Path

shared = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
out = Path(__file__).resolve().parents[1] / "src/medtune/data/samples"
src = shared / "chinese_medical_dialogue_toyhom/sample_IM_neike_5000-6000.csv"
rows = list(csv.DictReader(io.StringIO(src.read_bytes().decode("gb18030"))))
seen, pool = set(), []
for r in rows:
    key = r["title"].strip()
    if key in seen or not (40 <= len(r["answer"]) <= 200 and 10 <= len(r["ask"]) <= 120):
        continue
    seen.add(key)
    pool.append(r)
random.Random(20261122).shuffle(pool)
train, held = pool[:400], pool[400:410]
buf = io.StringIO()
writer = csv.DictWriter(buf, fieldnames=["department", "title", "ask", "answer"], lineterminator="\n")
writer.writeheader()
writer.writerows(train)
(out / "toyhom_neike_sample.csv").write_bytes(buf.getvalue().encode("gb18030"))
with (out / "quickstart_questions.jsonl").open("w", encoding="utf-8") as f:
    for r in held:
        f.write(json.dumps({"question": r["ask"].strip(), "reference": r["answer"].strip(),
                            "department": r["department"]}, ensure_ascii=False) + "\n")
print(f"{len(train)} training rows, {len(held)} held-out questions from {len(rows)} rows")

# Preference pairs for rm/dpo recipes: the true answer (chosen) against the answer to a question
# from another department (rejected): a relevance preference, cMedQA2-negative style, from MIT data.
rng = random.Random(7)
pairs = []
for r in train[:120]:
    other = rng.choice([o for o in train if o["department"] != r["department"]])
    pairs.append({"prompt": r["ask"].strip(), "chosen": r["answer"].strip(), "rejected": other["answer"].strip()})
with (out / "toyhom_pairs.jsonl").open("w", encoding="utf-8") as f:
    for p in pairs:
        f.write(json.dumps(p, ensure_ascii=False) + "\n")
# Plain medical text for continued pretraining: the doctors' answers, one document per line.
(out / "toyhom_answers.txt").write_text("\n".join(r["answer"].strip().replace("\n", " ") for r in train) + "\n",
                                        encoding="utf-8")
print(f"{len(pairs)} preference pairs, {len(train)} pretraining documents")
