"""Tokenise conversations with exact label masks.

The conversation is rendered once with its chat template and tokenised as one string, which is
precisely what a server feeds the model for the same messages (no segment-wise tokenisation that
could split differently at turn boundaries). Which tokens carry loss is decided by character
spans: for each supervised assistant turn, the span runs from the end of the rendered prompt
(`render(messages[:i], add_generation_prompt=True)`) to the end of the turn's end-of-turn string,
so the model learns to stop. Everything else gets label -100.
"""

from __future__ import annotations

from typing import Any

from medtune.data.templates import ChatTemplate, TemplateError

IGNORE_INDEX = -100


def special_tokens(tokenizer: Any) -> dict[str, str]:
    """The special-token strings a template may use (bos_token, eos_token, ...)."""
    return {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}


def label_policy(mask: str, thinking: str = "keep") -> str:
    """data.mask and data.thinking as the one policy string the encoders and the cache key carry:
    "all", "last", "all+thinking-mask", "last+thinking-drop"."""
    if thinking not in THINKING:
        from medtune.errors import ConfigError

        raise ConfigError(f"data.thinking must be one of {', '.join(THINKING)}; got {thinking!r}.")
    return mask if thinking == "keep" else f"{mask}+thinking-{thinking}"


THINKING = ("keep", "drop", "mask")


def assistant_spans(template: ChatTemplate, messages: list[dict[str, str]], specials: dict[str, str],
                    mask: str = "all") -> tuple[str, list[tuple[int, int]]]:
    """Render `messages`; return the text and the [start, end) character spans that carry loss.

    `mask` is a `label_policy`: which assistant turns (all / last) and what happens to their reasoning
    (`reasoning_content`, rendered by a thinking template): kept and learned, dropped from the text
    (the template's empty thinking block is rendered, as at serving with enable_thinking=false), or kept
    in the text without loss (the span starts after the template's thinking-close string)."""
    mask, _, thinking = mask.partition("+thinking-")
    if thinking == "drop":
        messages = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in messages]
    text = template.render(messages, specials)
    stop = template.stop_string(specials)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if mask == "last":
        turns = turns[-1:]
    spans = []
    for i in turns:
        prompt = template.render(messages[:i], specials, add_generation_prompt=True)
        # The last turn's rendering is the full text: no need to render it twice.
        upto = text if i == len(messages) - 1 else template.render(messages[: i + 1], specials)
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise TemplateError(
                f"Template {template.name!r} is not prefix-stable at turn {i}: rendering fewer messages "
                "does not give a prefix of the full conversation, so prompt and answer cannot be "
                "separated. Fix the template (the generation prompt must equal how an assistant turn starts)."
            )
        end = upto.rfind(stop)
        end = end + len(stop) if end >= len(prompt) else len(upto)
        start = len(prompt)
        if thinking == "mask" and template.thinking and (close := upto.find(template.thinking[1], start, end)) >= 0:
            start = close + len(template.thinking[1])  # the reasoning is context, the answer is learned
        spans.append((start, end))
    return text, spans


def encode_messages(tokenizer: Any, template: ChatTemplate, messages: list[dict[str, str]],
                    max_length: int, mask: str = "all") -> dict[str, list[int]] | None:
    """input_ids / attention_mask / labels for one conversation; None if nothing supervised fits."""
    text, spans = assistant_spans(template, messages, special_tokens(tokenizer), mask)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [tok if any(s <= start < e for s, e in spans) else IGNORE_INDEX
              for tok, (start, _) in zip(ids, offsets, strict=True)]
    ids, labels = ids[:max_length], labels[:max_length]
    if all(lab == IGNORE_INDEX for lab in labels):
        return None
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def prompt_ids(tokenizer: Any, template: ChatTemplate, messages: list[dict[str, str]], **variables: Any) -> list[int]:
    """Token ids a server feeds the model to answer `messages` (the same tokenisation as training);
    `variables` are the template's switches (enable_thinking)."""
    text = template.render(messages, special_tokens(tokenizer), add_generation_prompt=True, **variables)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def end_of_turn_ids(tokenizer: Any, template: ChatTemplate) -> list[int]:
    """Token ids that end generation: EOS plus the template's end-of-turn token (when it is one token)."""
    stop = template.stop_string(special_tokens(tokenizer))
    stop_ids = tokenizer(stop, add_special_tokens=False)["input_ids"] if stop else []
    return sorted({tokenizer.eos_token_id, *(stop_ids if len(stop_ids) == 1 else [])})
