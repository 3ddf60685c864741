"""`medtune merge CONFIG`: merge LoRA adapters with each other and toward the base, sweep how far, keep the
best by a stated rule, export it as an ordinary folder.

Domain tuning erodes general ability; scaling the tuned update back toward the base (WiSE-FT-style
interpolation), or trimming it (TIES, DARE), often keeps most of the gain for less of the loss. The
merging itself is peft's (`add_weighted_adapter`: linear, cat, ties, dare_linear, dare_ties and their
_svd variants); medtune adds the sweep, the evaluation and the rule:

    1. each `merge.sweep` scale s: the adapters combined with weights s·w_i → candidates/scale-s/
       (an adapter folder with its lineage: eval, chat and export read it like any run)
    2. `medtune eval` on `merge.tasks` for the base and every candidate (one report, paired CIs)
    3. the rule: the best `merge.medical` headline among candidates whose `merge.retention` headline
       is at least the base's minus `merge.max_drop`; none qualifying, the best retention
    4. the chosen candidate exported to <output_dir>/merged (medtune export), sweep.json beside it
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from medtune.config import Config, EvalModelConfig, dump_config
from medtune.errors import ConfigError
from medtune.folders import staged

log = logging.getLogger(__name__)
METHODS = ("linear", "cat", "ties", "dare_linear", "dare_ties", "ties_svd", "dare_linear_svd", "dare_ties_svd",
           "magnitude_prune", "magnitude_prune_svd")


def run(cfg: Config) -> Path:
    m = cfg.merge
    adapters = m.adapters or ([str(cfg.output_dir)] if cfg.train.get("output_dir") else [])
    _check(cfg, adapters)
    out = Path(m.output_dir)
    candidates = _candidates(cfg, adapters, out / "candidates")
    evaluated = _evaluate(cfg, candidates, out / "eval")
    chosen = choose(evaluated, m.medical, m.retention, m.max_drop)
    exported = _export(cfg, chosen["adapter"], out / "merged") if chosen["adapter"] else None
    sweep = {"method": m.method, "adapters": adapters, "weights": m.weights, "density": m.density,
             "rule": f"best {m.medical} among candidates with {m.retention} >= base - {m.max_drop}; else best "
                     f"{m.retention}", "candidates": evaluated, "chosen": chosen["name"], "why": chosen["why"],
             "exported": str(exported) if exported else "nothing: the base itself is best (serve it as it is)",
             "report": str(out / "eval" / "report.md")}
    (out / "sweep.json").write_text(json.dumps(sweep, ensure_ascii=False, indent=2), encoding="utf-8")
    log.info("merge: chose %s (%s); exported to %s", chosen["name"], chosen["why"], exported)
    return out


def _check(cfg: Config, adapters: list[str]) -> None:
    from medtune.model.lineage import read

    m = cfg.merge
    if m.method not in METHODS:
        raise ConfigError(f"merge.method {m.method!r} is not one of {', '.join(METHODS)}.")
    if not adapters:
        raise ConfigError("merge.adapters is empty: list the LoRA adapters to merge (or set train.output_dir).")
    if m.weights and len(m.weights) != len(adapters):
        raise ConfigError(f"merge.weights has {len(m.weights)} values for {len(adapters)} adapter(s).")
    if not m.sweep or any(not 0 <= s <= 2 for s in m.sweep):
        raise ConfigError("merge.sweep lists the scales toward the base to try, each in [0, 2] (0 = base, 1 = as trained).")
    if m.method not in ("linear", "cat") and not 0 < (m.density or 0) <= 1:
        raise ConfigError(f"merge.density (the share of each update kept) must be in (0, 1] for {m.method}.")
    if not m.tasks or m.medical not in m.tasks or m.retention not in m.tasks:
        raise ConfigError("merge.tasks must list the tasks scored, including merge.medical and merge.retention.")
    for a in adapters:
        if not (Path(a) / "adapter_config.json").is_file():
            raise ConfigError(f"merge.adapters: {a!r} is not a LoRA adapter folder (no adapter_config.json); full "
                              "fine-tunes are merged with export.")
        if read(a).get("requires"):
            raise ConfigError(f"merge.adapters: {a!r} was stacked on other adapters; merge adapters trained on the base.")


def _candidates(cfg: Config, adapters: list[str], folder: Path) -> list[dict[str, Any]]:
    """One adapter folder per sweep scale, written by peft's add_weighted_adapter."""
    from peft import PeftModel

    from medtune.model import lineage
    from medtune.model.load import check_adapter, load_model

    m = cfg.merge
    base, tokenizer, _ = load_model(dataclasses.replace(cfg.model, adapters=[]))
    names = [f"a{i}" for i in range(len(adapters))]
    for a in adapters:
        check_adapter(a, cfg.model.template, base)
    model = PeftModel.from_pretrained(base, adapters[0], adapter_name=names[0])
    for name, a in zip(names[1:], adapters[1:], strict=True):
        model.load_adapter(a, adapter_name=name)
    weights = m.weights or [1.0] * len(adapters)
    datasets = [d for a in adapters for d in lineage.read(a).get("datasets", [])]
    out = []
    for scale in m.sweep:
        name, key = f"scale-{scale:g}", f"scale_{scale:g}".replace(".", "_")  # torch module names have no "."
        kwargs = {} if m.method in ("linear", "cat") else {"density": m.density}
        model.add_weighted_adapter(names, [w * scale for w in weights], adapter_name=key,
                                   combination_type=m.method, **kwargs)
        with staged(folder / name) as tmp:
            model.save_pretrained(str(tmp), selected_adapters=[key])
            saved = tmp / key  # peft writes a non-default adapter into a subfolder of its name
            for f in saved.iterdir():
                f.rename(tmp / f.name)
            saved.rmdir()
            record = lineage.for_run(cfg.model.name_or_path, [], None, tmp, "adapter", "merge", m.method,
                                     cfg.model.template, lineage.arch_of(base.config), datasets=[])
            lineage.write(tmp, {**record, "datasets": datasets, "merged": {"adapters": adapters, "weights": weights,
                                                                          "scale": scale, "method": m.method}})
            dump_config(cfg, tmp)
        model.delete_adapter(key)
        out.append({"name": key, "scale": scale, "adapter": str(folder / name)})
    del model, base
    return out


def _evaluate(cfg: Config, candidates: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    from medtune.eval.run import run as evaluate

    m = cfg.merge
    models = [EvalModelConfig("base"), *(EvalModelConfig(c["name"], adapters=[c["adapter"]]) for c in candidates)]
    ev = dataclasses.replace(cfg.eval, models=models, tasks=list(m.tasks), output_dir=str(folder),
                             limit=m.limit if m.limit is not None else cfg.eval.limit)
    results = json.loads((evaluate(dataclasses.replace(cfg, eval=ev)) / "results.json").read_text(encoding="utf-8"))
    rows = [{"name": "base", "scale": 0.0, "adapter": None}, *candidates]
    for r in rows:
        r["scores"] = {t: headline(results, t, r["name"]) for t in m.tasks}
    return rows


def headline(results: dict[str, Any], task: str, model: str) -> float:
    """A task's headline value for a model: its first mode's first metric (what the report leads with)."""
    t = results["tasks"][task]
    mode = next(iter(t["modes"].values()))
    return float(next(iter(mode["models"][model]["metrics"].values()))["value"])


def choose(rows: list[dict[str, Any]], medical: str, retention: str, max_drop: float) -> dict[str, Any]:
    base = next(r for r in rows if r["name"] == "base")
    floor = base["scores"][retention] - max_drop
    ok = [r for r in rows if r["scores"][retention] >= floor]
    if ok:
        best = max(ok, key=lambda r: (r["scores"][medical], r["scores"][retention]))
        return {**best, "why": f"best {medical} ({best['scores'][medical]:.4f}) with {retention} "
                                f"{best['scores'][retention]:.4f} >= {floor:.4f}"}
    best = max(rows, key=lambda r: r["scores"][retention])
    return {**best, "why": f"no candidate keeps {retention} >= {floor:.4f}: the best {retention}"}


def _export(cfg: Config, adapter: str, out: Path) -> Path:
    from medtune.export import run as export

    return export(dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, output_dir=str(out),
                                                                       adapters=[adapter])))
