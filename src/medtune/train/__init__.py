"""Training stages, one `run(cfg)` recipe each, registered by name (`finetune.stage`)."""

from medtune.registry import Registry

STAGES = Registry("stage")


def load_stages() -> Registry:
    """Import the stage modules so they register (they import torch lazily, inside `run`)."""
    from medtune.train import preference, pt, rl, sft  # noqa: F401

    return STAGES
