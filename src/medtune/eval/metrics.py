"""Scores that need no model: character BLEU / ROUGE-L / Distinct-n, ranking P@1 / MAP, bootstrap CIs.

Chinese text is scored at the character level (as CMExam's and Huatuo-26M's published numbers are),
whitespace ignored. BLEU and ROUGE-L are computed per item, so two models can be compared with a
paired bootstrap over the same questions; the reported value is the mean over items. They reward
outputs that copy the reference's style and length: use them as a regression signal between base
and tuned, never as a quality verdict (shared/research/evaluation.md §2).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np


def chars(text: str) -> list[str]:
    return [c for c in text if not c.isspace()]


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1))


def bleu(hypothesis: str, reference: str, max_n: int = 4) -> float:
    """Sentence BLEU-`max_n` over characters: uniform weights, brevity penalty, and add-one
    smoothing for n > 1 (Lin & Och 2004; nltk's method2), so one missing 4-gram does not zero it."""
    hyp, ref = chars(hypothesis), chars(reference)
    if not hyp or not ref:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        h, r = _ngrams(hyp, n), _ngrams(ref, n)
        match, total = sum((h & r).values()), max(sum(h.values()), 0)
        if n > 1:
            match, total = match + 1, total + 1
        if match == 0 or total == 0:
            return 0.0
        log_p += math.log(match / total) / max_n
    bp = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return bp * math.exp(log_p)


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 over characters (longest common subsequence)."""
    hyp, ref = chars(hypothesis), chars(reference)
    if not hyp or not ref:
        return 0.0
    prev = [0] * (len(ref) + 1)
    for h in hyp:
        cur = [0]
        for j, r in enumerate(ref):
            cur.append(prev[j] + 1 if h == r else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(hyp), lcs / len(ref)
    return 2 * p * r / (p + r)


def distinct(outputs: Sequence[str], n: int) -> float:
    """Distinct-n: unique character n-grams / all n-grams over a model's outputs (diversity; a
    model that repeats itself scores low)."""
    grams: Counter = Counter()
    for text in outputs:
        grams.update(_ngrams(chars(text), n))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def length_ratio(outputs: Sequence[str], references: Sequence[str]) -> float:
    """Total output characters / total reference characters."""
    ref = sum(len(chars(r)) for r in references)
    return sum(len(chars(o)) for o in outputs) / ref if ref else 0.0


def average_precision(scores: Sequence[float], labels: Sequence[int]) -> float:
    """AP of one question's candidates ranked by score (ties broken by candidate order)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits, total = 0, 0.0
    for rank, i in enumerate(order, 1):
        if labels[i]:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


def precision_at_1(scores: Sequence[float], labels: Sequence[int]) -> float:
    return float(labels[max(range(len(scores)), key=lambda i: scores[i])]) if scores else 0.0


def bootstrap_ci(values: Sequence[float], resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values` (per-item scores)."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return (math.nan, math.nan)
    means = _resampled_means(v, resamples, seed)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int, seed: int,
                     level: float = 0.95) -> dict[str, float]:
    """Difference of means b − a over the same items, with a paired percentile-bootstrap CI: items
    are resampled together, so the shared difficulty of a question cancels out (much tighter than
    two independent CIs). `p_le_0` is the share of resamples where b did not beat a."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if len(d) == 0:
        return {"diff": math.nan, "low": math.nan, "high": math.nan, "p_le_0": math.nan, "n": 0}
    means = _resampled_means(d, resamples, seed)
    alpha = (1 - level) / 2
    return {"diff": float(d.mean()), "low": float(np.quantile(means, alpha)),
            "high": float(np.quantile(means, 1 - alpha)), "p_le_0": float((means <= 0).mean()), "n": len(d)}


def _resampled_means(v: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of `resamples` bootstrap resamples, drawn in chunks so memory stays small for large sets."""
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // len(v))
    return np.concatenate([v[rng.integers(0, len(v), size=(min(chunk, resamples - i), len(v)))].mean(axis=1)
                           for i in range(0, resamples, chunk)])
