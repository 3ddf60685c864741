"""`medtune prepare`: a config's datasets → JSONL files, `report.json` and `dropped/<reason>.jsonl`.

Nothing is lost silently: every row a converter did not keep is counted by reason in the report
and written, with the file and line it came from, to `dropped/<reason>.jsonl`. Examples that carry
an official split (cMedQA2) go to one file per split, `<dataset>.<split>.jsonl`.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from medtune.config import Config
from medtune.data import io
from medtune.data.datasets import resolve
from medtune.data.formats import FORMATS

log = logging.getLogger(__name__)


def prepare(cfg: Config) -> dict[str, Any]:
    """Convert every dataset in `cfg.data.datasets`; return the report (also written to report.json)."""
    out = Path(cfg.data.output_dir) if cfg.data.output_dir else cfg.output_dir / "data"
    report: dict[str, Any] = {"output_dir": str(out), "datasets": {}, "files": {}}
    dropped_rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for spec in resolve(cfg.data.datasets, cfg.data.registries):
        convert = FORMATS.get(spec.format)
        by_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
        dropped: Counter[str] = Counter()
        read = 0
        for item in convert(spec):
            read += 1
            if item.example is None:
                dropped[item.reason] += 1
                dropped_rows[item.reason].append({"dataset": spec.name, "where": item.where, "row": item.raw})
                continue
            example = {**item.example, "meta": {"dataset": spec.name, "where": item.where, **item.meta}}
            by_split[example.pop("split", None) or "all"].append(example)
        capped = _cap(by_split, cfg.data.max_samples, cfg.data.seed)
        for split, rows in by_split.items():
            name = spec.name if split == "all" else f"{spec.name}.{split}"
            report["files"][name] = str(io.write_jsonl(out / f"{name}.jsonl", rows))
        report["datasets"][spec.name] = {
            "format": spec.format, "path": spec.path, "license": spec.license, "source": spec.source,
            "rows_read": read, "kept": sum(len(r) for r in by_split.values()),
            "kept_by_split": {k: len(v) for k, v in by_split.items()},
            "dropped": dict(dropped), "not_sampled": capped,
        }
        log.info("%s: kept %d of %d rows; dropped %s", spec.name, report["datasets"][spec.name]["kept"],
                 read, dict(dropped) or "none")
    for reason, rows in dropped_rows.items():
        io.write_jsonl(out / "dropped" / f"{reason}.jsonl", rows)
    report["kept"] = sum(d["kept"] for d in report["datasets"].values())
    report["dropped"] = dict(sum((Counter(d["dropped"]) for d in report["datasets"].values()), Counter()))
    io.atomic_write_text(out / "report.json", json.dumps(report, ensure_ascii=False, indent=2))
    return report


def _cap(by_split: dict[str, list[dict[str, Any]]], max_samples: int | None, seed: int) -> int:
    """Keep at most `max_samples` rows per split (a seeded sample); return how many were left out."""
    if not max_samples:
        return 0
    left_out = 0
    for split, rows in by_split.items():
        if len(rows) > max_samples:
            left_out += len(rows) - max_samples
            by_split[split] = random.Random(seed).sample(rows, max_samples)
    return left_out


def load_prepared(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Read the prepared files back, grouped into `train`, `dev` and `test` by their split."""
    groups: dict[str, list[dict[str, Any]]] = {"train": [], "dev": [], "test": []}
    for name, path in report["files"].items():
        split = name.rsplit(".", 1)[1] if "." in name else "train"
        with open(path, encoding="utf-8") as f:
            groups[split if split in groups else "train"].extend(json.loads(line) for line in f)
    return groups
