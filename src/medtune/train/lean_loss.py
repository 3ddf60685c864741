"""A causal-LM loss that never materialises the [tokens × vocab] logits.

With Gemma's 262,144-token vocabulary the logits of a batch of 4×512 tokens take 2 GiB in fp32,
plus as much again for their gradient: more than the model. Here the model's LM head is swapped
for `HiddenHead`, so the forward pass (still through DDP/accelerate wrappers) returns hidden states;
`chunked_lm_loss` — the Trainer's `compute_loss_func` hook — then keeps only the supervised
positions and computes head + cross-entropy chunk by chunk under activation checkpointing, so at
most one chunk of logits exists at a time, in the forward and in the backward pass. The result
equals the standard loss (and its gradients) to float tolerance.

It is the default (`finetune.loss_chunk_size: auto`) because it is also the faster path at every
vocabulary measured (benchmarks/README.md): the prompt and padding positions, often half of a
batch, get no logits at all. When the supervised positions fit into one chunk the head runs once
without checkpointing, so a small vocabulary pays no recomputation.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from medtune.errors import ConfigError

log = logging.getLogger(__name__)

AUTO_LOGITS = 2**28  # `auto`: at most this many logits per chunk (1 GiB in fp32)


def chunk_size_for(model: Any, setting: int | str | None) -> int | None:
    """`finetune.loss_chunk_size` for this model: tokens per chunk, or None for the model's own loss.
    `auto` steps aside for what the lean loss cannot do (Gemma 2's logit soft-capping); an explicit
    size there is a config error (see `install`)."""
    if setting != "auto":
        return setting or None
    base = _base(model)
    if _softcapped(base):
        log.info("finetune.loss_chunk_size=auto: this model soft-caps its logits; using its own loss")
        return None
    vocab = base.get_output_embeddings().weight.shape[0]
    return max(256, AUTO_LOGITS // vocab)


def _base(model: Any) -> Any:
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _softcapped(base: Any) -> bool:
    return bool(getattr(base.config, "final_logit_softcapping", None)
                or getattr(base.config.get_text_config(), "final_logit_softcapping", None))


class HiddenHead(torch.nn.Module):
    """Stands in for the LM head: returns its input, keeps the real weight for the loss."""

    def __init__(self, head: torch.nn.Linear) -> None:
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


def install(model: Any, chunk_size: int) -> tuple[Any, Any]:
    """Swap the LM head; return (compute_loss_func for the Trainer, a function that restores the head)."""
    base = _base(model)
    if _softcapped(base):
        raise ConfigError("finetune.loss_chunk_size does not support models with final_logit_softcapping "
                          "(Gemma 2); leave it unset for this model.")
    head = base.get_output_embeddings()
    base.set_output_embeddings(HiddenHead(head))

    def loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        return chunked_lm_loss(outputs.logits, labels, head, chunk_size, num_items_in_batch)

    return loss, lambda: base.set_output_embeddings(head)


def chunked_lm_loss(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Linear, chunk_size: int,
                    num_items_in_batch: Any = None) -> torch.Tensor:
    """Sum of next-token cross-entropy over supervised positions / number of supervised tokens.
    Positions before the labels' (p-tuning's virtual tokens, which peft prepends) carry no label."""
    hidden = hidden[:, hidden.shape[1] - labels.shape[1]:]
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = labels[:, 1:].reshape(-1).to(h.device)
    keep = y != -100
    h, y = h[keep], y[keep]
    total = hidden.sum() * 0.0  # keeps the graph alive for a batch with no supervised token
    if y.numel() <= chunk_size:  # one chunk: its logits are no bigger than a chunk's; nothing to recompute
        total = total + _ce_sum(h, y, head.weight, head.bias)
    else:
        for start in range(0, y.numel(), chunk_size):
            total = total + checkpoint(_ce_sum, h[start:start + chunk_size], y[start:start + chunk_size],
                                       head.weight, head.bias, use_reentrant=False)
    count = num_items_in_batch if num_items_in_batch is not None else max(y.numel(), 1)
    return total / count


def _ce_sum(h: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.cross_entropy(F.linear(h, weight, bias).float(), y, reduction="sum")


@contextlib.contextmanager
def real_head(model: Any) -> Any:
    """The real LM head in place for a while: scoring needs logits, and a checkpoint must hold the model's
    own module names (a tied head saved as `lm_head.head.weight` is refused by transformers)."""
    base = _base(model)
    head = base.get_output_embeddings()
    if not isinstance(head, HiddenHead):
        yield
        return
    base.set_output_embeddings(head.head)
    try:
        yield
    finally:
        base.set_output_embeddings(head)
