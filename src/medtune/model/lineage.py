"""Which adapters a model's weights already contain: the one place that decides the adapter chain.

Continue-finetuning (`model.adapters=[run1]`, output `run2`) keeps training run1's LoRA, so run2's
weights *are* run1 plus more: applying `[run1, run2]` would add run1's update twice. Stacking
(`finetune.new_adapter=true`) trains a fresh adapter on top of run1 merged, so run2 needs run1
applied first. A full/freeze run merged every earlier adapter into its weights. Every run writes
`lineage.json` into its output folder (and export into the exported one) recording:

    requires   adapters that must be applied before this one, in order (stacking)
    absorbs    adapters whose update is already inside this folder's weights (continued / merged)
    datasets   every dataset (with licence) that shaped these weights, earlier runs included
    arch       the base architecture (model_type, sizes), to refuse an adapter on another base

`resolve_chain(base, adapters)` turns what a user lists into the adapters to apply, each update
exactly once: naming only the last run of a chain is enough, and naming a run and the one that
continued it is harmless. Export, eval, compare, chat, serve, webui and stacking all go through it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medtune.errors import ConfigError

LINEAGE = "lineage.json"
ARCH_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")


def norm(path: str | Path) -> str:
    """One spelling per folder, so `outputs/a`, `./outputs/a/` and its absolute path compare equal."""
    return str(Path(path).expanduser().resolve())


def read(folder: str | Path) -> dict[str, Any]:
    """The lineage of a run, export or checkpoint folder ({} for folders medtune did not write)."""
    d = Path(folder)
    for f in (d / LINEAGE, d.parent / LINEAGE):  # checkpoint-N inherits its run's lineage
        if f.is_file():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ConfigError(f"{f}: unreadable lineage record ({e}). Delete it only if you know which "
                                  "adapters this folder's weights contain.") from None
            return data if isinstance(data, dict) else {}
    return {}


def resolve_chain(base: str, adapters: list[str]) -> list[str]:
    """The adapters to apply onto `base`, in order, with every update exactly once.

    Each listed adapter brings the adapters it requires (stacking), and drops any adapter its own
    weights absorb (continue-finetuning); adapters absorbed by the base folder (a full run or an
    export that merged them) are skipped.
    """
    absorbed = set(read(base).get("absorbs", [])) if _is_folder(base) else set()
    chain: list[str] = []
    for adapter in adapters:
        for item in [*read(adapter).get("requires", []), norm(adapter)]:
            if item in absorbed or item in chain:
                continue
            inside = set(read(item).get("absorbs", []))
            chain = [c for c in chain if c not in inside]
            chain.append(item)
            absorbed |= inside - {item}
    return chain


def for_run(base: str, chain: list[str], continued: str | None, out: Path, kind: str, stage: str, method: str,
            template: str, arch: dict[str, Any], datasets: list[dict[str, Any]]) -> dict[str, Any]:
    """The lineage record of a training run writing `out`.

    `chain` is what was applied before training (merged, then `continued` kept training if set);
    `kind` is "adapter" (LoRA family, prefix/ptuning) or "full" (weights written whole).
    """
    base = norm(base) if _is_folder(base) else base
    merged = [c for c in chain if c != continued]
    parents = [*merged, *([continued] if continued else [])]
    if _is_folder(base):
        parents.append(norm(base))
    if kind == "full":  # every earlier update (and whatever the base folder absorbed) is in the weights now
        requires = []
        absorbs = [*chain, *(a for c in chain for a in read(c).get("absorbs", []))]
        absorbs += read(base).get("absorbs", []) if _is_folder(base) else []
    else:
        requires = merged
        absorbs = [continued, *read(continued).get("absorbs", [])] if continued else []
    earlier = [d for p in parents for d in read(p).get("datasets", [])]
    own = [{**d, "run": norm(out)} for d in datasets]
    return {"base": base, "arch": arch, "kind": kind, "stage": stage, "method": method, "template": template,
            "requires": requires, "absorbs": sorted(set(absorbs)), "datasets": _unique([*earlier, *own])}


def for_export(base: str, chain: list[str], out: Path, template: str, arch: dict[str, Any]) -> dict[str, Any]:
    """An exported folder: full weights that absorb the whole chain (and what the base absorbed)."""
    record = for_run(base, chain, None, out, "full", "export", "merge", template, arch, datasets=[])
    return {**record, "exported_to": norm(out)}


def write(folder: Path, record: dict[str, Any]) -> None:
    from medtune.data.io import atomic_write_text

    atomic_write_text(folder / LINEAGE, json.dumps(record, ensure_ascii=False, indent=2))


def arch_of(model_config: Any) -> dict[str, Any]:
    """The shape facts an adapter depends on (text config for multimodal models such as Gemma-3)."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    return {k: getattr(text, k, None) for k in ARCH_KEYS}


def check_arch(adapter: str, model_config: Any) -> None:
    """Refuse an adapter trained on a different architecture before peft loads it (or, worse, loads it)."""
    trained = read(adapter).get("arch") or {}
    have = arch_of(model_config)
    diff = {k: (trained[k], have[k]) for k in ARCH_KEYS if trained.get(k) is not None and trained[k] != have[k]}
    if diff:
        what = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in diff.items())
        raise ConfigError(f"Adapter {adapter!r} was trained on {read(adapter).get('base')!r} ({what} in this "
                          "model). Set model.name_or_path to the base it was trained on.")


def _is_folder(path: str) -> bool:
    return bool(path) and ":" not in path.split("/")[0] and Path(path).is_dir()


def _unique(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for d in items:
        key = (d.get("run"), d.get("name"))
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out
