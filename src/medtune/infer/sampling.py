"""Valid ranges of the sampling settings, checked wherever they enter: the API (400), the config
(`generation:`, for chat / webui / eval) and the web page's sliders. A bad value must be refused at
the door: inside a batch, one request's invalid setting used to fail generation for all its batch-mates."""

from __future__ import annotations

from typing import Any

# key: (low, high, how the range is shown). OpenAI's ranges where it has one.
RANGES: dict[str, tuple[float, float, str]] = {
    "temperature": (0.0, 2.0, "0..2"), "top_p": (1e-9, 1.0, "(0, 1]"), "top_k": (0, 10_000, "0..10000"),
    "repetition_penalty": (1e-9, 10.0, "(0, 10]"), "seed": (0, 2**63 - 1, "0..2^63-1"),
    "min_new_tokens": (0, 1_000_000, "≥ 0"), "num_beams": (1, 64, "1..64"),
}


def out_of_range(values: dict[str, Any]) -> tuple[str, str] | None:
    """(key, message) for the first value outside its range, or None."""
    for key, (low, high, shown) in RANGES.items():
        value = values.get(key)
        if value is not None and not isinstance(value, bool) and isinstance(value, int | float) \
                and not low <= value <= high:
            return key, f"{key}={value} is outside {shown}."
    return None
