"""results.json → report.md and report.html (same content), with matplotlib charts.

The report is built once as a list of blocks (`markup.py`: headings, paragraphs, tables, images) and
rendered twice, so the Markdown and the HTML can never disagree. The headline tables, the judge, the
side-by-side answers and the run card are common to every task; each task type adds its own section.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from medtune.data.io import atomic_write_text
from medtune.eval import task_types as types
from medtune.eval.markup import Block, ci, delta, pct, to_html, to_markdown

SECTIONS = (("medical", "Medical knowledge and QA"), ("safety", "Safety"),
            ("general", "General-knowledge retention (forgetting)"))


def metric_name(task: dict[str, Any], key: str) -> str:
    return types.task_type(task["type"]).metric_label(task, key)


def headline_rows(summary: dict[str, Any], group: str) -> list[list[str]]:
    models, ref = summary["models"], summary["reference"]
    rows = []
    for name, task in summary["tasks"].items():
        if task["group"] != group:
            continue
        for mode, block in task["modes"].items():
            for key in types.task_type(task["type"]).headline(mode):
                cells = [name, mode, metric_name(task, key), str(max((b["n"] for b in block["models"].values()),
                                                                      default=0))]
                cells += [ci(block["models"][m]["metrics"][key]) if m in block["models"] else "n/a" for m in models]
                cells += [delta(block["vs_reference"][m][key]) if m in block["vs_reference"] else "n/a"
                          for m in models if m != ref]
                rows.append(cells)
    return rows


def build(summary: dict[str, Any], results: dict[str, Any], charts: dict[str, str]) -> list[Block]:
    models, ref, card = summary["models"], summary["reference"], summary["card"]
    head = ["task", "mode", "metric", "N", *models, *[f"{m} − {ref}" for m in models if m != ref]]
    b: list[Block] = [
        ("h", 1, "medtune evaluation report"),
        ("p", f"Models: {', '.join(models)}; differences are against `{ref}` with 95% paired-bootstrap CIs "
              f"({card['eval']['bootstrap']} resamples, seed {card['eval']['seed']}); ▲/▼ mark CIs that exclude 0. "
              "All numbers in %. Greedy decoding; unparseable answers count as wrong. Numbers from this harness are "
              "comparable between these models, not with published leaderboards (prompts, shots and option counts "
              "differ)."),
    ]
    if "overview" in charts:
        b.append(("img", charts["overview"], "headline metrics"))
    for group, title in SECTIONS:
        rows = headline_rows(summary, group)
        if rows:
            b += [("h", 2, title), ("table", head, rows)]
        if group == "general" and rows:
            b.append(("p", "A ▼ here means general ability was lost in fine-tuning (domain collapse)."))
    for name in types.names():  # each type's own section (multiple-choice details, open-QA details …)
        b += types.task_type(name).report(summary, charts)
    b += _judge(summary)
    b += _samples(summary, results, card["eval"]["samples"], card["eval"]["seed"])
    b += _card(card)
    return b


def _judge(summary: dict[str, Any]) -> list[Block]:
    if "judge" not in summary:
        return []
    j, ref = summary["judge"], summary["reference"]
    card = j["judge"]
    b: list[Block] = [
        ("h", 2, "LLM judge"),
        ("p", f"Judge: `{card['model']}` at {card['base_url']}; prompts "
              + ", ".join(f"`{p}`" for p in card["prompts"].values())
              + f". {card['asked']} verdicts asked, {card['cached']} from the cache; {card['requests']} requests, "
              f"{card['retries']} retries, {card['prompt_tokens']:,} prompt + {card['completion_tokens']:,} completion "
              f"tokens, cost {card['cost']:.4f}. A judge is a model: its verdicts are evidence, not ground truth."),
    ]
    if pw := [[task, f"{m} vs {ref}", str(s["n"]), str(s["scored"]), f"{s['wins']} / {s['ties']} / {s['losses']}",
               ci(s["win_rate"]), pct(s["swap_agreement"]), pct(s["first_position"]), str(s["unparseable"])]
              for task, per in j["pairwise"].items() for m, s in per.items()]:
        b += [("p", "Pairwise: each question judged twice, once with each answer first; the two verdicts are averaged "
                    "from the challenger's side (win 1, tie ½, loss 0), so a judge that always prefers the first "
                    "answer yields ties. Win rate counts ties as half, with a 95% bootstrap CI over questions. "
                    "Self-agreement: the share of questions whose verdict survived the swap; first position: the "
                    "share of verdicts for whichever answer came first (50 = no position bias). A question with an "
                    "unparseable verdict in either order is not scored (replies in judge/)."),
              ("table", ["task", "pair", "N", "scored", "wins / ties / losses", "win rate", "self-agreement",
                         "first position", "unparseable"], pw)]
    if rb := [[task, m, str(s["n"]), str(s["graded"]), str(s["unparseable"])]
              for task, per in j["rubric"].items() for m, s in per.items()]:
        b += [("p", "Rubric grading: an item is scored only when every verdict on it parsed; its score is the points "
                    "of the criteria met over the positive points available (HealthBench), or the mean 1–5 aspect "
                    "rating / 5 (CMB-Clin). The headline shows the mean clipped to [0, 100]."),
              ("table", ["task", "model", "items", "graded", "unparseable verdicts"], rb)]
    return b


def _samples(summary: dict[str, Any], results: dict[str, Any], k: int, seed: int) -> list[Block]:
    b: list[Block] = [("h", 2, "Side-by-side answers (seeded sample)")]
    models = summary["models"]
    for name, task in summary["tasks"].items():
        if "generate" not in task["modes"] or not types.task_type(task["type"]).side_by_side:
            continue
        per_model = {m: {r["id"]: r for r in results[name][m].get("generate", [])} for m in models}
        ids = sorted(set.intersection(*(set(v) for v in per_model.values())) if per_model else set())
        pick = sorted(random.Random(seed).sample(ids, min(k, len(ids))))
        rows = []
        for i in pick:
            first = per_model[models[0]][i]
            rows.append([first.get("question", i), *[per_model[m][i]["output"] + (" 〔refusal〕" if per_model[m][i].get(
                "refused") else "") for m in models], first.get("reference", "")])
        b += [("h", 3, name), ("table", ["question", *models, "reference"], rows)]
    return b if len(b) > 1 else []


def _card(card: dict[str, Any]) -> list[Block]:
    models = [[m["name"], (m["endpoint"] or {}).get("base_url") or m["name_or_path"] or "(config model)",
               ", ".join(m["adapters"]) or "—", m["predictions"] or "—"] for m in card["models"]]
    files = [[name, t["type"], t["group"], str(t["items"]), str(t["shots"]), str(t["dropped"]), t["license"] or "—",
              "<br>".join(f"{f} `{h}`" for f, h in t["files"].items())] for name, t in card["tasks"].items()]
    d = card["decoding"]
    training = [[m, f"{t['eval_loss_before']:.4f}" if "eval_loss_before" in t else "—",
                 f"{t['eval_loss_after']:.4f}" if "eval_loss_after" in t else "—", str(t.get("train_examples", "—")),
                 str(t.get("global_step", "—")),
                 (f"{pct(t['retention']['before'])} → {pct(t['retention']['after'])}" if t.get("retention") else "—")]
                for m, t in card.get("training", {}).items()]
    extra: list[Block] = [("table", ["model", "eval loss before", "eval loss after", "training examples", "steps",
                                     "retention during training"], training)] if training else []
    notes = card.get("model_notes", {})
    if skipped := [[m, ", ".join(n["skipped_modes"]["modes"]), n["skipped_modes"]["why"]]
                   for m, n in notes.items() if "skipped_modes" in n]:
        extra.append(("table", ["model", "modes not scored", "why"], skipped))
    if api := [[m, n["api"]["model"], n["api"]["base_url"], str(n["api"]["requests"]), str(n["api"]["retries"]),
                f"{n['api']['prompt_tokens']:,}", f"{n['api']['completion_tokens']:,}", f"{n['api']['cost']:.4f}"]
               for m, n in notes.items() if "api" in n]:
        extra.append(("table", ["model", "API model", "endpoint", "requests", "retries", "prompt tokens",
                                "completion tokens", "cost"], api))
    return [("h", 2, "Run card"),
            ("p", f"medtune {card['medtune']}, {card['date']}; chat template `{card['template']}`; decoding: greedy, "
                  f"repetition_penalty {d['repetition_penalty']}, max_new_tokens {d['mc_max_new_tokens']} "
                  f"(multiple choice) / {d['max_new_tokens']} (answers); shots {card['eval']['shots']}, option orders "
                  f"{card['eval']['permutations']}, limit {card['eval']['limit']}, seed {card['eval']['seed']}; refusal "
                  f"rules `{card['refusal_rules']['file']}` ({card['refusal_rules']['sha256']})."),
            ("table", ["model", "weights", "adapters", "predictions file"], models),
            ("table", ["task", "type", "group", "items", "shots", "dropped", "licence", "files (sha256/16)"], files),
            *extra]


def write_report(out: Path, summary: dict[str, Any], results: dict[str, Any]) -> None:
    from medtune.eval.charts import draw

    blocks = build(summary, results, draw(out / "charts", summary))
    atomic_write_text(out / "report.md", to_markdown(blocks))
    atomic_write_text(out / "report.html", to_html(blocks))
