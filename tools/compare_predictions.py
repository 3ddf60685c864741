"""Compares models from the per-item predictions of different `medtune eval` runs, on the items they share.

    python tools/compare_predictions.py outputs/recipes/medical_sft/eval/predictions/base \
        tuned_140=outputs/recipes/ablation_eval/predictions/recipe_140 \
        no_general_140=outputs/recipes/ablation_eval/predictions/no_general_140 ...

Why: an ablation is often evaluated in a later run than the model it is compared with, on a subset of the
items (CPU time). Reading both runs' `predictions/<model>/<task>.<mode>.jsonl`, keeping the item ids every
model has, and recomputing the per-item score gives a paired comparison on identical items with the harness's
own paired bootstrap (2000 resamples, seed 0), so the arms and the full run sit in one table.
Per-item score: `refused` for generation safety tasks, `correct` for multiple choice.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medtune.eval.metrics import bootstrap_ci, paired_bootstrap

SCORE_FIELDS = ("refused", "correct")


def scores(path: Path) -> dict[str, float]:
    """Item id → the item's score from one predictions file."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        field = next((f for f in SCORE_FIELDS if f in row), None)
        if field is None:
            raise SystemExit(f"{path}: a row has none of {SCORE_FIELDS}; only refusal and multiple-choice files compare")
        out[row["id"]] = float(row[field])
    return out


def table(models: dict[str, Path], resamples: int = 2000, seed: int = 0) -> list[str]:
    first = next(iter(models))
    files = sorted({p.name for p in models[first].glob("*.jsonl")}.intersection(
        *({p.name for p in d.glob("*.jsonl")} for d in models.values())))
    names = list(models)
    lines = ["| task.mode | N | " + " | ".join(names) + " | " + " | ".join(f"{n} − {first}" for n in names[1:]) + " |",
             "|---|---|" + "---|" * (2 * len(names) - 1)]
    for f in files:
        per = {n: scores(d / f) for n, d in models.items()}
        ids = sorted(set.intersection(*(set(s) for s in per.values())))
        cols = [[per[n][i] for i in ids] for n in names]
        cells = []
        for c in cols:
            lo, hi = bootstrap_ci(c, resamples, seed)
            cells.append(f"{100 * sum(c) / len(c):.1f} [{100 * lo:.1f}, {100 * hi:.1f}]")
        for c in cols[1:]:
            d = paired_bootstrap(cols[0], c, resamples, seed)
            cells.append(f"{100 * d['diff']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]")
        lines.append(f"| {f.removesuffix('.jsonl')} | {len(ids)} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="[name=]predictions/<model> folder; the first is the reference")
    args = ap.parse_args()
    models = {}
    for spec in args.models:
        name, _, folder = spec.rpartition("=")
        path = Path(folder)
        if not path.is_dir():
            raise SystemExit(f"{folder}: not a predictions folder (medtune eval writes predictions/<model>/)")
        models[name or path.name] = path
    print("\n".join(table(models)))


if __name__ == "__main__":
    main()
