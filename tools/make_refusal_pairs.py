"""Writes preference pairs that teach where a refusal belongs: harmful requests refused, their look-alikes answered.

    medtune eval configs/recipes/medical_sft.yaml eval.tasks=[harmful_medical_gen_dev] \
        eval.output_dir=outputs/recipes/dpo_pair_source          # base + recipe answers to the dev requests
    python tools/make_refusal_pairs.py outputs/recipes/refusal_pairs.jsonl \
        --harmful outputs/recipes/dpo_pair_source/predictions/tuned/harmful_medical_gen_dev.generate.jsonl \
                  outputs/recipes/dpo_pair_source/predictions/base/harmful_medical_gen_dev.generate.jsonl \
        --ordinary ../shared/data/huatuo_llama_med_chinese/llama_data.json --ordinary-limit 112

Why pairs and not more refusal rows: SFT on refusal text (the refusal and contrastive stages in
configs/recipes/) raised refusals of harmful requests and over-refusals of ordinary ones together. The 270M
model learned the refusal opening as a way to begin any medical answer. A preference pair says which of two
answers to the *same* prompt is better, so the contrast is inside each example:

- **harmful** (the dev requests of `gen_harmful_dev`): chosen = the shipped refusal (`refusal_medical_zh`),
  rejected = the model's own compliant answer, taken from the first `--harmful` predictions file where the
  rules in `medtune/eval/refusal.yaml` did not see a refusal (list the model being aligned first, the base
  after it for the requests the model already refuses). DPO then lowers what the model actually says.
- **benign look-alike** (the dev look-alikes, `benign_medical_zh`): chosen = the shipped answer, rejected = the
  refusal its category would get (naming the same drug, document or procedure where that refusal names one):
  the over-refusal the SFT stages produced.
- **ordinary** (`--ordinary`, alpaca JSON lines such as Huatuo's): chosen = the dataset's answer, rejected = a
  refusal, so ordinary medical questions are pushed away from refusing too.

Dev templates only, so `harmful_medical_gen_test` and `benign_medical_gen_test` still measure generalisation.
Output: medtune's pairwise rows `{"id", "kind", "prompt", "chosen", "rejected"}` and a count per kind on stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_eval_sets as sets  # a sibling script: the templates, tables and refusals

from medtune.eval.safety import RefusalRules

# Refusals of ordinary questions: the shapes the over-refusing stages wrote (an apology, "cannot provide").
ORDINARY_REFUSALS = (
    "抱歉，我不能提供这方面的医疗建议。你的问题涉及具体病情，请到正规医院就诊，由医生当面评估。",
    "抱歉，我无法回答这个问题。涉及诊断和用药的问题，请咨询专业医生。",
    "对不起，我不能为你提供诊断或治疗方案，这可能带来风险。建议尽快去医院检查。",
    "抱歉，我不能提供关于用药和治疗的信息，请在医生指导下处理。",
)


def harmful_pairs(predictions: list[Path], rules: RefusalRules) -> tuple[list[dict], int]:
    """(pairs, requests left out): one pair per dev request with a compliant answer in some predictions file."""
    answers: list[dict[str, str]] = [_outputs(p) for p in predictions]
    dev = sets.requests(sets.HARMFUL, "harmful")["dev"]
    pairs, missing = [], 0
    for r, row in zip(dev, sets.refusal_sft(dev), strict=True):
        qid = r["id"]
        compliant = next((a[qid] for a in answers if qid in a and a[qid].strip() and not rules.refused(a[qid])), None)
        if compliant is None:
            missing += 1
            continue
        pairs.append(_pair(f"harmful-{qid.rsplit('-', 1)[1]}", "harmful", row["instruction"], row["output"],
                           compliant.strip()))
    return pairs, missing


def benign_pairs() -> list[dict]:
    """The dev look-alikes: the shipped answer over the refusal of the same category, naming the same thing."""
    dev = sets.requests(sets.BENIGN, "benign")["dev"]
    return [_pair(f"benign-{r['id'].rsplit('-', 1)[1]}", "benign", r["question"], answered["output"],
                  sets.REFUSALS[r["meta"]["category"]].format(who="他人", what=sets.subject(r)))
            for r, answered in zip(dev, sets.benign_sft(dev), strict=True)]


def ordinary_pairs(path: Path, limit: int, seed: int, max_chars: int) -> list[dict]:
    """`limit` alpaca rows (a seeded sample of those with an answer of 20..max_chars characters), each
    answer preferred over a refusal."""
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}:{i}: not a JSON line ({e.msg}); --ordinary takes alpaca JSON lines") from None
        question = f"{row.get('instruction', '')}\n{row.get('input', '')}".strip()
        answer = str(row.get("output", "")).strip()
        if question and 20 <= len(answer) <= max_chars:
            rows.append((i, question, answer))
    picked = sorted(random.Random(seed).sample(rows, min(limit, len(rows))))
    return [_pair(f"ordinary-{line}", "ordinary", q, a, ORDINARY_REFUSALS[k % len(ORDINARY_REFUSALS)])
            for k, (line, q, a) in enumerate(picked)]


def _pair(pid: str, kind: str, prompt: str, chosen: str, rejected: str) -> dict[str, Any]:
    return {"id": pid, "kind": kind, "prompt": prompt, "chosen": chosen, "rejected": rejected}


def _outputs(path: Path) -> dict[str, str]:
    """Item id → generated output, from one `medtune eval` predictions file."""
    if not path.is_file():
        raise SystemExit(f"{path}: no such predictions file (run the `medtune eval` line in this script's docstring)")
    out = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        if "id" not in row or "output" not in row:
            raise SystemExit(f"{path}:{i}: a predictions row needs id and output")
        out[str(row["id"])] = str(row["output"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="pairwise JSON lines to write")
    ap.add_argument("--harmful", type=Path, nargs="+", required=True,
                    help="predictions of harmful_medical_gen_dev, the model being aligned first")
    ap.add_argument("--ordinary", type=Path, help="alpaca JSON lines of ordinary medical questions with answers")
    ap.add_argument("--ordinary-limit", type=int, default=112)
    ap.add_argument("--ordinary-max-chars", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    harmful, missing = harmful_pairs(args.harmful, RefusalRules.load())
    pairs = harmful + benign_pairs()
    if args.ordinary:
        pairs += ordinary_pairs(args.ordinary, args.ordinary_limit, args.seed, args.ordinary_max_chars)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    tmp.replace(args.out)
    counts = {k: sum(p["kind"] == k for p in pairs) for k in ("harmful", "benign", "ordinary")}
    print(f"{args.out}: {len(pairs)} pairs {counts}; {missing} harmful requests left out "
          "(refused in every predictions file)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
