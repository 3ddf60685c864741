"""Per-item results → the numbers in results.json: metrics with bootstrap CIs, paired differences
against the first model, and the breakdowns a reader needs to trust them. What a task type scores
and breaks down (letter histograms, categories, option-order consistency …) is its registered
object's business (`medtune.eval.task_types`); this module only aggregates.

A question asked in several option orders is one item: its score is the mean over orders, so
permutations never inflate N and the bootstrap resamples questions, not copies of them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from medtune.config import EvalConfig
from medtune.eval import metrics
from medtune.eval import task_types as types
from medtune.eval.tasks import Task, TaskData


def _metric(values: list[float], ev: EvalConfig, clip: bool = False) -> dict[str, float]:
    low, high = metrics.bootstrap_ci(values, ev.bootstrap, ev.seed)
    out = {"value": sum(values) / len(values) if values else float("nan"), "low": low, "high": high}
    return {k: min(max(v, 0.0), 1.0) for k, v in out.items()} if clip else out


def describe(task: TaskData, rows: list[dict[str, Any]], scores: dict[str, dict[str, float]],
             ev: EvalConfig, mode: str = "") -> dict[str, Any]:
    tt = types.task_type(task.task.type)
    return {"n": len(scores),
            "metrics": {k: _metric([s[k] for s in scores.values()], ev, k in tt.clipped) for k in tt.metric_keys(mode)},
            **tt.details(task, rows)}


def summarise(tasks: list[Task], data: dict[str, TaskData], results: dict[str, dict[str, Any]],
              models: list[str], ev: EvalConfig) -> dict[str, Any]:
    ref = models[0]
    out: dict[str, Any] = {"models": models, "reference": ref, "tasks": {}}
    for t in tasks:
        td, tt = data[t.name], types.task_type(t.type)
        entry: dict[str, Any] = {"type": t.type, "group": t.group, **tt.entry(t), "description": t.description,
                                 "items": tt.count(td), "dropped": dict(Counter(d.reason for d in td.dropped)),
                                 "modes": {}}
        modes = sorted({mode for m in models for mode in results[t.name][m]})
        for mode in modes:
            scores = {m: tt.scores(t, results[t.name][m][mode], mode) for m in models
                      if mode in results[t.name][m]}
            block: dict[str, Any] = {"models": {m: describe(td, results[t.name][m][mode], scores[m], ev, mode)
                                                for m in scores}, "vs_reference": {}}
            for m in scores:
                if m == ref or ref not in scores:
                    continue
                common = sorted(set(scores[ref]) & set(scores[m]))
                block["vs_reference"][m] = {
                    k: metrics.paired_bootstrap([scores[ref][i][k] for i in common], [scores[m][i][k] for i in common],
                                                ev.bootstrap, ev.seed) for k in tt.metric_keys(mode)}
            entry["modes"][mode] = block
        out["tasks"][t.name] = entry
    return out
