"""Provenance: the intended-use licence check and the dataset card of a prepared folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.config import Config
from medtune.data import io
from medtune.data.datasets import DatasetSpec
from medtune.errors import ConfigError


def licence_check(specs: list[DatasetSpec], intended_use: str) -> None:
    """Refuse a commercial run on data whose registry entry does not allow commercial use."""
    if intended_use not in ("research", "commercial"):
        raise ConfigError(f"data.intended_use must be research or commercial; got {intended_use!r}.")
    if intended_use != "commercial":
        return
    blocked = [f"{s.name} ({s.license})" for s in specs if "commercial" not in s.allowed_use]
    if blocked:
        raise ConfigError("data.intended_use=commercial, but these datasets do not allow commercial use (registry "
                          f"`allowed_use`): {', '.join(blocked)}. Remove them or check their licences.")


def _shards(path: str) -> list[Path]:
    try:
        return [p for p in io.shards(path) if p.is_file()]
    except Exception:
        return []


def write_card(cfg: Config, specs: list[DatasetSpec], report: dict[str, Any], out: Path) -> Path:
    """README.md of the prepared folder: sources, licences, counts in and out by reason, hashes, config."""
    import yaml

    from medtune.config import to_dict

    def sha(path: str | Path) -> str:
        p = Path(path)
        if p.is_dir():
            return "folder: " + ", ".join(f"{f.name} {sha(f)}" for f in sorted(p.iterdir()) if f.is_file())
        return io.file_sha256(p)[:16]

    lines = ["# Prepared dataset card", "", f"Intended use: **{cfg.data.intended_use}**.", "",
             "| dataset | source | licence | allowed use | read | kept | dropped | changed |",
             "|---|---|---|---|---|---|---|---|"]
    for s in specs:
        r = report["datasets"][s.name]
        lines.append(f"| {s.name} | {s.source} | {s.license} | {', '.join(s.allowed_use) or 'unknown'} | {r['rows_read']} "
                     f"| {r['kept']} | {sum(r['dropped'].values())} {r['dropped'] or ''} | {r['changed'] or ''} |")
    lines += ["", f"PII replaced: {report['pii_replaced'] or 'none'}", "", "## Inputs (sha256, 16 hex)", ""]
    lines += [f"- `{shard}`: {sha(shard)}" for s in specs for shard in _shards(s.path)]
    lines += ["", "## Outputs", ""]
    # Hashed where they are being built (`out`, the folder's build copy), named as they will be.
    names = sorted({Path(p).name for p in report["files"].values()})
    lines += [f"- `{n}`: {sha(out / n)}" for n in names if (out / n).exists()]
    lines += ["", "## Config", "", "```yaml", yaml.safe_dump(to_dict(cfg)["data"], allow_unicode=True, sort_keys=False),
              "```", ""]
    return io.atomic_write_text(out / "README.md", "\n".join(lines))
