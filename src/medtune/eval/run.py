"""`medtune eval CONFIG`: every task × every model, scored per item, summarised with CIs, reported.

One flow: load the tasks' data once; for each model (loaded once, freed after), run each task and
keep every per-item result; then summarise (`summary.py`: metrics, paired bootstrap against the
first model, breakdowns) and write `results.json`, per-item predictions, dropped rows and the
Markdown/HTML report (`report.py`). Decoding is greedy everywhere, so two runs give the same numbers.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from medtune import __version__
from medtune.config import Config, EvalConfig, EvalModelConfig, to_dict
from medtune.data.io import atomic_write_text, file_sha256, read_json_records, write_jsonl
from medtune.errors import ConfigError
from medtune.eval import judge
from medtune.eval.export import EXPORTS
from medtune.eval.safety import RefusalRules
from medtune.eval.task_types import task_type
from medtune.eval.tasks import Task, TaskData, load_data, load_task
from medtune.model.load import tuned_model

log = logging.getLogger(__name__)
MODES = ("loglik", "cloze", "generate")


def run(cfg: Config) -> Path:
    ev = cfg.eval
    if not ev.tasks:
        raise ConfigError("eval.tasks is empty: list built-in tasks (`medtune ls tasks`) or task YAML files.")
    if bad := [m for m in ev.modes if m not in MODES]:
        raise ConfigError(f"eval.modes: {bad[0]!r} is not one of {', '.join(MODES)}.")
    config_dir = Path(cfg.source).parent if cfg.source else Path(".")
    tasks = [load_task(t, config_dir) for t in ev.tasks]
    if len({t.name for t in tasks}) < len(tasks):
        raise ConfigError("eval.tasks: two tasks share a name; task names key the results.")
    judge.check(ev, tasks)
    if bad := [x for x in ev.export if x not in EXPORTS]:
        raise ConfigError(f"eval.export: {bad[0]!r} is not one of {', '.join(EXPORTS)}.")
    data = {t.name: load_data(t, ev) for t in tasks}
    # Retrieval-only runs score the knowledge base, not a model: none is loaded.
    weightless = not ev.models and not any(task_type(t.type).needs_model for t in tasks)
    models = [EvalModelConfig("kb")] if weightless else eval_models(cfg)
    if ev.export and all(m.predictions or m.endpoint is not None or m.engine != "hf" for m in models):
        raise ConfigError("eval.export lm_eval needs a model with weights here (its chat template and tokenizer "
                          "render the prompts); every eval model is an endpoint, a predictions file or vllm.")
    rules = RefusalRules.load(ev.refusal_rules)
    out = output_dir(cfg)
    results: dict[str, dict[str, Any]] = {t.name: {} for t in tasks}
    notes: dict[str, dict[str, Any]] = {}  # per model: why log-likelihood was skipped, what an API cost
    exports = Path(tempfile.mkdtemp(prefix="medtune-export-")) if ev.export else None
    exported = False
    for m in models:
        subject = Subject(m.name) if weightless else Subject.open(m, cfg)
        if exports and not exported and subject.scorer is not None:  # prompts in the first local model's template
            _export(tasks, data, subject, exports / "lm_eval", out / "lm_eval")
            exported = True
        for t in tasks:
            start = time.perf_counter()
            results[t.name][m.name] = task_type(t.type).run(data[t.name], subject, ev, rules)
            log.info("%s / %s: %.1f s", m.name, t.name, time.perf_counter() - start)
        notes[m.name] = subject.notes(ev)
        subject.close()
    from medtune.eval.report import write_report
    from medtune.eval.summary import summarise
    from medtune.folders import staged

    judged, judge_files = judge.run(ev, tasks, data, results, [m.name for m in models]) if ev.judge.endpoint \
        else (None, {})
    summary = summarise(tasks, data, results, [m.name for m in models], ev)
    if judged:
        summary["judge"] = judged
    summary["card"] = run_card(cfg, models, data, rules)
    summary["card"]["model_notes"] = {k: v for k, v in notes.items() if v}
    with staged(out) as tmp:  # swapped in whole: never new predictions beside an old results.json
        for t in tasks:
            for m in models:
                for mode, rows in results[t.name][m.name].items():
                    write_jsonl(tmp / "predictions" / m.name / f"{t.name}.{mode}.jsonl", rows)
            if data[t.name].dropped:
                write_jsonl(tmp / "dropped" / f"{t.name}.jsonl",
                            [{"where": d.where, "reason": d.reason, "row": d.raw} for d in data[t.name].dropped])
        if exports:
            shutil.copytree(exports, tmp, dirs_exist_ok=True)
            shutil.rmtree(exports, ignore_errors=True)
        for name, rows in judge_files.items():
            write_jsonl(tmp / "judge" / name, rows)
        atomic_write_text(tmp / "results.json", json.dumps(summary, ensure_ascii=False, indent=2))
        write_report(tmp, summary, results)
    return out


def _export(tasks: list[Task], data: dict[str, TaskData], subject: Subject, work: Path, final: Path) -> None:
    from medtune.eval.export import lm_eval

    for t in tasks:
        if "lm_eval" in task_type(t.type).exports:
            files = lm_eval(data[t.name], subject.scorer.prompt_text, work, final)
            log.info("lm-eval task for %s: %s", t.name, ", ".join(f.name for f in files))


def output_dir(cfg: Config) -> Path:
    if cfg.eval.output_dir:
        return Path(cfg.eval.output_dir)
    return cfg.output_dir / "eval" if cfg.train.get("output_dir") else Path("outputs/eval")


def eval_models(cfg: Config) -> list[EvalModelConfig]:
    """eval.models, or base (+ tuned, when the run's output dir holds a trained model)."""
    models = list(cfg.eval.models)
    if not models:
        models = [EvalModelConfig("base", cfg.model.name_or_path, list(cfg.model.adapters))]
        if cfg.train.get("output_dir") and (cfg.output_dir / "adapter_config.json").exists():
            # The chain resolved once: a continue-finetuned run already contains the adapter it continued.
            models.append(EvalModelConfig("tuned", cfg.model.name_or_path, tuned_model(cfg).adapters))
        elif cfg.train.get("output_dir") and (cfg.output_dir / "config.json").exists():
            models.append(EvalModelConfig("tuned", str(cfg.output_dir)))
    names = [m.name for m in models]
    if len(set(names)) < len(names) or any(not n.replace("-", "").replace("_", "").isalnum() for n in names):
        raise ConfigError(f"eval.models: names must be unique and made of letters, digits, - and _; got {names}.")
    return models


class Subject:
    """A model under test, whatever answers: a local engine (hf: generation batched through the
    ChatEngine, log-likelihood through its weights; vllm: generation), an OpenAI-compatible endpoint
    (generation through its API), or a predictions file (scored on generations). `no_loglik` says
    why the log-likelihood modes cannot score it, when they cannot."""

    def __init__(self, name: str, engine: Any = None, replay: dict[tuple[str, str], str] | None = None,
                 scorer: Any = None, no_loglik: str | None = None) -> None:
        self.name, self.engine, self.replay, self.scorer, self.no_loglik = name, engine, replay, scorer, no_loglik
        self.cache: dict[tuple[str, int], str] = {}
        self.grounder: Any = None  # eval.models[].kb: generation prompts grounded in that knowledge base
        self.contexts: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (task, id) → the passages it was given

    @classmethod
    def open(cls, m: EvalModelConfig, cfg: Config) -> Subject:
        subject = cls._open(m, cfg)
        if m.kb:
            from medtune.kb.ground import Grounder

            subject.grounder = Grounder(cfg.kb, m.kb)
        return subject

    @classmethod
    def _open(cls, m: EvalModelConfig, cfg: Config) -> Subject:
        if m.predictions:
            return cls(m.name, replay=_replay(Path(m.predictions)), no_loglik="a predictions file has no weights")
        if m.endpoint is not None:
            from medtune.infer.endpoint_engine import NO_LOGLIK, EndpointEngine

            log.info("eval model %s: endpoint %s", m.name, m.endpoint.base_url)
            return cls(m.name, EndpointEngine(m.endpoint, f"eval.models[{m.name}].endpoint"), no_loglik=NO_LOGLIK)
        model_cfg = dataclasses.replace(cfg.model, name_or_path=m.name_or_path or cfg.model.name_or_path,
                                        adapters=list(m.adapters), template=m.template or cfg.model.template)
        ev = cfg.eval
        gen = dataclasses.replace(cfg.generation, do_sample=False, num_beams=1, min_new_tokens=0,
                                  repetition_penalty=ev.repetition_penalty)
        log.info("eval model %s: %s %s (%s)", m.name, model_cfg.name_or_path, model_cfg.adapters or "", m.engine)
        if m.engine == "vllm":
            from medtune.infer.vllm_engine import VllmEngine

            return cls(m.name, VllmEngine(model_cfg, gen), no_loglik="the vllm engine scores generations only here")
        if m.engine != "hf":
            raise ConfigError(f"eval.models[{m.name}].engine {m.engine!r}: use hf or vllm (or `endpoint:` for a "
                              "model behind an API).")
        from medtune.eval.scoring import LoglikScorer
        from medtune.infer.engine import ChatEngine

        # A long batching window: each chunk below is submitted at once, so batches (and greedy outputs) repeat.
        engine = ChatEngine(model_cfg, gen, ev.batch_size, max_wait_ms=200.0)
        return cls(m.name, engine, scorer=LoglikScorer(engine.model, engine.tokenizer, engine.template, ev.batch_size))

    def generate(self, task: str, ids: list[str], conversations: list[list[dict[str, str]]],
                 max_new_tokens: int, batch_size: int) -> list[str]:
        if self.replay is not None:
            missing = [i for i in ids if (task, i) not in self.replay]
            if missing:
                raise ConfigError(f"model {self.name!r}: the predictions file has no output for task {task!r}, "
                                  f"id {missing[0]!r} ({len(missing)} missing). Every scored item needs one.")
            return [self.replay[(task, i)] for i in ids]
        if self.grounder is not None:
            grounded = [self.grounder.ground(c) for c in conversations]
            self.contexts.update({(task, i): g.citations for i, g in zip(ids, grounded, strict=True)})
            conversations = [g.messages for g in grounded]
        # Greedy decoding is deterministic: a prompt asked twice (the same questions in an open-QA and an
        # over-refusal task) is generated once.
        keys = [(json.dumps(c, ensure_ascii=False), max_new_tokens) for c in conversations]
        todo = [k for k in dict.fromkeys(keys) if k not in self.cache]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start: start + batch_size]
            answers = self.engine.chat_many([json.loads(k[0]) for k in chunk], max_new_tokens=max_new_tokens)
            self.cache.update(zip(chunk, answers, strict=True))
        return [self.cache[k] for k in keys]

    def notes(self, ev: EvalConfig) -> dict[str, Any]:
        """For the run card: the modes this model could not be scored in and why; an API's usage and cost."""
        out: dict[str, Any] = {}
        skipped = [mode for mode in ev.modes if mode in ("loglik", "cloze")]
        if self.no_loglik and skipped:
            out["skipped_modes"] = {"modes": skipped, "why": self.no_loglik}
        if (usage := getattr(self.engine, "usage", None)) is not None:
            out["api"] = {"model": self.engine.name, "base_url": self.engine.api.base_url,
                          **usage.as_dict(self.engine.api)}
        return out

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine = self.scorer = None
        gc.collect()


def _replay(path: Path) -> dict[tuple[str, str], str]:
    out = {}
    for line, row in read_json_records(path):
        if not {"task", "id", "output"} <= set(row):
            raise ConfigError(f"{path}:{line}: a predictions row needs task, id and output fields.")
        out[(row["task"], str(row["id"]))] = str(row["output"])
    return out


def run_card(cfg: Config, models: list[EvalModelConfig], data: dict[str, TaskData], rules: RefusalRules) -> dict:
    """What a reader needs to reproduce or distrust the numbers: models, data hashes, settings."""
    tasks: dict[str, Any] = {}
    for name, td in data.items():
        t: Task = td.task
        tasks[name] = {"type": t.type, "group": t.group, "format": t.format, "license": t.license,
                       "source": t.source, "description": t.description, "items": len(td.items),
                       "shots": len(td.shots), "dropped": len(td.dropped),
                       "files": {str(f): file_sha256(f)[:16] for f in td.files}}
    training = {}
    for m in models:  # a tuned model's own training numbers (eval loss before/after), when its run wrote them
        metrics_file = Path(m.adapters[-1] if m.adapters else m.name_or_path or "") / "metrics.json"
        if metrics_file.is_file():
            run_metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
            training[m.name] = {k: v for k, v in run_metrics.items() if k in (
                "eval_loss_before", "eval_loss_after", "train_examples", "eval_examples", "global_step", "retention")}
    return {"medtune": __version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "models": [dataclasses.asdict(m) for m in models], "training": training,
            "template": cfg.model.template, "eval": to_dict(cfg)["eval"],
            "decoding": {"do_sample": False, "num_beams": 1, "repetition_penalty": cfg.eval.repetition_penalty,
                         "mc_max_new_tokens": cfg.eval.mc_max_new_tokens, "max_new_tokens": cfg.eval.max_new_tokens},
            "refusal_rules": {"file": rules.source, "sha256": file_sha256(rules.source)[:16]}, "tasks": tasks}
