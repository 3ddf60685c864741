"""A model behind an OpenAI-compatible chat API as something `medtune eval` can ask questions.

It answers `chat_many` the way the local engines do (conversations in, answers out), through
synth's client: its concurrency limit, pacing, retries with backoff, API key from the
environment, and token counters, so a hosted model's evaluation reports what it cost. Decoding is
greedy (temperature 0), as for the local models. It has no weights here, so the log-likelihood
modes cannot score it: a chat API returns no log-probabilities of text it did not generate.
"""

from __future__ import annotations

import asyncio
from typing import Any

from medtune.config import ApiModelConfig
from medtune.synth.client import Client, Usage

NO_LOGLIK = "an OpenAI-compatible chat API returns no log-probabilities of given text (prompt logprobs)"


class EndpointEngine:
    def __init__(self, api: ApiModelConfig, section: str) -> None:
        self.api, self.section = api, section
        self.name = api.model or api.base_url
        self.resolved = api.model
        self.usage = Usage()

    def chat_many(self, conversations: list[list[dict[str, str]]], max_new_tokens: int = 256,
                  **_: Any) -> list[str]:
        return asyncio.run(self._many(conversations, max_new_tokens))

    def resolve(self) -> str:
        """The model id the server answers with (configured, else the first it lists): asked once."""
        if not self.resolved:
            asyncio.run(self._many([], 1))
        return self.name

    async def _many(self, conversations: list[list[dict[str, str]]], max_new_tokens: int) -> list[str]:
        client = Client(self.api, self.api, max_new_tokens, 0.0, self.section)
        client.usage = self.usage  # one counter over every call of the run
        client.model = self.resolved
        try:
            self.name = self.resolved = await client.resolve_model()  # asked once: the model the server lists
            return [a.strip() for a in await asyncio.gather(*(client.chat(c, max_new_tokens) for c in conversations))]
        finally:
            await client.close()

    def close(self) -> None:
        pass
