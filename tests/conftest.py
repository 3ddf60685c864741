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


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run only where CUDA is present (never on this project's CPU machines or CI)."""
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


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


QA = {"头痛怎么办？": "多休息，少熬夜。", "发烧了吃什么药？": "可以服用退烧药。"}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny model that has memorised two answers, end-of-turn token included (full SFT, ~5 s)."""
    import json

    from medtune.cli import main

    d = tmp_path_factory.mktemp("memorised")
    (d / "qa.jsonl").write_text("".join(json.dumps({"instruction": q, "output": a}, ensure_ascii=False) + "\n"
                                        for q, a in QA.items()) * 4, encoding="utf-8")
    (d / "reg.yaml").write_text(f"qa: {{path: {d / 'qa.jsonl'}, format: alpaca, license: test, source: test}}\n")
    assert main(["train", str(ROOT / "configs/tiny/sft_lora.yaml"), f"train.output_dir={d / 'out'}",
                 f"data.registries=[{d / 'reg.yaml'}]", "data.datasets=[qa]", "data.test_size=0",
                 "train.eval_strategy=no", "finetune.method=full", "train.learning_rate=1e-2", "train.max_steps=60",
                 "train.per_device_train_batch_size=8", "train.save_steps=1000",
                 "train.lr_scheduler_type=constant"]) == 0
    return d / "out"


def train_scripted(d: Path, rows: list[dict], steps: int, name: str) -> Path:
    """A tiny model fully fine-tuned to give scripted replies (openai-format rows, up to 1,024 tokens)
    to the exact prompts a test will send it: a teacher for synth, a judge for eval. Returns its folder,
    `d/name` (a server names the model after it)."""
    import json

    from medtune.cli import main

    (d / "scripted.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                      encoding="utf-8")
    (d / "reg.yaml").write_text(f"scripted: {{path: {d / 'scripted.jsonl'}, format: openai, license: test, "
                                "source: test}\n")
    assert main(["train", str(ROOT / "configs/tiny/sft_lora.yaml"), f"train.output_dir={d / name}",
                 f"data.registries=[{d / 'reg.yaml'}]", "data.datasets=[scripted]", "data.test_size=0",
                 "data.max_samples=null", "data.max_length=1024", "train.eval_strategy=no", "finetune.method=full",
                 "train.learning_rate=1e-2", f"train.max_steps={steps}", "train.per_device_train_batch_size=8",
                 "train.save_steps=1000", "train.lr_scheduler_type=cosine", "train.warmup_steps=10"]) == 0
    return d / name
