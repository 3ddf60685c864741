"""`medtune prepare`: a config's datasets → cleaned JSONL, `report.json`, `dropped/`, and a dataset card.

One streaming pass per dataset, in config order: convert → cleaning steps (`data.steps`) →
deduplication (`data.dedup`, across datasets) → decontamination (`data.decontaminate`) → write.
Nothing is lost silently: every row not kept is counted by reason in `report.json` and written with
its file:line to `dropped/<reason>.jsonl` (a duplicate also names the row it duplicates); rows a step
changed are counted by reason too, and redacted rows are listed in `changed/redacted.jsonl` by pointer
only, never with the PII. For each dataset, rows read = kept + dropped + not sampled.
Examples that carry an official split (cMedQA2) go to one file per split, `<dataset>.<split>.jsonl`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from medtune.config import Config, dump_config
from medtune.data import io
from medtune.data.answers import AnswerGroups
from medtune.data.card import licence_check, write_card
from medtune.data.datasets import DatasetSpec, resolve
from medtune.data.dedup import Decontaminator, Deduper, GroupSplitter, key_text
from medtune.data.formats import FORMATS
from medtune.data.steps import build, texts
from medtune.errors import ConfigError, DataError
from medtune.folders import check_room, staged

log = logging.getLogger(__name__)


def prepare(cfg: Config) -> dict[str, Any]:
    """Convert and clean every dataset in `cfg.data.datasets`; return the report (also report.json)."""
    d = cfg.data
    out = prepared_dir(cfg)
    if d.on_error not in ("stop", "skip"):
        raise ConfigError(f"data.on_error must be stop or skip; got {d.on_error!r}.")
    specs = [dataclasses.replace(s, on_error=d.on_error) for s in resolve(d.datasets, d.registries)]
    licence_check(specs, d.intended_use)
    steps = build(d.steps)
    passes = _Passes(steps=steps, dedup=Deduper(**d.dedup) if d.dedup else None,
                     decontam=Decontaminator(**d.decontaminate) if d.decontaminate else None,
                     splitter=GroupSplitter(d.split) if d.split else None)
    report: dict[str, Any] = {"output_dir": str(out), "fingerprint": fingerprint(cfg), "datasets": {}, "files": {}}
    # Written into a hidden sibling and swapped in on success: a failed or killed rerun leaves the
    # previous complete folder, never a new half-written JSONL beside the old report.json.
    check_room(out, 0)  # writable before any row is read
    with staged(out) as tmp:
        sinks = _Sinks(tmp, out)
        try:
            for spec, rows in _engine(cfg, specs, passes, tmp):
                report["datasets"][spec.name] = _one(spec, cfg, rows, passes, sinks, report["files"])
        finally:
            sinks.close()
        if d.mix:
            report["mixture"] = write_mixture(cfg, report, tmp, sinks)
        report["kept"] = sum(x["kept"] for x in report["datasets"].values())
        report["dropped"] = dict(sum((Counter(x["dropped"]) for x in report["datasets"].values()), Counter()))
        report["changed"] = dict(sum((Counter(x["changed"]) for x in report["datasets"].values()), Counter()))
        report["pii_replaced"] = dict(sum((Counter(x["pii_replaced"]) for x in report["datasets"].values()), Counter()))
        io.atomic_write_text(tmp / "report.json", json.dumps(report, ensure_ascii=False, indent=2))
        write_card(cfg, specs, report, tmp)
        dump_config(cfg, tmp)
    return report


def _engine(cfg: Config, specs: list[DatasetSpec], passes: _Passes, build: Path) -> Iterator[tuple[DatasetSpec, Iterator[Cleaned]]]:
    """(dataset, its cleaned rows in input order), from this process (`data.engine: local`) or from
    datatrove's executors (`datatrove`: many processes or nodes, dedup bands on disk; see data/scale.py)."""
    if cfg.data.engine == "local":
        return ((spec, _cleaned(spec, cfg, passes)) for spec in specs)
    if cfg.data.engine != "datatrove":
        raise ConfigError(f"data.engine must be local or datatrove; got {cfg.data.engine!r}.")
    from medtune.data.scale import scaled

    return scaled(cfg, specs, passes, build / ".work")


def fingerprint(cfg: Config) -> str:
    """What the prepared folder depends on: the data config, the registry entries, medtune's version and
    rule files, and every input shard's path, size and modification time (not its content: hashing GBs
    of input would cost what reusing saves)."""
    import hashlib

    from medtune import __version__
    from medtune.config import to_dict

    # How the data is prepared (engine, workers) does not change it.
    data = {k: v for k, v in to_dict(cfg)["data"].items()
            if k not in ("num_workers", "output_dir", "tokenize", "engine", "datatrove")}
    here = Path(__file__).parent
    rules = {f: io.file_sha256(here / f) for f in ("pii_rules.yaml", "quality_rules.yaml")}  # the steps' data
    h = hashlib.sha256(json.dumps({"data": data, "version": __version__, "rules": rules}, sort_keys=True,
                                  default=str).encode())
    for spec in resolve(cfg.data.datasets, cfg.data.registries):
        # The registry entry as resolved: a changed column mapping, format option or encoding is a change.
        h.update(json.dumps(dataclasses.asdict(spec), sort_keys=True, default=str).encode())
        for shard in io.shards(spec.path) if "://" not in spec.path else []:
            st = shard.stat()
            h.update(f"{shard}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def up_to_date(cfg: Config) -> dict[str, Any] | None:
    """The report of a complete prepared folder built from exactly this config and these inputs, else None:
    `train` reuses it (a 26M-row corpus is prepared once, e.g. by `medtune prepare` before a cluster job)."""
    from medtune.folders import MARKER

    out = prepared_dir(cfg)
    try:
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (out / MARKER).exists() or report.get("fingerprint") != fingerprint(cfg):
        return None
    return report


def prepared_dir(cfg: Config) -> Path:
    return Path(cfg.data.output_dir) if cfg.data.output_dir else cfg.output_dir / "data"


@dataclass
class _Passes:
    """The run-wide passes, shared by all datasets of one prepare (dedup and splits span datasets)."""

    steps: list
    dedup: Deduper | None
    decontam: Decontaminator | None
    splitter: GroupSplitter | None


@dataclass
class _Tally:
    """Counts of one dataset's pass."""

    read: int = 0
    dropped: Counter = field(default_factory=Counter)
    changed: Counter = field(default_factory=Counter)
    stats: Counter = field(default_factory=Counter)
    contaminated: Counter = field(default_factory=Counter)
    listed_twice: int = 0  # rows whose source lists them in two splits (cMedQA2: the evaluation split wins)
    by_split: Counter = field(default_factory=Counter)
    reservoirs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)


@dataclass
class Cleaned:
    """One input row after conversion, the cleaning steps and the decontamination check: everything
    about it that needs no other row. The scaled-out engine computes these in parallel and hands them
    back in input order; dedup, sampling and writing happen in `_place`, in order, on either engine."""

    where: str
    row: dict[str, Any] | None = None  # None: dropped by conversion or a step (`reason`)
    reason: str | None = None
    record: dict[str, Any] = field(default_factory=dict)  # a dropped row's drop-record fields
    meta: dict[str, Any] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    bench: str | None = None  # the benchmark the row overlaps with (decontamination)


def clean(item: Any, steps: list, decontam: Decontaminator | None) -> Cleaned:
    """Conversion result → steps (in order, the first that drops wins) → decontamination check."""
    if item.example is None:
        return Cleaned(item.where, reason=item.reason, record={**item.detail, "row": item.raw})
    row, stats, changed = item.example, Counter(), []
    for _, step in steps:
        new, why = step(row, stats)
        if new is None:  # the row as the steps left it (redacted if redaction ran first), never the raw one
            return Cleaned(item.where, reason=why, record={"row": row}, changed=changed, stats=dict(stats))
        if why:
            changed.append(why)
        row = new
    bench = decontam.check("\n".join(_user_texts(row))) if decontam is not None else None
    return Cleaned(item.where, row, meta=item.meta, changed=changed, stats=dict(stats), bench=bench)


def _cleaned(spec: DatasetSpec, cfg: Config, passes: _Passes) -> Iterator[Cleaned]:
    """The in-process engine: one dataset's rows converted and cleaned in this process."""
    convert = FORMATS.get(spec.format)
    groups = AnswerGroups(cfg.data.answers)
    if cfg.data.answers != "all":
        groups.scan(convert(spec))  # first pass: index questions (memory: distinct questions only)
    for index, item in enumerate(convert(spec)):
        if item.example is not None and cfg.data.answers != "all":
            example, carrier = groups.decide(index, item.example)
            if example is None:
                yield Cleaned(item.where, reason="merged_answer", record={
                    "answer_kept_with": f"row {carrier + 1} of the dataset", "row": item.example})
                continue
            item.example = example
        yield clean(item, passes.steps, passes.decontam)


def _one(spec: DatasetSpec, cfg: Config, rows: Iterator[Cleaned], passes: _Passes, sinks: _Sinks,
         files: dict[str, str]) -> dict[str, Any]:
    tally = _Tally(rng=random.Random(cfg.data.seed))
    progress = _progress(spec.name)
    try:
        for c in rows:
            progress.update()
            _place(c, spec, cfg, passes, sinks, files, tally)
    finally:
        progress.close()
    for name, pool in tally.reservoirs.items():
        for example in pool:
            sinks.write(f"{name}.jsonl", example)
    if tally.read == 0:
        raise DataError(f"dataset {spec.name!r} ({spec.path}) holds no records: the file is empty, an empty JSON "
                        "array, or a CSV with only its header. Check its path, or remove it from data.datasets.")
    kept = sum(min(n, cfg.data.max_samples) if cfg.data.max_samples else n for n in tally.by_split.values())
    log.info("%s: read %d, kept %d, dropped %s", spec.name, tally.read, kept, dict(tally.dropped) or "none")
    return {"format": spec.format, "path": spec.path, "license": spec.license, "source": spec.source,
            "rows_read": tally.read, "kept": kept, "dropped": dict(tally.dropped), "changed": dict(tally.changed),
            "not_sampled": tally.read - sum(tally.dropped.values()) - kept, "contaminated": dict(tally.contaminated),
            "listed_in_two_splits": tally.listed_twice,
            "pii_replaced": {k.removeprefix("pii_"): v for k, v in tally.stats.items() if k.startswith("pii_")},
            "kept_by_split": {k: min(v, cfg.data.max_samples) if cfg.data.max_samples else v
                              for k, v in tally.by_split.items()}}


def _place(c: Cleaned, spec: DatasetSpec, cfg: Config, passes: _Passes, sinks: _Sinks, files: dict[str, str],
           tally: _Tally) -> None:
    """One cleaned row through dedup → decontamination → output (or a dropped/ file), in input order."""
    tally.read += 1
    tally.stats.update(c.stats)
    for why in c.changed:
        tally.changed[why] += 1
        if why == "redacted":  # a pointer and what was replaced, for review: the original holds the PII
            sinks.write("changed/redacted.jsonl", {"dataset": spec.name, "where": c.where, "pii": {
                k.removeprefix("pii_"): v for k, v in c.stats.items() if k.startswith("pii_")}})
    if c.row is None:
        tally.dropped[c.reason] += 1
        sinks.drop(c.reason, {"dataset": spec.name, "where": c.where, **c.record})
        return
    row, reason, extra, dedup = c.row, None, {}, passes.dedup
    if dedup is not None and (hit := dedup.check(key_text(row, dedup.on), _ref(spec, c.where))):
        reason, extra = hit[0], {"duplicate_of": hit[1]}
    if reason is None and c.bench is not None:
        tally.contaminated[c.bench] += 1
        if passes.decontam.action == "drop":
            reason, extra = f"contaminated_{c.bench}", {"benchmark": c.bench}
        else:
            row = {**row, "contaminated": c.bench}
    if reason is not None:
        tally.dropped[reason] += 1
        sinks.drop(reason, {"dataset": spec.name, "where": c.where, **extra, "row": row})
        return
    if c.meta.get("also_listed_in"):
        tally.listed_twice += 1
    example = {**row, "meta": {"dataset": spec.name, "where": c.where, **c.meta}}
    split = example.pop("split", None) or (passes.splitter(row) if passes.splitter else "all")
    name = spec.name if split == "all" else f"{spec.name}.{split}"
    files[name] = str(sinks.path(f"{name}.jsonl"))
    tally.by_split[name] += 1
    if not cfg.data.max_samples:
        sinks.write(f"{name}.jsonl", example)
        return
    # A seeded reservoir sample per split: memory bounded by max_samples, whatever the input size.
    pool = tally.reservoirs.setdefault(name, [])
    if len(pool) < cfg.data.max_samples:
        pool.append(example)
    elif (j := tally.rng.randrange(tally.by_split[name])) < cfg.data.max_samples:
        pool[j] = example


def _ref(spec: DatasetSpec, where: str) -> str:
    """A compact row reference for the dedup index (dataset:line, or dataset:shard:line for a folder or
    glob of shards; the path is in the registry)."""
    file, _, line = where.rpartition(":")
    return f"{spec.name}:{line}" if file == spec.path else f"{spec.name}:{Path(file).name}:{line}"


def _user_texts(row: dict[str, Any]) -> list[str]:
    return texts(row, "user") or texts(row)


class _Sinks:
    """Append-only JSONL files under the build folder, opened on first use and closed at the end;
    `path` names where a file will be once the folder is committed."""

    def __init__(self, build: Path, final: Path) -> None:
        self.out, self.final, self.handles = build, final, {}

    def path(self, name: str) -> Path:
        return self.final / name

    def building(self, name: str) -> Path:
        return self.out / name

    def write(self, name: str, row: dict[str, Any]) -> None:
        if name not in self.handles:
            (self.out / name).parent.mkdir(parents=True, exist_ok=True)
            self.handles[name] = open(self.out / name, "a", encoding="utf-8")
        handle: IO[str] = self.handles[name]
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    def drop(self, reason: str, row: dict[str, Any]) -> None:
        self.write(f"dropped/{reason}.jsonl", row)

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()


def _progress(name: str) -> Any:
    try:
        from tqdm import tqdm

        # disable=None: a bar on a terminal only, never in logs or captured stderr.
        return tqdm(desc=f"prepare {name}", unit=" rows", mininterval=2.0, leave=False, disable=None)
    except ImportError:  # the light install has no tqdm
        class _Null:
            def update(self) -> None: ...
            def close(self) -> None: ...
        return _Null()


def write_mixture(cfg: Config, report: dict[str, Any], out: Path, sinks: _Sinks) -> dict[str, Any]:
    """`mixture.jsonl`: the training rows of the datasets sampled to `data.mix` ratios (seeded), for
    tools outside medtune; `medtune train` draws the same mixture itself after holding out eval rows."""
    from medtune.data.mixing import mix

    rows = []
    for name in report["files"]:
        if "." not in name or name.endswith(".train"):
            with open(sinks.building(f"{name}.jsonl"), encoding="utf-8") as f:
                rows.extend(json.loads(line) for line in f)
    mixed, counts = mix(rows, cfg.data.mix, cfg.data.mix_size, cfg.data.seed)
    io.write_jsonl(out / "mixture.jsonl", mixed)
    return counts
