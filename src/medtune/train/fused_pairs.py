"""ORPO and SimPO (CPO) without the [tokens × vocab] logits: TRL's own fused LM head under their pair forward.

TRL's DPOTrainer and KTOTrainer score completions through `trl.trainer.utils.add_fused_lm_head`: the LM head
runs in tiles and returns each label's log-probability, so the logits of a batch never exist at once (at
Gemma's 262,144-token vocabulary, 4 pairs × 2 × 256 tokens of fp32 logits are 2 GiB, and their gradient as much
again). TRL's experimental ORPO and CPO trainers still call the model for full logits. `fused(trainer_cls)`
gives them the same head: one backbone pass per batch, and from its per-token log-probabilities the exact
quantities their losses read (the answers' summed or averaged log-probs, the chosen NLL), plus the mean logit
of each scored position, which stands in for the logits their `logits/chosen` / `logits/rejected` metrics
average (those means are over the scored positions, not over padding too). The loss and its gradients are the
plain forward's to float tolerance (tests/test_stages.py compares them on the same batch).
"""

from __future__ import annotations

from typing import Any

FUSED_OUTPUTS = ("log_probs", "mean_logits")


def fused(base: Any) -> Any:
    """`base` (TRL's ORPOTrainer or CPOTrainer) with the fused LM head; encoder-decoders keep the plain path."""

    class FusedPairs(base):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if not self.is_encoder_decoder:  # under a PEFT wrapper, on the model it wraps (as TRL's DPOTrainer does)
                from accelerate.utils import is_peft_model
                from trl.trainer.utils import add_fused_lm_head

                m = self.model
                add_fused_lm_head(m.get_base_model() if is_peft_model(m) else m, outputs=FUSED_OUTPUTS)

        def concatenated_forward(self, model: Any, batch: dict[str, Any]) -> tuple:
            if self.is_encoder_decoder:
                return super().concatenated_forward(model, batch)
            return pair_forward(self, model, batch)

    FusedPairs.__name__ = FusedPairs.__qualname__ = f"Fused{base.__name__}"
    return FusedPairs


def pair_forward(trainer: Any, model: Any, batch: dict[str, Any]) -> tuple:
    """What TRL's ORPO / CPO `concatenated_forward` returns, from per-token log-probs instead of logits:
    (chosen logps, rejected logps, chosen mean logits, rejected mean logits, chosen NLL[, aux loss])."""
    import torch  # here, not at import: `medtune ls stages` registers this module and must stay light

    orpo = hasattr(trainer, "odds_ratio_loss")
    pad = trainer.padding_value if orpo else trainer.pad_token_id
    cat = trainer.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=pad,
                                      device=trainer.accelerator.device)
    n = batch["chosen_labels"].shape[0]
    ids, attention, answers = (cat[f"concatenated_{k}"] for k in ("input_ids", "attention_mask", "labels"))
    # ORPO's NLL covers the chosen prompt and answer, so every real token is scored; CPO scores the answers only.
    labels = ids.masked_fill(attention == 0, -100) if orpo else answers
    extra = {"output_router_logits": True} if trainer.aux_loss_enabled else {}
    out = model(ids, attention_mask=attention, use_cache=False, labels=labels, fused_lm_head=True, **extra)
    answer_mask = answers[:, 1:] != -100
    logps = (out.log_probs * answer_mask).sum(-1)
    if orpo or trainer.loss_type in ("ipo", "simpo"):  # their average log-probability per answer token
        logps = logps / answer_mask.sum(-1)
    scored = out.label_mask
    if not orpo and trainer.cpo_alpha == 0:
        nll = torch.tensor(0.0, device=trainer.accelerator.device)
    else:  # cross-entropy averaged over the chosen rows' scored tokens
        nll = -out.log_probs[:n].sum() / scored[:n].sum()
    means = out.mean_logits
    result = (logps[:n], logps[n:], means[:n][scored[:n]], means[n:][scored[n:]], nll)
    return (*result, out.aux_loss) if trainer.aux_loss_enabled else result

