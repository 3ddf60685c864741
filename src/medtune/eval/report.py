"""results.json → report.md and report.html (same content), with matplotlib charts.

The report is built once as a list of blocks (headings, paragraphs, tables, images) and rendered
twice, so the Markdown and the HTML can never disagree.
"""

from __future__ import annotations

import html
import random
from pathlib import Path
from typing import Any

from medtune.data.io import atomic_write_text
from medtune.eval.summary import metric_keys

Block = tuple[Any, ...]
SECTIONS = (("medical", "Medical knowledge and QA"), ("safety", "Safety"),
            ("general", "General-knowledge retention (forgetting)"))
LABELS = {"accuracy": "accuracy", "rouge_l": "ROUGE-L", "bleu1": "BLEU-1", "bleu4": "BLEU-4", "ap": "MAP",
          "p_at_1": "P@1", "refused": "refusal rate", "accuracy_norm_char": "acc_norm (per char)",
          "accuracy_norm_token": "acc_norm (per token)", "rubric_score": "rubric score (judge; clipped mean)"}


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def ci(m: dict[str, float]) -> str:
    return f"{pct(m['value'])} [{pct(m['low'])}, {pct(m['high'])}]"


def delta(d: dict[str, float]) -> str:
    mark = " ▲" if d["low"] > 0 else " ▼" if d["high"] < 0 else ""
    return f"{100 * d['diff']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]{mark}"


def metric_name(task: dict[str, Any], key: str) -> str:
    if key == "refused":
        return "over-refusal rate" if task["type"] == "open_qa" or task.get("expect") == "answer" else "refusal rate"
    return LABELS.get(key, key)


def headline_rows(summary: dict[str, Any], group: str) -> list[list[str]]:
    models, ref = summary["models"], summary["reference"]
    rows = []
    for name, task in summary["tasks"].items():
        if task["group"] != group:
            continue
        for mode, block in task["modes"].items():
            for key in _keys(task, mode):
                cells = [name, mode, metric_name(task, key), str(max((b["n"] for b in block["models"].values()),
                                                                      default=0))]
                cells += [ci(block["models"][m]["metrics"][key]) if m in block["models"] else "n/a" for m in models]
                cells += [delta(block["vs_reference"][m][key]) if m in block["vs_reference"] else "n/a"
                          for m in models if m != ref]
                rows.append(cells)
    return rows


def _keys(task: dict[str, Any], mode: str) -> list[str]:
    # BLEU-1 lives in the open-QA details table; the headline keeps the rest.
    return [k for k in metric_keys(task["type"], mode) if k != "bleu1"]


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
    b += _mc_details(summary, charts)
    b += _qa_details(summary)
    b += _judge(summary)
    b += _samples(summary, results, card["eval"]["samples"], card["eval"]["seed"])
    b += _card(card)
    return b


def _mc_details(summary: dict[str, Any], charts: dict[str, str]) -> list[Block]:
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


def _qa_details(summary: dict[str, Any]) -> list[Block]:
    rows = []
    for name, task in summary["tasks"].items():
        if task["type"] == "open_qa":
            for m, d in task["modes"]["generate"]["models"].items():
                rows.append([name, m, *[pct(d["metrics"][k]["value"]) for k in ("bleu1", "bleu4", "rouge_l")],
                             pct(d["distinct1"]), pct(d["distinct2"]), f"{d['length_ratio']:.2f}",
                             f"{d['mean_chars']:.0f}"])
    if not rows:
        return []
    return [("h", 2, "Open QA (character level)"),
            ("p", "BLEU/ROUGE reward copying the reference's style and length: read them as a regression signal "
                  "between these models, not as answer quality."),
            ("table", ["task", "model", "BLEU-1", "BLEU-4", "ROUGE-L", "Distinct-1", "Distinct-2", "length ratio",
                       "mean chars"], rows)]


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
        if "generate" not in task["modes"] or task["type"] == "multiple_choice":
            continue
        per_model = {m: {r["id"]: r for r in results[name][m].get("generate", [])} for m in models}
        ids = sorted(set.intersection(*(set(v) for v in per_model.values())) if per_model else set())
        pick = sorted(random.Random(seed).sample(ids, min(k, len(ids))))
        rows = []
        for i in pick:
            first = per_model[models[0]][i]
            rows.append([first["question"], *[per_model[m][i]["output"] + (" 〔refusal〕" if per_model[m][i]["refused"]
                                                                            else "") for m in models],
                         first.get("reference", "")])
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


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for kind, *rest in blocks:
        if kind == "h":
            out.append("#" * rest[0] + " " + rest[1])
        elif kind == "p":
            out.append(rest[0])
        elif kind == "img":
            out.append(f"![{rest[1]}]({rest[0]})")
        else:
            head, rows = rest
            cell = lambda x: str(x).replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or " "  # noqa: E731
            out += ["| " + " | ".join(map(cell, head)) + " |", "|" + "---|" * len(head)]
            out += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
        out.append("")
    return "\n".join(out)


def to_html(blocks: list[Block]) -> str:
    body = []
    for kind, *rest in blocks:
        if kind == "h":
            body.append(f"<h{rest[0]}>{html.escape(rest[1])}</h{rest[0]}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(rest[0])}</p>")
        elif kind == "img":
            body.append(f'<img src="{html.escape(rest[0])}" alt="{html.escape(rest[1])}">')
        else:
            head, rows = rest
            cell = lambda x: html.escape(str(x)).replace("&lt;br&gt;", "<br>").replace("\n", "<br>")  # noqa: E731
            body.append("<table><tr>" + "".join(f"<th>{cell(h)}</th>" for h in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
                        + "</table>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}table{border-collapse:"
             "collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:14px}"
             "th{background:#f3f3f3}img{max-width:100%}")
    return (f'<!doctype html><html lang="zh"><head><meta charset="utf-8"><title>medtune evaluation report</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(out: Path, summary: dict[str, Any], results: dict[str, Any]) -> None:
    from medtune.eval.charts import draw

    blocks = build(summary, results, draw(out / "charts", summary))
    atomic_write_text(out / "report.md", to_markdown(blocks))
    atomic_write_text(out / "report.html", to_html(blocks))
