"""LLM-as-judge through any OpenAI-compatible endpoint: pairwise preference and rubric grading.

Pairwise: for every generation task, each model is compared with the run's first model (the
reference: usually base) by asking the judge twice, once with each answer first. The two verdicts
are read from the challenger's side (win 1, tie ½, loss 0) and averaged, so a judge that prefers
whichever answer comes first gives ties, not wins: position bias cancels instead of deciding. The
win rate (ties half) gets a bootstrap CI over questions; the report also shows how often the judge
agreed with itself across the swap and how often it picked the first position.

Rubrics (`rubric.py`): one judge request per binary criterion (HealthBench) or one per item for
1–5 aspects against a reference (CMB-Clin); the scores join the per-item results as
`rubric_score`, so they get the same CIs and paired differences as every other metric.

Replies are parsed strictly: exactly one of [[A]] / [[B]] / [[C]] for pairwise, a JSON object
with the asked fields and types for rubrics. Anything else is an unparseable verdict: counted,
written out with the reply, never guessed at. Verdicts are cached by a hash of (endpoint, model,
prompt, max_tokens), so a rerun asks only what changed; requests, tokens and cost are counted.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from medtune.config import EvalConfig, JudgeConfig
from medtune.data.io import atomic_write_text, file_sha256
from medtune.errors import ConfigError
from medtune.eval import metrics
from medtune.eval import task_types as types
from medtune.eval.rubric import aspects_score, criteria_score
from medtune.eval.tasks import PROMPT_DIR, Task, compile_template

_VERDICT = re.compile(r"\[\[([ABC])\]\]")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


class Judge:
    def __init__(self, cfg: JudgeConfig) -> None:
        from medtune.infer.endpoint_engine import EndpointEngine
        from medtune.model.tiny import cache_dir

        assert cfg.endpoint is not None
        self.cfg, self.api = cfg, cfg.endpoint
        self.engine = EndpointEngine(cfg.endpoint, "eval.judge.endpoint")
        self.cache = Path(cfg.cache_dir) if cfg.cache_dir else cache_dir() / "judge"
        self.cached = self.asked = 0
        self.prompts = {k: _prompt_file(getattr(cfg, k)) for k in ("pairwise_prompt", "criterion_prompt",
                                                                    "aspects_prompt")}

    def render(self, which: str, **values: Any) -> str:
        return render(self.prompts[which], **values)

    def ask(self, prompts: list[str]) -> list[str]:
        """The judge's reply to each prompt: from the cache when this endpoint and model answered it before
        (the model id as the server reports it, so a server that now serves another model is asked anew)."""
        model = self.engine.resolve()
        keys = [hashlib.sha256(json.dumps([self.api.base_url, model, p, self.cfg.max_tokens],
                                          ensure_ascii=False).encode()).hexdigest() for p in prompts]
        replies: dict[str, str] = {}
        for k in dict.fromkeys(keys):
            f = self.cache / k[:2] / f"{k}.json"
            if f.is_file():
                replies[k] = json.loads(f.read_text(encoding="utf-8"))["reply"]
        todo = [(k, p) for k, p in dict(zip(keys, prompts, strict=True)).items() if k not in replies]
        self.cached += len(keys) - len(todo)
        self.asked += len(todo)
        if todo:
            answers = self.engine.chat_many([[{"role": "user", "content": p}] for _, p in todo],
                                            max_new_tokens=self.cfg.max_tokens)
            for (k, p), a in zip(todo, answers, strict=True):
                replies[k] = a
                atomic_write_text(self.cache / k[:2] / f"{k}.json", json.dumps(
                    {"model": self.engine.name, "base_url": self.api.base_url, "prompt": p, "reply": a},
                    ensure_ascii=False))
        return [replies[k] for k in keys]

    def card(self) -> dict[str, Any]:
        return {"model": self.engine.name, "base_url": self.api.base_url, "asked": self.asked, "cached": self.cached,
                "prompts": {k: f"{p.name} ({file_sha256(p)[:12]})" for k, p in self.prompts.items()},
                **self.engine.usage.as_dict(self.api)}


def render(prompt: Path, **values: Any) -> str:
    """A judge prompt as sent: the Jinja file rendered with the item's values."""
    return compile_template(prompt.read_text(encoding="utf-8")).render(**values).strip()


def _prompt_file(spec: str) -> Path:
    for p in (PROMPT_DIR / spec, Path(spec)):
        if p.is_file():
            return p
    raise ConfigError(f"eval.judge: prompt {spec!r} is neither a built-in prompt "
                      f"({', '.join(sorted(p.name for p in PROMPT_DIR.glob('judge_*.jinja')))}) nor a file.")


def parse_pairwise(reply: str) -> str | None:
    """A, B or C (tie) when the reply names exactly one verdict; None otherwise."""
    found = set(_VERDICT.findall(reply))
    return found.pop() if len(found) == 1 else None


def parse_json(reply: str) -> dict[str, Any] | None:
    text = reply.strip()
    if m := _FENCE.match(text):
        text = m.group(1)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def parse_criterion(reply: str) -> bool | None:
    value = parse_json(reply)
    met = value.get("criteria_met") if value else None
    return met if isinstance(met, bool) else None


def parse_aspects(reply: str, aspects: list[str]) -> dict[str, int] | None:
    value = parse_json(reply)
    if not value:
        return None
    ratings = {a: value.get(a) for a in aspects}
    ok = all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 5 for v in ratings.values())
    return ratings if ok else None  # type: ignore[return-value]


def check(ev: EvalConfig, tasks: list[Task]) -> None:
    """Before any model is loaded: a rubric task without a judge is a config error, not an empty table."""
    if ev.judge.endpoint is None:
        if rubric := [t.name for t in tasks if types.task_type(t.type).needs_judge]:
            raise ConfigError(f"task {rubric[0]!r} is a rubric task: it is graded by a judge. Set "
                              "eval.judge.endpoint (an OpenAI-compatible server: a hosted model, vLLM, medtune serve).")
        return
    names = {t.name for t in tasks}
    if unknown := [n for n in ev.judge.tasks if n not in names]:
        raise ConfigError(f"eval.judge.tasks: {unknown[0]!r} is not one of this run's tasks ({', '.join(names)}).")


def grade_rubrics(judge: Judge, rows: list[dict[str, Any]], items: dict[str, dict[str, Any]]) -> None:
    """Adds rubric_score (None when a verdict was unparseable) and the judge's grades to each row."""
    prompts = []
    for r in rows:
        item = items[r["id"]]
        if item["aspects"]:
            prompts.append(judge.render("aspects_prompt", conversation=item["question"], answer=r["output"],
                                        reference=item["reference"]))
        for c in item["criteria"]:
            prompts.append(judge.render("criterion_prompt", conversation=item["question"], answer=r["output"],
                                        criterion=c["criterion"], points=c["points"], reference=item["reference"]))
    replies = iter(judge.ask(prompts))
    for r in rows:
        item = items[r["id"]]
        grades = []
        if item["aspects"]:
            reply = next(replies)
            ratings = parse_aspects(reply, item["aspects"])
            grades.append({"aspects": ratings, "reply": reply})
            r["rubric_score"] = aspects_score(ratings) if ratings else None
        if item["criteria"]:
            met = []
            for c in item["criteria"]:
                reply = next(replies)
                met.append(parse_criterion(reply))
                grades.append({**c, "met": met[-1], "reply": reply})
            r["rubric_score"] = None if None in met else criteria_score(item["criteria"], met)  # type: ignore[arg-type]
        r["grades"] = grades
        r["unparseable"] = sum(g.get("met", True) is None or g.get("aspects", True) is None for g in grades)


def pairwise(judge: Judge, ref_rows: list[dict[str, Any]], rows: list[dict[str, Any]],
             ev: EvalConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`rows`' model against the reference's, every question in both orders. Returns the stats and
    one record per question (both prompts' verdicts and replies)."""
    ref = {r["id"]: r for r in ref_rows}
    common = [r for r in rows if r["id"] in ref]
    prompts = []
    for r in common:
        base, q, refer = ref[r["id"]]["output"], r["question"], r.get("reference", "")
        prompts.append(judge.render("pairwise_prompt", question=q, reference=refer, answer_a=base, answer_b=r["output"]))
        prompts.append(judge.render("pairwise_prompt", question=q, reference=refer, answer_a=r["output"], answer_b=base))
    replies = judge.ask(prompts)
    records, scores, agree, first = [], [], 0, []
    for n, r in enumerate(common):
        reply_ab, reply_ba = replies[2 * n], replies[2 * n + 1]
        v_ab, v_ba = parse_pairwise(reply_ab), parse_pairwise(reply_ba)
        rec = {"id": r["id"], "question": r["question"], "reference_output": ref[r["id"]]["output"],
               "output": r["output"], "reference_first": {"verdict": v_ab, "reply": reply_ab},
               "model_first": {"verdict": v_ba, "reply": reply_ba}, "score": None}
        first += [v == "A" for v in (v_ab, v_ba) if v]
        if v_ab and v_ba:
            s_ab = {"A": 0.0, "B": 1.0, "C": 0.5}[v_ab]  # the challenger was B
            s_ba = {"A": 1.0, "B": 0.0, "C": 0.5}[v_ba]  # the challenger was A
            rec["score"] = (s_ab + s_ba) / 2
            scores.append(rec["score"])
            agree += s_ab == s_ba
        records.append(rec)
    low, high = metrics.bootstrap_ci(scores, ev.bootstrap, ev.seed)
    stats = {"n": len(common), "scored": len(scores), "wins": sum(s > 0.5 for s in scores),
             "ties": sum(s == 0.5 for s in scores), "losses": sum(s < 0.5 for s in scores),
             "win_rate": {"value": sum(scores) / len(scores) if scores else float("nan"), "low": low, "high": high},
             "swap_agreement": agree / len(scores) if scores else float("nan"),
             "first_position": sum(first) / len(first) if first else float("nan"),
             "unparseable": len(common) - len(scores)}
    return stats, records


def run(ev: EvalConfig, tasks: list[Task], data: dict[str, Any], results: dict[str, dict[str, Any]],
        models: list[str]) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Grades the rubric rows in place; returns the judge's summary and the pairwise records by file."""
    judge = Judge(ev.judge)
    chosen = [t for t in tasks if types.task_type(t.type).judged and (not ev.judge.tasks or t.name in ev.judge.tasks)]
    out: dict[str, Any] = {"pairwise": {}, "rubric": {}}
    files: dict[str, list[dict[str, Any]]] = {}
    try:
        for t in chosen:
            if types.task_type(t.type).needs_judge:
                items = {x["id"]: x for x in data[t.name].items}
                out["rubric"][t.name] = {}
                for m in models:
                    rows = results[t.name][m].get("generate", [])
                    grade_rubrics(judge, rows, items)
                    out["rubric"][t.name][m] = {"n": len(rows), "graded": sum(r["rubric_score"] is not None
                                                                             for r in rows),
                                                "unparseable": sum(r["unparseable"] for r in rows)}
            if ev.judge.pairwise and len(models) > 1:
                ref_rows = results[t.name][models[0]].get("generate", [])
                out["pairwise"][t.name] = {}
                for m in models[1:]:
                    stats, records = pairwise(judge, ref_rows, results[t.name][m].get("generate", []), ev)
                    out["pairwise"][t.name][m] = stats
                    files[f"{t.name}.{m}_vs_{models[0]}.pairwise.jsonl"] = records
    finally:
        judge.engine.close()
    out["judge"] = judge.card()
    return out, files
