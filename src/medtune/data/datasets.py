"""The dataset registry: `datasets.yaml` files that name datasets for configs.

An entry says where a dataset is, how to read it and under what terms:

    toyhom_neike_sample:
      path: samples/toyhom_neike_sample.csv   # relative to this registry file
      format: toyhom                          # see `medtune ls formats`
      encoding: gb18030
      columns: {answer: answer}               # canonical field → source column (or a list of spellings)
      options: {}                             # format-specific (cMedQA2: answers, instruction, ...)
      license: MIT
      allowed_use: [research, commercial]      # what the licence permits (intended_use checks it)
      source: https://github.com/Toyhom/Chinese-medical-dialogue-data

medtune's built-in registry (the samples shipped in the package) is read first; files listed in
`data.registries` are read after it and may add or override names. A registry may also be
LLaMA-Factory's `dataset_info.json` (see `medtune.data.llamafactory`).
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medtune.errors import ConfigError

log = logging.getLogger(__name__)
BUILTIN_REGISTRY = Path(__file__).parent / "datasets.yaml"
_KEYS = {"path", "format", "encoding", "columns", "options", "license", "source", "description", "allowed_use"}
_INTERNAL = {"unavailable"}


@dataclass
class DatasetSpec:
    name: str
    path: str
    format: str
    encoding: str = "utf-8"
    columns: dict[str, Any] = field(default_factory=dict)  # field → column, or [spellings, ...]
    options: dict[str, Any] = field(default_factory=dict)
    license: str = "unknown"
    source: str = "unknown"
    description: str = ""
    # What the licence permits: [research], [research, commercial]; empty = unknown (not commercial).
    allowed_use: list[str] = field(default_factory=list)
    # What a record that does not parse does: stop (the run, naming file and line) or skip (dropped and
    # counted as invalid_json / invalid_unicode); set for every dataset by data.on_error.
    on_error: str = "stop"
    # Why this entry cannot be read here (a dataset_info.json entry on a hub, multimodal, ...); said when used.
    unavailable: str = ""


def load_registry(extra: list[str] | tuple[str, ...] = ()) -> dict[str, DatasetSpec]:
    """Read the built-in registry plus `extra` registry files, later files overriding earlier ones."""
    specs: dict[str, DatasetSpec] = {}
    for reg in (BUILTIN_REGISTRY, *map(Path, extra)):
        if not reg.is_file():
            raise ConfigError(f"Dataset registry {str(reg)!r} does not exist (data.registries).")
        if reg.suffix == ".json":  # LLaMA-Factory's dataset_info.json
            from medtune.data.llamafactory import read_dataset_info

            entries = read_dataset_info(reg)
        else:
            entries = yaml.safe_load(reg.read_text(encoding="utf-8")) or {}
        for name, entry in entries.items():
            specs[name] = _spec(name, entry, reg)
    return specs


def _spec(name: str, entry: Any, reg: Path) -> DatasetSpec:
    if not isinstance(entry, dict) or "path" not in entry or "format" not in entry:
        raise ConfigError(f"{reg}: dataset {name!r} needs at least `path:` and `format:`.")
    unknown = set(entry) - _KEYS - _INTERNAL
    if unknown:
        key = sorted(unknown)[0]
        close = difflib.get_close_matches(key, _KEYS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{reg}: dataset {name!r} has unknown key {key!r}.{hint} Allowed: {', '.join(sorted(_KEYS))}.")
    path = Path(entry["path"])  # a file, a folder of shards or a glob ("shards/part-*.jsonl.gz")
    if not path.is_absolute() and "://" not in entry["path"]:
        path = reg.parent.resolve() / path if any(ch in entry["path"] for ch in "*?[") else (reg.parent / path).resolve()
    return DatasetSpec(name=name, **{**entry, "path": str(path)})


def _sha1(path: str) -> str:
    import hashlib

    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve(names: list[str], registries: list[str] | tuple[str, ...] = ()) -> list[DatasetSpec]:
    """Look up dataset names, failing with the closest known name."""
    specs = load_registry(registries)
    out = []
    for name in names:
        if name not in specs:
            close = difflib.get_close_matches(name, specs, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"Unknown dataset {name!r}.{hint} Known: {', '.join(sorted(specs))}. "
                              "Add it to a registry file listed in data.registries.")
        spec = specs[name]
        if spec.unavailable:
            raise ConfigError(f"Dataset {name!r} cannot be used: {spec.unavailable}")
        if (sha1 := spec.options.get("file_sha1")) and Path(spec.path).is_file() and _sha1(spec.path) != sha1:
            log.warning("dataset %s: %s has sha1 %s, not the file_sha1 %s its dataset_info.json records (the file "
                        "changed since it was registered)", name, spec.path, _sha1(spec.path), sha1)
        out.append(spec)
    return out
