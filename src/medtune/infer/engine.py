"""`ChatEngine`: messages in, (streamed) text out, rendered with the model's training template.

The prompt is built by `medtune.data.encode.prompt_ids`, the very function whose tokenisation
training used, and generation stops at the template's end-of-turn token as well as at EOS, so a
tuned model ends its answer where it learned to.
"""

from __future__ import annotations

from collections.abc import Iterator
from threading import Thread
from typing import Any

from medtune.config import GenerationConfig, ModelConfig
from medtune.data.encode import end_of_turn_ids, prompt_ids, special_tokens


class ChatEngine:
    def __init__(self, model_cfg: ModelConfig, gen_cfg: GenerationConfig) -> None:
        from medtune.model.load import load_model

        self.model, self.tokenizer, self.template = load_model(model_cfg)
        self.model.eval()
        self.gen_cfg = gen_cfg
        self.stop = self.template.stop_string(special_tokens(self.tokenizer))
        self.eos_ids = end_of_turn_ids(self.tokenizer, self.template)

    def generation_kwargs(self, **overrides: Any) -> dict[str, Any]:
        g = {**vars(self.gen_cfg), **overrides}
        kwargs = dict(max_new_tokens=g["max_new_tokens"], min_new_tokens=g["min_new_tokens"],
                      num_beams=g["num_beams"], repetition_penalty=g["repetition_penalty"],
                      do_sample=g["do_sample"], eos_token_id=self.eos_ids,
                      pad_token_id=self.tokenizer.pad_token_id)
        if g["do_sample"]:
            kwargs.update(temperature=g["temperature"], top_p=g["top_p"], top_k=g["top_k"])
        else:  # greedy/beam: unset sampling knobs so transformers does not warn about them
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def stream(self, messages: list[dict[str, str]], **overrides: Any) -> Iterator[str]:
        """Yield the answer piece by piece (beam search cannot stream: it yields once)."""
        import torch
        from transformers import TextIteratorStreamer

        ids = torch.tensor([prompt_ids(self.tokenizer, self.template, messages)])
        kwargs = self.generation_kwargs(**overrides)
        torch.manual_seed({**vars(self.gen_cfg), **overrides}["seed"])
        if kwargs["num_beams"] > 1:
            with torch.no_grad():
                out = self.model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
            yield self.clean(self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
            return
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        thread = Thread(target=self.model.generate,
                        kwargs=dict(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer, **kwargs))
        thread.start()
        for piece in streamer:
            if piece:
                yield piece
        thread.join()

    def chat(self, messages: list[dict[str, str]], **overrides: Any) -> str:
        return self.clean("".join(self.stream(messages, **overrides)))

    def clean(self, text: str) -> str:
        # A multi-token end-of-turn string (e.g. a template whose stop is plain text) is cut here.
        return text.split(self.stop)[0].strip() if self.stop else text.strip()
