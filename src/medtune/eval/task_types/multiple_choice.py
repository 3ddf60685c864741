"""Multiple choice: exam questions with lettered options (CMB-Exam, CMExam, MedQA, CMMLU, C-Eval).

Scored three ways: `loglik` (the answer letter's log-likelihood after the question and its options),
`cloze` (each option's text as the reply to the question alone; lm-eval's acc and acc_norm) and
`generate` (a greedy answer read by the strict letter extractor). A question can be asked in several
option orders (`eval.permutations`); it stays one item, scored as the mean over its orders.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from medtune.eval.extract import extract
from medtune.eval.markup import Block, pct
from medtune.eval.records import MCItem, load_mc
from medtune.eval.task_types import TASK_TYPES, Rows, TaskType, user
from medtune.eval.tasks import Task, TaskData, data_files, render_prompt, sample

if TYPE_CHECKING:
    from medtune.config import EvalConfig
    from medtune.eval.run import Subject
    from medtune.eval.safety import RefusalRules


@TASK_TYPES.register("multiple_choice", "exam questions with lettered options: loglik, cloze and generate modes")
class MultipleChoice(TaskType):
    name = "multiple_choice"
    prompt = "mc_zh.jinja"
    metrics = ("accuracy",)
    # Cloze also reports lm-eval's acc_norm: the option's log-prob per character / per token.
    mode_metrics = {"cloze": ("accuracy", "accuracy_norm_char", "accuracy_norm_token")}
    labels = {"accuracy": "accuracy", "accuracy_norm_char": "acc_norm (per char)",
              "accuracy_norm_token": "acc_norm (per token)"}
    side_by_side = False
    exports = ("lm_eval",)

    def load(self, task: Task, ev: EvalConfig) -> TaskData:
        files = data_files(task)
        items, dropped = load_mc(task.format, task.path(task.data))
        shots: list[MCItem] = []
        if ev.shots:
            if task.fewshot_data:
                shots = load_mc(task.format, task.path(task.fewshot_data))[0][: ev.shots]
                files.append(task.path(task.fewshot_data))
            else:  # the first k items become the examples and are not scored
                shots, items = items[: ev.shots], items[ev.shots:]
        items = sample(items, task.limit or ev.limit, ev.seed)
        return TaskData(task, permuted(items, ev.permutations), shots, dropped, files)

    def run(self, td: TaskData, s: Subject, ev: EvalConfig, rules: RefusalRules) -> Rows:
        return run_mc(td, s, ev)

    def scores(self, task: Task, rows: list[dict[str, Any]], mode: str) -> dict[str, dict[str, float]]:
        """Base question id → metric → mean over the question's option orders."""
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            groups[r["base_id"]].append(r)
        fields = {k: "correct" + k.removeprefix("accuracy") for k in self.metric_keys(mode)}
        return {k: {key: sum(r[f] for r in g) / len(g) for key, f in fields.items()} for k, g in groups.items()}

    def count(self, td: TaskData) -> int:
        return len({x.meta.get("_base_id", x.id) for x in td.items})

    def details(self, td: TaskData, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return details(td, rows)

    def report(self, summary: dict[str, Any], charts: dict[str, str]) -> list[Block]:
        return section(summary, charts)


def permuted(items: list[MCItem], n: int) -> list[MCItem]:
    """Each question in `n` option orders (cyclic shifts; shift 0 = as given). A model that knows the
    answer picks it in every order; one that favours a position does not."""
    out = []
    for item in items:
        letters = list(item.options)
        for shift in range(min(n, len(letters))):
            texts = [item.options[letters[(i + shift) % len(letters)]] for i in range(len(letters))]
            answer = "".join(sorted(letters[(letters.index(a) - shift) % len(letters)] for a in item.answer))
            out.append(replace(item, options=dict(zip(letters, texts, strict=True)), answer=answer,
                               meta={**item.meta, "_base_id": item.id, "_shift": shift},
                               id=item.id if shift == 0 else f"{item.id}#{shift}"))
    return out



def run_mc(td: TaskData, s: Subject, ev: EvalConfig) -> Rows:
    task, items = td.task, td.items
    shots = [{"question": x.question, "options": x.options, "answer": x.answer} for x in td.shots]
    prompts = [user(render_prompt(task, question=x.question, options=x.options, multi=x.multi, shots=shots))
               for x in items]
    base = [{"id": x.id, "base_id": x.meta.get("_base_id", x.id), "shift": x.meta.get("_shift", 0),
             "category": str(x.meta.get(task.category, "")) if task.category else "", "multi": x.multi,
             "gold": x.answer} for x in items]
    out: Rows = {}
    if "loglik" in ev.modes and s.scorer is not None:
        single = [i for i, x in enumerate(items) if not x.multi]  # one letter's likelihood cannot pick a set
        scores = s.scorer.letters([prompts[i] for i in single], [list(items[i].options) for i in single])
        out["loglik"] = []
        for i, lp in zip(single, scores, strict=True):
            pred = max(lp, key=lambda k: lp[k])
            out["loglik"].append({**base[i], "pred": pred, "correct": int(pred == items[i].answer),
                                  "logprobs": {k: round(v, 4) for k, v in lp.items()}})
    if "cloze" in ev.modes and s.scorer is not None:
        out["cloze"] = run_cloze(td, s, base)
    if "generate" in ev.modes:
        outputs = s.generate(task.name, [x.id for x in items], prompts, ev.mc_max_new_tokens, ev.batch_size)
        out["generate"] = []
        for b, x, o in zip(base, items, outputs, strict=True):
            pred = extract(o, x.options)
            out["generate"].append({**b, "output": o, "pred": pred, "correct": int(pred == x.answer),
                                    "partial": _partial(pred, x.answer)})
    return out


def run_cloze(td: TaskData, s: Subject, base: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each single-answer item scored in the cloze formulation: the question alone, every option's
    text as the assistant's reply. The prediction is the option with the highest summed log-prob
    (lm-eval's acc), or the highest per character / per token (acc_norm), so a small model's
    preference for the first letter cannot decide the answer."""
    task, items = td.task, td.items
    shots = [{"question": x.question, "options": x.options, "answer": x.answer} for x in td.shots if not x.multi]
    single = [i for i, x in enumerate(items) if not x.multi]
    prompts = [user(render_prompt(task, cloze=True, question=items[i].question, shots=shots)) for i in single]
    scored = s.scorer.options(prompts, [list(items[i].options.values()) for i in single])
    rows = []
    for i, per_option in zip(single, scored, strict=True):
        x, letters = items[i], list(items[i].options)
        by = {"": [lp for lp, _ in per_option],
              "_norm_char": [lp / max(len(x.options[k]), 1) for k, (lp, _) in zip(letters, per_option, strict=True)],
              "_norm_token": [lp / max(n, 1) for lp, n in per_option]}
        row = {**base[i], "logprobs": {k: round(lp, 4) for k, (lp, _) in zip(letters, per_option, strict=True)},
               "tokens": {k: n for k, (_, n) in zip(letters, per_option, strict=True)}}
        for suffix, values in by.items():
            pred = letters[max(range(len(values)), key=values.__getitem__)]
            row[f"pred{suffix}"], row[f"correct{suffix}"] = pred, int(pred == x.answer)
        rows.append(row)
    return rows


def _partial(pred: str | None, gold: str) -> float:
    """Partial credit for multi-answer questions: the share of correct letters chosen, 0 if any chosen
    letter is wrong (choosing everything must not pay)."""
    if not pred or not set(pred) <= set(gold):
        return 0.0
    return len(pred) / len(gold)


def details(task: TaskData, rows: list[dict[str, Any]]) -> dict[str, Any]:
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


def section(summary: dict[str, Any], charts: dict[str, str]) -> list[Block]:
    if not any(task["type"] == "multiple_choice" for task in summary["tasks"].values()):
        return []  # a run without multiple-choice tasks (retrieval only, say) gets no empty section
    b: list[Block] = [("h", 2, "Multiple-choice details"),
                      ("p", "Parse failures: generated answers the strict extractor could not read (B超, CT and "
                            "other letters inside words never count). The letter histograms expose position bias: "
                            "a small model scored on option letters often picks one letter for nearly every "
                            "question; the cloze mode (the question alone, each option's text scored as the "
                            "reply) does not depend on letters.")]
    for name, task in summary["tasks"].items():
        if task["type"] != "multiple_choice":
            continue
        b.append(("h", 3, f"{name}" + (f" ({task['description']})" if task["description"] else "")))
        if task["dropped"]:
            b.append(("p", f"Rows dropped from the data file (see dropped/{name}.jsonl): {task['dropped']}"))
        rows = []
        for mode, block in task["modes"].items():
            for m, d in block["models"].items():
                rows.append([mode, m, pct(d["metrics"]["accuracy"]["value"]),
                             pct(d["parse_fail_rate"]) if "parse_fail_rate" in d else "—",
                             " ".join(f"{k}:{v}" for k, v in d["pred_hist"].items()),
                             " ".join(f"{k}:{v}" for k, v in d["gold_hist"].items()),
                             f"{pct(d['single']['accuracy'])} (n={d['single']['n']})" if "single" in d else "—",
                             (f"{pct(d['multi']['accuracy'])} / {pct(d['multi'].get('partial', 0))} (n={d['multi']['n']})"
                              if "multi" in d else f"skipped {d['skipped_multi']}" if d["skipped_multi"] else "—"),
                             f"{pct(d['consistency'])}" if "consistency" in d else "—"])
        b.append(("table", ["mode", "model", "acc", "parse fail", "predicted letters", "gold letters",
                            "single-answer acc", "multi exact / partial", "all orders right"], rows))
        for mode, block in task["modes"].items():
            cats = sorted({c for d in block["models"].values() for c in d["categories"]})
            if len(cats) > 1:
                b.append(("table", ["category", *[f"{m} ({mode})" for m in block["models"]]],
                          [[c, *[f"{pct(d['categories'][c]['accuracy'])} (n={d['categories'][c]['n']})"
                                 if c in d["categories"] else "—" for d in block["models"].values()]] for c in cats]))
                if f"{name}.{mode}" in charts:
                    b.append(("img", charts[f"{name}.{mode}"], f"{name} {mode} by category"))
    return b
