"""Log-likelihood scoring with a causal LM: option letters and candidate answers.

Prompts are rendered with the model's chat template (`prompt_ids`, as serving does), and the scored
text is what the assistant turn would start with. For option letters this is one forward pass per
question when every letter is a single token right after the prompt (the usual case), otherwise
one per option. Batches are left-padded with explicit position ids, so a question scores the same
alone or in a batch, and only the last positions' logits are computed (`logits_to_keep`): with
Gemma's 262k vocabulary the full logits of a batch would not fit in memory.
"""

from __future__ import annotations

import math
from typing import Any

from medtune.data.encode import special_tokens
from medtune.data.templates import ChatTemplate

# Rows × kept positions per forward pass, scaled down for large vocabularies (logits are rows × kept × vocab).
_LOGIT_BUDGET = 64_000_000


class LoglikScorer:
    def __init__(self, model: Any, tokenizer: Any, template: ChatTemplate, batch_size: int = 8) -> None:
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.batch_size = batch_size
        self.specials = special_tokens(tokenizer)
        self.vocab = model.get_output_embeddings().weight.shape[0]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _split(self, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids of `prompt + continuation` tokenised as one string (what the
        model sees), split where the tokenisation of the prompt alone stops agreeing."""
        full, ctx = self._ids(prompt + continuation), self._ids(prompt)
        p = 0
        while p < min(len(full), len(ctx)) and full[p] == ctx[p]:
            p += 1
        return full[:p], full[p:]

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        return self.template.render(messages, self.specials, add_generation_prompt=True)

    def letters(self, prompts: list[list[dict[str, str]]], letters: list[list[str]]) -> list[dict[str, float]]:
        """Log-probability of each option letter as the first thing the assistant says."""
        out: list[dict[str, float] | None] = [None] * len(prompts)
        fast, slow = [], []
        for i, (messages, ls) in enumerate(zip(prompts, letters, strict=True)):
            text = self.prompt_text(messages)
            splits = [self._split(text, letter) for letter in ls]
            contexts = {tuple(c) for c, _ in splits}
            if len(contexts) == 1 and all(len(cont) == 1 for _, cont in splits):
                fast.append((i, splits[0][0], [cont[0] for _, cont in splits], ls))
            else:
                slow.append((i, splits, ls))
        for start in range(0, len(fast), self.batch_size):
            chunk = fast[start: start + self.batch_size]
            logp = self._forward([c for _, c, _, _ in chunk], keep=1)
            for (i, _, tok_ids, ls), row in zip(chunk, logp, strict=True):
                out[i] = {letter: float(row[-1, t]) for letter, t in zip(ls, tok_ids, strict=True)}
        pairs = [pair for _, splits, _ in slow for pair in splits]
        sums = iter(sum(lp) for lp in self.continuations(pairs))
        for i, _, ls in slow:
            out[i] = {letter: next(sums) for letter in ls}
        return out  # type: ignore[return-value]

    def candidates(self, prompts: list[list[dict[str, str]]], answers: list[str]) -> list[float]:
        """Mean per-token log-probability of each answer as the assistant's reply (length-normalised,
        so long answers are not penalised for being long)."""
        pairs = [self._split(self.prompt_text(m), a) for m, a in zip(prompts, answers, strict=True)]
        return [sum(lp) / len(lp) if lp else -math.inf for lp in self.continuations(pairs)]

    def options(self, prompts: list[list[dict[str, str]]], options: list[list[str]]) -> list[list[tuple[float, int]]]:
        """Cloze scoring: each option's text as the assistant's reply, (summed log-prob, tokens) per
        option. The caller normalises (per character, per token) as lm-eval's acc_norm does."""
        pairs, shape = [], []
        for messages, texts in zip(prompts, options, strict=True):
            text = self.prompt_text(messages)
            pairs += [self._split(text, t) for t in texts]
            shape.append(len(texts))
        scored = iter(self.continuations(pairs))
        return [[(sum(lp), len(lp)) for lp in (next(scored) for _ in range(n))] for n in shape]

    def continuations(self, pairs: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        """Per-token log-probs of each continuation given its context."""
        out: list[list[float]] = [[] for _ in pairs]
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        i = 0
        while i < len(order):
            batch = [order[i]]
            # Grow the batch while the kept logits stay within budget.
            while (i + len(batch) < len(order) and len(batch) < self.batch_size
                   and (len(batch) + 1) * (max(len(pairs[j][1]) for j in batch + [order[i + len(batch)]]) + 1)
                   * self.vocab <= _LOGIT_BUDGET):
                batch.append(order[i + len(batch)])
            keep = max(len(pairs[j][1]) for j in batch) + 1
            logp = self._forward([pairs[j][0] + pairs[j][1] for j in batch], keep=keep)
            for row, j in zip(logp, batch, strict=True):
                cont = pairs[j][1]
                # Kept positions are the last `keep`; position t predicts token t+1.
                preds = row[keep - 1 - len(cont): keep - 1]
                out[j] = [float(preds[k, t]) for k, t in enumerate(cont)]
            i += len(batch)
        return out

    def _forward(self, seqs: list[list[int]], keep: int) -> Any:
        """Log-softmax of the last `keep` positions of each (left-padded) sequence: [rows, keep, vocab]."""
        import torch

        width = max(map(len, seqs))
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                position_ids=positions.to(device), logits_to_keep=keep, use_cache=False).logits
        return torch.log_softmax(logits[:, -keep:].float(), dim=-1).cpu()
