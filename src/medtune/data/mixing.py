"""Mixtures of datasets with sampling ratios (e.g. general:medical = 1:3 to limit forgetting).

The mixture's size is `data.mix_size`, or by default the largest mixture that uses no dataset
more than once: min over datasets of available_i / share_i. A dataset asked for more rows than it has
is upsampled (sampled with replacement) and the report says so. Sampling is seeded.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from medtune.errors import ConfigError


def mix(rows: list[dict[str, Any]], ratios: dict[str, float], size: int | None,
        seed: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """Sample `rows` (grouped by meta.dataset) to the given ratios; return rows and per-dataset counts."""
    by_dataset: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_dataset[r["meta"]["dataset"]].append(i)
    picked, report = mix_indices(by_dataset, ratios, size, seed)
    return [rows[i] for i in picked], report


def mix_indices(by_dataset: dict[str, list[int]], ratios: dict[str, float], size: int | None,
                seed: int) -> tuple[list[int], dict[str, dict[str, int]]]:
    """`mix` on row indices grouped by dataset (the tokenised Arrow path never builds row lists)."""
    unknown = set(ratios) - set(by_dataset)
    missing = set(by_dataset) - set(ratios)
    if unknown or missing or any(v <= 0 for v in ratios.values()):
        raise ConfigError(f"data.mix must give a positive ratio for each training dataset "
                          f"({', '.join(sorted(by_dataset))}); unknown: {sorted(unknown)}, missing: {sorted(missing)}.")
    total = sum(ratios.values())
    share = {name: v / total for name, v in ratios.items()}
    if size is None:
        size = int(min(len(by_dataset[n]) / share[n] for n in share))
    rng = random.Random(seed)
    mixed, report = [], {}
    for name in sorted(share):
        want, pool = round(size * share[name]), by_dataset[name]
        picked = rng.sample(pool, want) if want <= len(pool) else pool + rng.choices(pool, k=want - len(pool))
        mixed += picked
        report[name] = {"available": len(pool), "used": want, "upsampled": max(0, want - len(pool))}
    rng.shuffle(mixed)
    return mixed, report
