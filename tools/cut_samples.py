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
