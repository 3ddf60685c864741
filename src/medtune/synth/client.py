"""Chat completions against any OpenAI-compatible endpoint, politely and countably.

The official `openai` client does the HTTP; this wrapper adds what a long synthesis run needs:
a concurrency limit, an optional requests-per-minute pace, retries with exponential backoff (and
jitter, honouring Retry-After) on the errors that pass — 429, 5xx, timeouts, refused connections —
and counters for requests, retries and tokens. Other errors (401, 404, 400) are the user's to fix
and stop the run with the server's message. The API key comes from an environment variable and is
never logged or written anywhere.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

from medtune.config import EndpointConfig
from medtune.errors import MedtuneError

log = logging.getLogger(__name__)


class EndpointError(MedtuneError):
    """The endpoint refused a request for a reason retrying cannot fix, or kept failing."""


@dataclass
class Usage:
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def cost(self, cfg: Any) -> float:
        """In the currency of `cfg`'s price_per_1k_prompt / price_per_1k_completion."""
        return (self.prompt_tokens * cfg.price_per_1k_prompt + self.completion_tokens * cfg.price_per_1k_completion) / 1000

    def as_dict(self, cfg: Any) -> dict[str, Any]:
        return {"requests": self.requests, "retries": self.retries, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "errors": dict(self.errors), "cost": self.cost(cfg)}


class Client:
    """`policy` has the pacing knobs (concurrency, max_retries, backoff, requests_per_minute): a
    SynthConfig or an eval model's / judge's ApiModelConfig. `section` names it in messages."""

    def __init__(self, ep: EndpointConfig, policy: Any, max_tokens: int, temperature: float,
                 section: str = "synth") -> None:
        try:
            from openai import AsyncOpenAI
        except ImportError:
            raise MedtuneError("talking to an endpoint needs the openai client: pip install 'medtune[synth]'.") \
                from None

        # Local servers need no key; the client library insists on a string.
        self.api = AsyncOpenAI(base_url=ep.base_url, api_key=os.environ.get(ep.api_key_env) or "EMPTY",
                               timeout=ep.timeout, max_retries=0)
        self.ep, self.cfg, self.model, self.section = ep, policy, ep.model, section
        self.max_tokens, self.temperature = max_tokens, temperature
        self.usage = Usage()
        self.slots = asyncio.Semaphore(max(1, policy.concurrency))
        self.pace = asyncio.Lock()
        self.next_start = 0.0

    async def resolve_model(self) -> str:
        """The configured model id, else the first one the server lists (what `medtune serve` serves)."""
        if not self.model:
            models = await self._call(self.api.models.list)
            if not models.data:
                raise EndpointError(f"{self.ep.base_url}/models lists no model; set {self.section}.endpoint.model.")
            self.model = models.data[0].id
        return self.model

    async def chat(self, messages: list[dict[str, str]], max_tokens: int | None = None) -> str:
        async with self.slots:
            await self._wait_turn()
            response = await self._call(self.api.chat.completions.create, model=self.model, messages=messages,
                                        max_tokens=max_tokens or self.max_tokens, temperature=self.temperature)
        if response.usage:
            self.usage.prompt_tokens += response.usage.prompt_tokens or 0
            self.usage.completion_tokens += response.usage.completion_tokens or 0
        return response.choices[0].message.content or ""

    async def close(self) -> None:
        await self.api.close()

    async def _wait_turn(self) -> None:
        if not self.cfg.requests_per_minute:
            return
        async with self.pace:
            delay = self.next_start - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.next_start = max(self.next_start, time.monotonic()) + 60.0 / self.cfg.requests_per_minute

    async def _call(self, fn: Any, **kwargs: Any) -> Any:
        import openai

        for attempt in range(self.cfg.max_retries + 1):
            self.usage.requests += 1
            try:
                return await fn(**kwargs)
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError) as e:
                kind = type(e).__name__
                self.usage.errors[kind] = self.usage.errors.get(kind, 0) + 1
                if attempt == self.cfg.max_retries:
                    raise EndpointError(f"{self.ep.base_url}: still failing after {attempt} retries "
                                        f"({kind}: {_message(e)}). Is the server up? Raise {self.section}."
                                        f"max_retries or lower {self.section}.concurrency.") from None
                wait = _retry_after(e) or self.cfg.backoff * 2 ** attempt * (0.5 + random.random())
                self.usage.retries += 1
                log.info("%s (%s); retry %d in %.1f s", kind, _message(e), attempt + 1, wait)
                await asyncio.sleep(wait)
            except openai.APIStatusError as e:
                raise EndpointError(f"{self.ep.base_url} answered {e.status_code}: {_message(e)}"
                                    + (f" Is {self.ep.api_key_env} set to the right key?"
                                       if e.status_code == 401 else "")) from None
        raise AssertionError("unreachable")


def _message(e: Exception) -> str:
    body = getattr(e, "body", None)
    err = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(err, dict) and "message" in err:
        return str(err["message"])
    text = str(e)
    return text.splitlines()[0] if text else type(e).__name__


def _retry_after(e: Exception) -> float | None:
    response = getattr(e, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value else None
    except ValueError:
        return None
