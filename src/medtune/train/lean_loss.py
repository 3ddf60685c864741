"""A causal-LM loss that never materialises the [tokens × vocab] logits.

With Gemma's 262,144-token vocabulary the logits of a batch of 4×512 tokens take 2 GiB in fp32,
plus as much again for their gradient: more than the model. Here the model's LM head is swapped
for `HiddenHead`, so the forward pass (still through DDP/accelerate wrappers) returns hidden states;
`chunked_lm_loss` — the Trainer's `compute_loss_func` hook — then keeps only the supervised
positions and computes head + cross-entropy chunk by chunk under activation checkpointing, so at
most one chunk of logits exists at a time, in the forward and in the backward pass. The result
equals the standard loss (and its gradients) to float tolerance; `finetune.loss_chunk_size` turns it on.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from medtune.errors import ConfigError


class HiddenHead(torch.nn.Module):
    """Stands in for the LM head: returns its input, keeps the real weight for the loss."""

    def __init__(self, head: torch.nn.Linear) -> None:
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


def install(model: Any, chunk_size: int) -> tuple[Any, Any]:
    """Swap the LM head; return (compute_loss_func for the Trainer, a function that restores the head)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "final_logit_softcapping", None) or getattr(base.config.get_text_config(),
                                                                           "final_logit_softcapping", None):
        raise ConfigError("finetune.loss_chunk_size does not support models with final_logit_softcapping "
                          "(Gemma 2); leave it unset for this model.")
    head = base.get_output_embeddings()
    base.set_output_embeddings(HiddenHead(head))

    def loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        return chunked_lm_loss(outputs.logits, labels, head, chunk_size, num_items_in_batch)

    return loss, lambda: base.set_output_embeddings(head)


def chunked_lm_loss(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Linear, chunk_size: int,
                    num_items_in_batch: Any = None) -> torch.Tensor:
    """Sum of next-token cross-entropy over supervised positions / number of supervised tokens."""
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = labels[:, 1:].reshape(-1).to(h.device)
    keep = y != -100
    h, y = h[keep], y[keep]
    total = hidden.sum() * 0.0  # keeps the graph alive for a batch with no supervised token
    for start in range(0, y.numel(), chunk_size):
        total = total + checkpoint(_ce_sum, h[start:start + chunk_size], y[start:start + chunk_size],
                                   head.weight, head.bias, use_reentrant=False)
    count = num_items_in_batch if num_items_in_batch is not None else max(y.numel(), 1)
    return total / count


def _ce_sum(h: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.cross_entropy(F.linear(h, weight, bias).float(), y, reduction="sum")
