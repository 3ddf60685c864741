"""Every config medtune ships loads, and the repository files it names exist (a typo in a shipped config is
a user's first traceback). Dataset registries are not configs. Task files (a top-level `type`, listed in
eval.tasks) are read as tasks."""

from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from medtune.config import load_config

CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml")
                 if p.parent.name != "accelerate" and p.name not in ("shared_datasets.yaml", "datasets.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_config_loads_and_its_repository_files_exist(path: Path):
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if "type" in raw:  # a task file
        assert raw["name"] and raw["data"]
        return
    cfg = load_config(str(path))
    named = [t["data"] for t in cfg.eval.tasks if isinstance(t, dict) and "data" in t]
    named += cfg.data.decontaminate.get("benchmarks", [])
    for f in named:
        p = (path.parent / f).resolve()
        if p.is_relative_to(ROOT):  # files in ../shared/data are the user's; the shipped ones must be here
            assert p.exists(), f"{path.name} names {f}, which is not in the repository"
