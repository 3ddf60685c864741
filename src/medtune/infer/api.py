"""`medtune serve CONFIG`: an OpenAI-compatible HTTP API over the ChatEngine (FastAPI + uvicorn).

    GET  /health                 liveness, queue and batch occupancy
    GET  /v1/models              the one model served
    POST /v1/chat/completions    with or without "stream": true (server-sent events, OpenAI chunks)
    POST /v1/retrieve            with kb.index: the knowledge base's passages for a query

With kb.index set, answers are grounded in retrieved passages and carry them as `citations`: an
extension field on the message (and on the delta of the last stream chunk).

Bad requests get OpenAI-style JSON errors and never take the server down: 400 for malformed JSON and
invalid requests (unknown role, empty messages, max_tokens above the cap, a prompt beyond the context
length), 413 for an oversized body, 422 for fields of the wrong type, 401 without the API key when
one is configured. A client that disconnects mid-stream cancels its generation, freeing its batch row.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import re
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from medtune.config import ServeConfig
from medtune.infer.engine import EngineBase, make_engine
from medtune.infer.sampling import out_of_range
from medtune.infer.stops import StopText

ROLES = {"system", "user", "assistant"}
# OpenAI request fields we honour (others, like `tools`, are refused rather than ignored).
FIELDS: dict[str, tuple[type, ...]] = {
    "model": (str,), "messages": (list,), "stream": (bool,), "max_tokens": (int,),
    "max_completion_tokens": (int,), "temperature": (int, float), "top_p": (int, float), "top_k": (int,),
    "repetition_penalty": (int, float), "seed": (int,), "user": (str,), "stream_options": (dict,),
    "stop": (str, list), "n": (int,), "enable_thinking": (bool,), "chat_template_kwargs": (dict,),
}
MAX_STOP = 4


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body_dict(self) -> dict[str, Any]:
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error",
                500: "server_error"}.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body_dict(), status_code=self.status)


PUBLIC = {"/health"}


class KeyCheck:
    """Every route needs the key when one is set, except /health (load balancers and probes call it; it
    shows only status and queue counts). Compared in constant time. A plain ASGI middleware: Starlette's
    BaseHTTPMiddleware would hide client disconnects from the route (no cancelling abandoned requests)."""

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC:
            sent = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(sent, self.expected):
                response = ApiError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                                    code="invalid_api_key").response()
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit`: from Content-Length
    before reading anything, else while streaming it (never a 100 MB body held in memory)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"Request body of {declared} bytes exceeds the limit of {limit}.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"Request body of more than {limit} bytes exceeds the limit of {limit}.")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(engine: EngineBase, cfg: ServeConfig) -> FastAPI:
    app = FastAPI(title="medtune", docs_url=None, redoc_url=None)
    model_id = cfg.model_name or Path(engine.name).name or "medtune"
    api_key = os.environ.get(cfg.api_key_env) or None
    inflight = {"n": 0}  # chat requests accepted and not yet finished (serve.max_queue backpressure)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        # Unknown routes and methods answer in OpenAI's error shape too, so clients can show the message.
        message = {404: f"Unknown route {request.url.path}. Routes: /v1/chat/completions, /v1/retrieve, /v1/models, /health.",
                   405: f"Method {request.method} is not allowed on {request.url.path}."}.get(e.status_code, str(e.detail))
        return ApiError(e.status_code, message, code={404: "not_found", 405: "method_not_allowed"}.get(e.status_code)).response()

    if api_key:
        app.add_middleware(KeyCheck, key=api_key)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, **engine.stats()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "medtune"}]}

    @app.post("/v1/retrieve")
    async def retrieve(request: Request) -> dict[str, Any]:
        """The knowledge base's top passages for a query, for clients that build their own prompts."""
        body = await read_body(request, cfg.max_request_bytes)
        query, top_k = parse_retrieve(body, engine)
        hits = await asyncio.to_thread(engine.grounder.retrieve, query, top_k)
        return {"object": "list", "query": query, "retriever": engine.grounder.cfg.retriever,
                "data": [{"n": n, **h.citation()} for n, h in enumerate(hits, 1)]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await read_body(request, cfg.max_request_bytes)
        # Parsing tokenises the prompt (a near-1 MB prompt takes a while): off the event loop, so /health
        # and the streams of other clients keep moving.
        req = await asyncio.to_thread(parse_request, body, cfg, engine)
        if cfg.max_queue is not None and inflight["n"] >= cfg.max_queue:
            e = ApiError(429, f"Server busy: {cfg.max_queue} requests queued or running (serve.max_queue). "
                              "Retry after a moment.", code="rate_limit_exceeded")
            response = e.response()
            response.headers["Retry-After"] = "1"
            return response
        messages = req["messages"]
        notice = red_flag_notice(messages, cfg)
        gen = {k: req.get(k) for k in ("temperature", "top_p", "top_k", "repetition_penalty", "seed", "enable_thinking")}
        if req.get("temperature") is not None:
            gen["do_sample"] = req["temperature"] > 0
            if req["temperature"] == 0:
                gen["temperature"] = None
        gen["max_new_tokens"] = req["max_tokens"]
        prompt_tokens = req["prompt_tokens"]
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        handle = await asyncio.to_thread(engine.submit, messages,
                                         lambda p: loop.call_soon_threadsafe(pieces.put_nowait, p), **gen)
        inflight["n"] += 1
        created, rid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:24]}"

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                          "model": model_id, "choices": [{"index": 0, "delta": delta,
                                                                          "finish_reason": finish}]},
                                         ensure_ascii=False) + "\n\n"

        def usage() -> dict[str, int]:
            n = len(handle.tokens)
            return {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}

        stopper = StopText(req["stop"])
        thinking = req["enable_thinking"] if req["enable_thinking"] is not None else engine.gen_cfg.enable_thinking
        thinker = engine.thinking(thinking) if cfg.reasoning == "separate" else None

        async def answer_pieces():
            """The model's deltas, cut at the first stop string (which cancels the generation)."""
            while (piece := await pieces.get()) is not None:
                if text := stopper.feed(piece):
                    yield text
                if stopper.hit:
                    handle.cancel()
                    return
            if tail := stopper.flush():
                yield tail

        def finish() -> str:
            return "stop" if stopper.hit else _finish(handle.finish_reason)

        def failed() -> bool:
            return (handle.finish_reason or "").startswith("error")

        def failure() -> ApiError:
            return ApiError(500, f"Generation failed: {handle.finish_reason.removeprefix('error: ')}",
                            code="generation_error")

        if req.get("stream"):
            async def events():
                try:
                    yield chunk({"role": "assistant", "content": ""})
                    if notice:
                        yield chunk({"content": notice + "\n\n"})
                    async for piece in answer_pieces():
                        for field, text in thinker.feed(piece) if thinker else [("content", piece)]:
                            yield chunk({field: text})
                    for field, text in thinker.flush() if thinker else []:
                        yield chunk({field: text})
                    if failed():  # a generation error is an error event, never a normal stop
                        yield "data: " + json.dumps(failure().body_dict(), ensure_ascii=False) + "\n\n"
                        yield "data: [DONE]\n\n"
                        return
                    if cfg.disclaimer.enabled:
                        yield chunk({"content": "\n\n" + cfg.disclaimer.text})
                    yield chunk({"citations": req["citations"]} if engine.grounder else {}, finish())
                    if (req.get("stream_options") or {}).get("include_usage"):
                        yield "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                                     "model": model_id, "choices": [], "usage": usage()}) + "\n\n"
                    yield "data: [DONE]\n\n"
                finally:  # the client went away (or we are done): free the batch row
                    handle.cancel()
                    inflight["n"] -= 1

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        parts: list[str] = []

        async def collect() -> None:
            async for piece in answer_pieces():
                parts.append(piece)

        task = asyncio.create_task(collect())
        try:
            while not task.done():  # a client that goes away cancels its generation, as a stream does
                await asyncio.wait({task}, timeout=0.25)
                if not task.done() and await request.is_disconnected():
                    task.cancel()
                    return JSONResponse({"error": {"message": "client disconnected"}}, status_code=499)
            task.result()
        finally:
            handle.cancel()
            inflight["n"] -= 1
        if failed():
            raise failure()
        text = engine.clean("".join(parts))
        reasoning = None
        if thinker:
            reasoning, text = thinker.whole(text)
        if notice:
            text = notice + "\n\n" + text
        if cfg.disclaimer.enabled:
            text += "\n\n" + cfg.disclaimer.text
        return {"id": rid, "object": "chat.completion", "created": created, "model": model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                                     **({"reasoning_content": reasoning} if thinker else {}),
                                                     **({"citations": req["citations"]} if engine.grounder else {})},
                             "finish_reason": finish()}], "usage": usage()}

    return app


def parse_request(body: bytes, cfg: ServeConfig, engine: EngineBase) -> dict[str, Any]:
    """Validate a chat-completions body; raise ApiError with the OpenAI status and a precise message."""
    try:
        req = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"Request body is not valid JSON: {e}.") from None
    except RecursionError:
        raise ApiError(400, "Request body is nested too deeply to be a chat request.") from None
    if not isinstance(req, dict):
        raise ApiError(400, "Request body must be a JSON object.")
    for key, value in req.items():
        if key not in FIELDS:
            raise ApiError(400, f"Unsupported field {key!r}. Supported: {', '.join(FIELDS)}.", param=key)
        if value is not None and (not isinstance(value, FIELDS[key]) or (isinstance(value, bool) and bool not in FIELDS[key])):
            raise ApiError(422, f"Field {key!r} must be of type {' or '.join(t.__name__ for t in FIELDS[key])}.",
                           param=key)
    messages = req.get("messages")
    if not messages:
        raise ApiError(400, "'messages' must be a non-empty list.", param="messages")
    contents = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(422, f"messages[{i}] must be an object with 'role' and 'content'.", param=f"messages[{i}]")
        if m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}].role {m.get('role')!r} is not one of {sorted(ROLES)}.",
                           param=f"messages[{i}].role")
        contents.append(_content(m.get("content"), i))
    req["messages"] = [{"role": m["role"], "content": c} for m, c in zip(messages, contents, strict=True)]
    if req["messages"][-1]["role"] != "user":
        raise ApiError(400, "The last message must come from the user.", param="messages")
    if bad := out_of_range(req):
        raise ApiError(400, bad[1], param=bad[0])
    if req.get("n") not in (None, 1):
        raise ApiError(400, f"n={req['n']}: this server returns one choice per request; send n=1 (or omit it) and "
                            "repeat the request for more samples.", param="n")
    stop = req.get("stop")
    stops = [stop] if isinstance(stop, str) else (stop or [])
    if len(stops) > MAX_STOP or any(not isinstance(x, str) or not x for x in stops):
        raise ApiError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOP} non-empty strings.",
                       param="stop")
    req["stop"] = stops
    max_tokens = next((req[k] for k in ("max_completion_tokens", "max_tokens") if req.get(k) is not None),
                      engine.gen_cfg.max_new_tokens)
    if not 1 <= max_tokens <= cfg.max_tokens_cap:
        raise ApiError(400, f"max_tokens={max_tokens} is outside 1..{cfg.max_tokens_cap} (serve.max_tokens_cap).",
                       param="max_tokens")
    req["max_tokens"] = max_tokens
    thinking = req.get("enable_thinking", (req.get("chat_template_kwargs") or {}).get("enable_thinking"))
    if thinking is not None and not isinstance(thinking, bool):
        raise ApiError(422, "'chat_template_kwargs.enable_thinking' must be true or false.", param="chat_template_kwargs")
    if unknown := sorted(set(req.get("chat_template_kwargs") or {}) - {"enable_thinking"}):
        raise ApiError(400, f"chat_template_kwargs.{unknown[0]} is not supported (only enable_thinking).",
                       param="chat_template_kwargs")
    req["enable_thinking"] = thinking
    grounded = engine.ground(req["messages"], max_tokens)  # kb.index: passages into the last user turn
    req["messages"], req["citations"] = grounded.messages, grounded.citations
    thinking = thinking if thinking is not None else engine.gen_cfg.enable_thinking
    variables = {} if thinking is None else {"enable_thinking": thinking}
    prompt = req["prompt_tokens"] = len(engine.prompt_ids(req["messages"], **variables))
    if engine.context_length and prompt + max_tokens > engine.context_length:
        raise ApiError(400, f"The prompt has {prompt} tokens; with max_tokens={max_tokens} it exceeds the model's "
                            f"context length of {engine.context_length}. Shorten the conversation.",
                       param="messages", code="context_length_exceeded")
    return req


def parse_retrieve(body: bytes, engine: EngineBase) -> tuple[str, int | None]:
    """A /v1/retrieve body: {"query": str, "top_k": int (optional)}."""
    if engine.grounder is None:
        raise ApiError(404, "This server has no knowledge base: start it with kb.index set (built by `medtune kb`).",
                       code="no_knowledge_base")
    try:
        req = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ApiError(400, f"Request body is not valid JSON: {e}.") from None
    if not isinstance(req, dict):
        raise ApiError(400, "Request body must be a JSON object with 'query'.")
    if unknown := sorted(set(req) - {"query", "top_k"}):
        raise ApiError(400, f"Unsupported field {unknown[0]!r}. Supported: query, top_k.", param=unknown[0])
    query, top_k = req.get("query"), req.get("top_k")
    if not isinstance(query, str) or not query.strip():
        raise ApiError(400 if query is None or isinstance(query, str) else 422, "'query' must be a non-empty string.",
                       param="query")
    limit = engine.grounder.cfg.max_query_chars
    if len(query) > limit:
        raise ApiError(400, f"'query' has {len(query)} characters; the limit is {limit} (kb.max_query_chars). "
                            "Send the question, not the whole record.", param="query")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 50):
        raise ApiError(400, "'top_k' must be an integer from 1 to 50.", param="top_k")
    return query, top_k


def _content(value: Any, i: int) -> str:
    """A message's content: a string, or a list of text parts (what newer OpenAI clients send), joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
        if all(p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
            return "".join(p["text"] for p in value)
        kinds = sorted({str(p.get("type")) for p in value} - {"text"})
        raise ApiError(400, f"messages[{i}].content has parts of type {kinds}; this model reads text parts only.",
                       param=f"messages[{i}].content")
    raise ApiError(422, f"messages[{i}].content must be a string or a list of text parts.",
                   param=f"messages[{i}].content")


@lru_cache(maxsize=1)
def _red_flags() -> tuple[str, list[re.Pattern[str]]]:
    data = yaml.safe_load((Path(__file__).parent / "red_flags.yaml").read_text(encoding="utf-8"))
    return data["notice"], [re.compile(p) for p in data["patterns"]]


def red_flag_notice(messages: list[dict[str, str]], cfg: ServeConfig) -> str | None:
    """The emergency notice for red-flag symptoms in the last user message (when enabled)."""
    if not (cfg.disclaimer.enabled and cfg.disclaimer.red_flags):
        return None
    notice, patterns = _red_flags()
    text = messages[-1]["content"]
    for pattern in patterns:
        if m := pattern.search(text):
            return notice.format(match=m.group(0))
    return None


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def run(cfg: Any) -> None:
    """Load the model once and serve until interrupted (the port is checked first: loading takes minutes)."""
    import uvicorn

    s = cfg.serve
    check_port(s.host, s.port)
    uvicorn.run(create_app(make_engine(cfg), s), host=s.host, port=s.port, log_level="info")


def check_port(host: str, port: int) -> None:
    """Fail before loading the model when the address is taken or cannot be bound."""
    import socket

    from medtune.errors import MedtuneError

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, port))
    except OSError as e:
        raise MedtuneError(f"Cannot listen on {host}:{port} ({e.strerror or e}): another server (perhaps an earlier "
                           "medtune serve/webui) is using it. Stop it, or pick another port with serve.port=N.") from None
