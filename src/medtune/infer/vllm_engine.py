"""`serve.engine: vllm`: the same ChatEngine contract on vLLM, for CUDA GPUs.

vLLM does the scheduling (continuous batching, paged attention); medtune keeps what must not
change between training and serving: the prompt is rendered and tokenised by medtune's template
code and handed to vLLM as token ids (vLLM never applies a chat template of its own), and the
template's end-of-turn token is a stop token. LoRA adapters are served by vLLM's LoRA support
(one adapter; stack several by exporting a merged model first). Not exercised on this project's
CPU machines: its test carries the `gpu` marker.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable
from typing import Any

from medtune.config import GenerationConfig, ModelConfig
from medtune.data.encode import end_of_turn_ids, special_tokens
from medtune.data.templates import load_template
from medtune.errors import ConfigError, MedtuneError
from medtune.infer.batching import Request
from medtune.infer.engine import EngineBase
from medtune.model.load import check_adapter, load_tokenizer, resolve_model_path


class VllmEngine(EngineBase):
    def __init__(self, model_cfg: ModelConfig, gen_cfg: GenerationConfig) -> None:
        import torch

        if not torch.cuda.is_available():
            raise MedtuneError("serve.engine=vllm needs a CUDA GPU; on this machine use serve.engine=hf.")
        try:
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError:
            raise MedtuneError("serve.engine=vllm needs vLLM: pip install vllm (on a CUDA machine).") from None
        if len(model_cfg.adapters) > 1:
            raise ConfigError("vLLM serves one LoRA adapter: `medtune export` the stack into one model first.")
        for adapter in model_cfg.adapters:
            check_adapter(adapter, model_cfg.template)
        path = resolve_model_path(model_cfg.name_or_path)
        self.template = load_template(model_cfg.template)
        self.tokenizer = load_tokenizer(path, self.template, model_cfg.trust_remote_code)
        self.gen_cfg, self.name = gen_cfg, model_cfg.name_or_path
        self.stop = self.template.stop_string(special_tokens(self.tokenizer))
        self.eos_ids = end_of_turn_ids(self.tokenizer, self.template)
        self.adapter = model_cfg.adapters[0] if model_cfg.adapters else None
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="medtune-vllm", daemon=True).start()
        args = AsyncEngineArgs(model=path, dtype=model_cfg.dtype if model_cfg.dtype != "float32" else "auto",
                               enable_lora=self.adapter is not None, max_lora_rank=256,
                               trust_remote_code=model_cfg.trust_remote_code)
        self.llm = asyncio.run_coroutine_threadsafe(_build(AsyncLLM, args), self.loop).result()
        self.context_length = self.llm.model_config.max_model_len
        self.ids = itertools.count()
        self.running = 0

    def stats(self) -> dict[str, int]:
        return {"queued": 0, "active": self.running}

    def submit(self, messages: list[dict[str, str]], emit: Callable[[str | None], None], **overrides: Any) -> Request:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        g = self.sampling(overrides)
        params = SamplingParams(
            max_tokens=g["max_new_tokens"], min_tokens=g["min_new_tokens"], stop_token_ids=self.eos_ids,
            temperature=g["temperature"] if g["do_sample"] else 0.0, top_p=g["top_p"] if g["do_sample"] else 1.0,
            top_k=g["top_k"] if g["do_sample"] else -1, repetition_penalty=g["repetition_penalty"], seed=g["seed"],
            skip_special_tokens=True)
        rid = f"medtune-{next(self.ids)}"
        lora = LoRARequest("adapter", 1, self.adapter) if self.adapter else None
        request = Request(ids=self.prompt_ids(messages), params={}, max_new_tokens=g["max_new_tokens"], emit=emit)
        request.on_cancel = lambda: asyncio.run_coroutine_threadsafe(self.llm.abort(rid), self.loop)

        async def run() -> None:
            self.running += 1
            try:
                async for out in self.llm.generate({"prompt_token_ids": request.ids}, params, request_id=rid,
                                                   lora_request=lora):
                    result = out.outputs[0]
                    delta, request.text, request.tokens = result.text[len(request.text):], result.text, list(result.token_ids)
                    if delta:
                        emit(delta)
                    if out.finished:
                        request.finish_reason = "stop" if result.finish_reason == "stop" else "length"
            finally:
                self.running -= 1
                request.finish_reason = request.finish_reason or "cancelled"
                emit(None)

        asyncio.run_coroutine_threadsafe(run(), self.loop)
        return request


async def _build(cls: Any, args: Any) -> Any:
    return cls.from_engine_args(args)
