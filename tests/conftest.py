"""Offline, CPU-only, one thread (the second core is often busy: see shared/research/offline_assets.md)."""

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Tiny models are built once per test session into a private cache."""
    os.environ["MEDTUNE_CACHE"] = str(tmp_path_factory.mktemp("medtune_cache"))
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from transformers import AutoTokenizer

    from medtune.model.tiny import tiny_model_path

    return AutoTokenizer.from_pretrained(tiny_model_path("llama"))


def shared(relpath: str) -> Path:
    path = SHARED / relpath
    if not path.exists():
        pytest.skip(f"{path} not found (tests read real data from ../shared/data)")
    return path


DIALOGUE = [
    {"role": "user", "content": "我最近总是头痛，怎么办？"},
    {"role": "assistant", "content": "建议先测量血压，注意休息。"},
    {"role": "user", "content": "血压有点高，需要吃药吗？"},
    {"role": "assistant", "content": "请到心内科就诊，遵医嘱用药。"},
]
