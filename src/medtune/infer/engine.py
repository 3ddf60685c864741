"""`ChatEngine`: messages in, (streamed) text out, rendered with the model's training template.

The prompt is built by `medtune.data.encode.prompt_ids`, the very function whose tokenisation
training used, and generation stops at the template's end-of-turn token as well as at EOS, so a
tuned model ends its answer where it learned to. Every front-end (terminal chat, OpenAI-compatible
API, web page, reports) goes through `submit`, which hands the request to one dynamic batcher:
concurrent requests share forward passes instead of queueing one at a time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from medtune.config import Config, GenerationConfig, ModelConfig
from medtune.data.encode import end_of_turn_ids, prompt_ids, special_tokens
from medtune.infer.batching import Batcher, Request
from medtune.infer.sampling import out_of_range
from medtune.registry import Registry

ENGINES = Registry("inference engine")


def make_engine(cfg: Config) -> Any:
    """The engine `serve.engine` names, for the config's model (front-ends call this); with `kb.index`
    set it grounds answers in that knowledge base (opened first: a bad index fails before the model loads)."""
    grounder = None
    if cfg.kb.index:
        from medtune.kb.ground import Grounder

        grounder = Grounder(cfg.kb)
    engine = ENGINES.get(cfg.serve.engine)(cfg)
    engine.grounder = grounder
    return engine


class EngineBase:
    """What every engine shares: template-rendered prompts and streaming on top of `submit`.
    Subclasses set tokenizer, template, stop, eos_ids, gen_cfg, name and context_length."""

    tokenizer: Any
    template: Any
    stop: str
    grounder: Any = None  # a medtune.kb.ground.Grounder when the config has kb.index

    def ground(self, messages: list[dict[str, str]], max_new_tokens: int | None = None) -> Any:
        """Retrieval for every front-end: the messages with passages in the last user turn (as many as
        keep the prompt and `max_new_tokens` within the context) and their citations."""
        from medtune.kb.ground import Grounded

        if self.grounder is None:
            return Grounded(messages)
        room = max_new_tokens or self.gen_cfg.max_new_tokens
        limit = getattr(self, "context_length", None)
        fits = (lambda m: len(self.prompt_ids(m)) + room <= limit) if limit else None
        return self.grounder.ground(messages, fits)

    def prompt_ids(self, messages: list[dict[str, str]], **variables: Any) -> list[int]:
        return prompt_ids(self.tokenizer, self.template, messages, **variables)

    def thinking(self, enable_thinking: bool | None = None) -> Any:
        """A ThinkSplit for this template's reasoning block (None when the template has none)."""
        if not getattr(self.template, "thinking", None):
            return None
        from medtune.infer.thinking import ThinkSplit

        variables = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        prompt = self.template.render([{"role": "user", "content": "?"}], special_tokens(self.tokenizer),
                                      add_generation_prompt=True, **variables)
        opened = self.template.thinking[0]
        return ThinkSplit(*self.template.thinking, inside=prompt.endswith(opened) or prompt.endswith(opened.strip()))

    def sampling(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Generation settings of one request: the config's, overridden by the request's (checked:
        front-ends that do not validate, and the config itself, cannot put a bad value into a batch)."""
        settings = {**vars(self.gen_cfg), **{k: v for k, v in overrides.items() if v is not None}}
        if bad := out_of_range(settings):
            from medtune.errors import ConfigError

            where = "generation." if bad[0] not in overrides or overrides[bad[0]] is None else ""
            raise ConfigError(where + bad[1])
        return settings

    def submit(self, messages: list[dict[str, str]], emit: Callable[[str | None], None], **overrides: Any) -> Request:
        raise NotImplementedError

    def stream(self, messages: list[dict[str, str]], **overrides: Any) -> Iterator[str]:
        """Yield the answer piece by piece; closing the iterator cancels the generation."""
        pieces: queue.Queue[str | None] = queue.Queue()
        request = self.submit(messages, pieces.put, **overrides)
        try:
            while (piece := pieces.get()) is not None:
                yield piece
        finally:
            request.cancel()

    def chat(self, messages: list[dict[str, str]], **overrides: Any) -> str:
        return self.clean("".join(self.stream(messages, **overrides)))

    def chat_many(self, conversations: list[list[dict[str, str]]], **overrides: Any) -> list[str]:
        """Answer several conversations at once: submitted together, they share batches."""
        parts: list[list[str]] = [[] for _ in conversations]
        done = [threading.Event() for _ in conversations]

        def emitter(i: int) -> Callable[[str | None], None]:
            return lambda piece: done[i].set() if piece is None else parts[i].append(piece)

        for i, messages in enumerate(conversations):
            self.submit(messages, emitter(i), **overrides)
        for event in done:
            event.wait()
        return [self.clean("".join(p)) for p in parts]

    def close(self) -> None:
        """Stop background work before the process exits (engines with a worker override this)."""

    def clean(self, text: str) -> str:
        # A multi-token end-of-turn string (e.g. a template whose stop is plain text) is cut here.
        return text.split(self.stop)[0].strip() if self.stop else text.strip()


class ChatEngine(EngineBase):
    def __init__(self, model_cfg: ModelConfig, gen_cfg: GenerationConfig, max_batch_size: int = 8,
                 max_wait_ms: float = 10.0) -> None:
        from medtune.model.load import load_model

        if bad := out_of_range(vars(gen_cfg)):  # before minutes of loading
            from medtune.errors import ConfigError

            raise ConfigError(f"generation.{bad[1]}")
        self.model, self.tokenizer, self.template = load_model(model_cfg)
        self.model.eval()
        self.gen_cfg = gen_cfg
        self.name = model_cfg.name_or_path
        self.stop = self.template.stop_string(special_tokens(self.tokenizer))
        self.eos_ids = end_of_turn_ids(self.tokenizer, self.template)
        self.context_length = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        self.batcher = Batcher(self.model, self.tokenizer, self.eos_ids, max_batch_size, max_wait_ms)

    def stats(self) -> dict[str, int]:
        return {"queued": self.batcher.pending.qsize(), "active": self.batcher.active}

    def close(self) -> None:
        self.batcher.close()

    def submit(self, messages: list[dict[str, str]], emit: Callable[[str | None], None],
               **overrides: Any) -> Request:
        """Queue a generation; `emit` receives text deltas, then None when it is finished."""
        g = self.sampling(overrides)
        params = {k: g[k] for k in ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty",
                                    "num_beams", "min_new_tokens")}
        variables = {} if g.get("enable_thinking") is None else {"enable_thinking": g["enable_thinking"]}
        request = Request(ids=self.prompt_ids(messages, **variables), params=params, max_new_tokens=g["max_new_tokens"],
                          emit=emit, seed=g["seed"])
        return self.batcher.submit(request)


@ENGINES.register("hf", "transformers generate with dynamic batching (CPU or GPU)")
def _hf(cfg: Config) -> ChatEngine:
    return ChatEngine(cfg.model, cfg.generation, cfg.serve.max_batch_size, cfg.serve.max_wait_ms)


@ENGINES.register("vllm", "vLLM continuous batching and paged attention (CUDA GPUs; pip install vllm)")
def _vllm(cfg: Config) -> Any:
    from medtune.infer.vllm_engine import VllmEngine

    return VllmEngine(cfg.model, cfg.generation)
