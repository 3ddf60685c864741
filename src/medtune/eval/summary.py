"""Per-item results → the numbers in results.json: metrics with bootstrap CIs, paired differences
against the first model, and the breakdowns a reader needs to trust them (parse failures, letter
histograms, single vs multi answer, categories, option-order consistency).

A question asked in several option orders is one item: its score is the mean over orders, so
permutations never inflate N and the bootstrap resamples questions, not copies of them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from medtune.config import EvalConfig
from medtune.eval import metrics
from medtune.eval.tasks import Task, TaskData

# Per-item metrics that get a CI and a paired difference, by task type; the first is the headline.
METRICS = {"multiple_choice": ["accuracy"], "open_qa": ["rouge_l", "bleu1", "bleu4", "refused"],
           "refusal": ["refused"], "ranking": ["ap", "p_at_1"], "rubric": ["rubric_score", "refused"]}
# HealthBench's aggregate: an item's rubric score can be negative (harmful criteria met); the mean is clipped to [0, 1].
CLIPPED = {"rubric_score"}


# Cloze multiple choice also reports lm-eval's acc_norm: the option's log-prob per character / per token.
MODE_METRICS = {("multiple_choice", "cloze"): ["accuracy", "accuracy_norm_char", "accuracy_norm_token"]}


def metric_keys(task_type: str, mode: str) -> list[str]:
    return MODE_METRICS.get((task_type, mode), METRICS[task_type])


def item_scores(task: Task, rows: list[dict[str, Any]], mode: str = "") -> dict[str, dict[str, float]]:
    """base item id → metric → score (option orders of one question averaged)."""
    if task.type != "multiple_choice":  # an item the judge could not grade (unparseable verdict) has no score
        return {r["id"]: {k: float(r[k]) for k in METRICS[task.type]} for r in rows
                if all(r.get(k) is not None for k in METRICS[task.type])}
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["base_id"]].append(r)
    fields = {k: "correct" + k.removeprefix("accuracy") for k in metric_keys(task.type, mode)}
    return {k: {key: sum(r[f] for r in g) / len(g) for key, f in fields.items()} for k, g in groups.items()}


def _metric(values: list[float], ev: EvalConfig, key: str = "") -> dict[str, float]:
    low, high = metrics.bootstrap_ci(values, ev.bootstrap, ev.seed)
    out = {"value": sum(values) / len(values) if values else float("nan"), "low": low, "high": high}
    return {k: min(max(v, 0.0), 1.0) for k, v in out.items()} if key in CLIPPED else out


def describe(task: TaskData, rows: list[dict[str, Any]], scores: dict[str, dict[str, float]],
             ev: EvalConfig, mode: str = "") -> dict[str, Any]:
    t = task.task
    out: dict[str, Any] = {"n": len(scores), "metrics": {k: _metric([s[k] for s in scores.values()], ev, k)
                                                         for k in metric_keys(t.type, mode)}}
    if t.type == "multiple_choice":
        out.update(_mc_details(task, rows))
    elif t.type == "open_qa":
        outputs, refs = [r["output"] for r in rows], [r["reference"] for r in rows]
        out.update(distinct1=metrics.distinct(outputs, 1), distinct2=metrics.distinct(outputs, 2),
                   length_ratio=metrics.length_ratio(outputs, refs),
                   mean_chars=sum(len(metrics.chars(o)) for o in outputs) / max(len(outputs), 1))
    elif t.type == "refusal":
        out["expect"] = t.expect
    return out


def _mc_details(task: TaskData, rows: list[dict[str, Any]]) -> dict[str, Any]:
    shown = [r for r in rows if r["shift"] == 0]
    out: dict[str, Any] = {
        "pred_hist": dict(sorted(Counter(r["pred"] or "unparseable" for r in rows).items())),
        "gold_hist": dict(sorted(Counter(r["gold"] for r in rows).items())),
        "skipped_multi": len({x.meta.get("_base_id", x.id) for x in task.items if x.multi}) - len(
            {r["base_id"] for r in rows if r["multi"]}),
    }
    if rows and "output" in rows[0]:
        out["parse_fail_rate"] = sum(r["pred"] is None for r in rows) / len(rows)
    for kind, sel in (("single", [r for r in shown if not r["multi"]]), ("multi", [r for r in shown if r["multi"]])):
        if sel:
            out[kind] = {"n": len(sel), "accuracy": sum(r["correct"] for r in sel) / len(sel)}
            if kind == "multi" and "partial" in sel[0]:
                out[kind]["partial"] = sum(r["partial"] for r in sel) / len(sel)
    cats: dict[str, list[int]] = defaultdict(list)
    for r in shown:
        if r["category"]:
            cats[r["category"]].append(r["correct"])
    out["categories"] = {c: {"n": len(v), "accuracy": sum(v) / len(v)} for c, v in sorted(cats.items())}
    if any(r["shift"] for r in rows):
        groups: dict[str, list[int]] = defaultdict(list)
        for r in rows:
            groups[r["base_id"]].append(r["correct"])
        out["consistency"] = sum(all(g) for g in groups.values()) / len(groups)
        out["first_order_accuracy"] = sum(r["correct"] for r in shown) / len(shown)
    return out


def summarise(tasks: list[Task], data: dict[str, TaskData], results: dict[str, dict[str, Any]],
              models: list[str], ev: EvalConfig) -> dict[str, Any]:
    ref = models[0]
    out: dict[str, Any] = {"models": models, "reference": ref, "tasks": {}}
    for t in tasks:
        td = data[t.name]
        items = {x.meta.get("_base_id", x.id) for x in td.items} if t.type == "multiple_choice" else td.items
        entry: dict[str, Any] = {"type": t.type, "group": t.group, "expect": t.expect if t.type == "refusal" else None,
                                 "description": t.description, "items": len(items),
                                 "dropped": dict(Counter(d.reason for d in td.dropped)), "modes": {}}
        modes = sorted({mode for m in models for mode in results[t.name][m]})
        for mode in modes:
            scores = {m: item_scores(t, results[t.name][m][mode], mode) for m in models
                      if mode in results[t.name][m]}
            block: dict[str, Any] = {"models": {m: describe(td, results[t.name][m][mode], scores[m], ev, mode)
                                                for m in scores}, "vs_reference": {}}
            for m in scores:
                if m == ref or ref not in scores:
                    continue
                common = sorted(set(scores[ref]) & set(scores[m]))
                block["vs_reference"][m] = {
                    k: metrics.paired_bootstrap([scores[ref][i][k] for i in common], [scores[m][i][k] for i in common],
                                                ev.bootstrap, ev.seed) for k in metric_keys(t.type, mode)}
            entry["modes"][mode] = block
        out["tasks"][t.name] = entry
    return out
