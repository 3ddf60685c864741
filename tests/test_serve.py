"""The OpenAI-compatible API, live on 127.0.0.1, driven by the official openai client."""

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import httpx
import pytest
from conftest import QA, ROOT

from medtune.cli import main
from medtune.config import load_config

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

CFG = str(ROOT / "configs/tiny/sft_lora.yaml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, *extra: str):
    import uvicorn

    from medtune.infer.api import create_app
    from medtune.infer.engine import ChatEngine

    os.environ["MEDTUNE_TEST_KEY"] = "sekret"
    cfg = load_config(CFG, [f"model.name_or_path={model}", "generation.do_sample=false",
                            "generation.max_new_tokens=32", "generation.repetition_penalty=1.0",
                            "serve.api_key_env=MEDTUNE_TEST_KEY", "serve.max_tokens_cap=1000",
                            "serve.max_request_bytes=20000", "serve.max_wait_ms=50", *extra])
    engine = ChatEngine(cfg.model, cfg.generation, max_batch_size=8, max_wait_ms=50)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(engine, cfg.serve), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    return srv, thread, SimpleNamespace(url=url, engine=engine, cfg=cfg, trained=model,
                                        client=openai.OpenAI(base_url=url + "/v1", api_key="sekret", max_retries=0))


@contextmanager
def serving(model: str, *extra: str):
    """`medtune serve`'s app for `model` (+ config overrides) on 127.0.0.1 for the length of the block."""
    srv, thread, handle = start_server(model, *extra)
    try:
        yield handle
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(trained):
    with serving(str(trained)) as handle:
        yield handle


@pytest.fixture(scope="module")
def chatty_server():
    """The untrained random tiny model: it rarely emits an end-of-turn token, so it talks until stopped."""
    with serving("tiny:llama") as handle:
        yield handle


def ask(q):
    return [{"role": "user", "content": q}]


def test_models_and_health(server):
    assert [m.id for m in server.client.models.list().data] == [os.path.basename(server.trained)]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_non_streaming_answer_stops_at_the_trained_end_of_turn(server):
    reply = server.client.chat.completions.create(model="x", messages=ask("头痛怎么办？"), max_tokens=32)
    choice = reply.choices[0]
    assert choice.message.content == QA["头痛怎么办？"] and choice.finish_reason == "stop"
    prompt = len(server.engine.prompt_ids(ask("头痛怎么办？")))
    answer_tokens = len(server.engine.tokenizer(QA["头痛怎么办？"], add_special_tokens=False)["input_ids"])
    assert reply.usage.prompt_tokens == prompt and reply.usage.completion_tokens == answer_tokens


def test_streaming_gives_the_same_text_as_the_terminal_chat(server):
    import io

    from medtune.infer import chat_cli

    stream = server.client.chat.completions.create(model="x", messages=ask("发烧了吃什么药？"), stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == QA["发烧了吃什么药？"] and len(chunks) > 3
    assert chunks[-1].choices[0].finish_reason == "stop"
    out = io.StringIO()
    chat_cli.run(server.cfg, io.StringIO("发烧了吃什么药？\n"), out)
    assert f"助手> {QA['发烧了吃什么药？']}\n" in out.getvalue()


def test_serving_tokens_equal_training_tokens(server):
    from medtune.data.encode import encode_messages

    convo = ask("头痛怎么办？") + [{"role": "assistant", "content": QA["头痛怎么办？"]}]
    trained = encode_messages(server.engine.tokenizer, server.engine.template, convo, 512)["input_ids"]
    served = server.engine.prompt_ids(ask("头痛怎么办？"))
    assert trained[: len(served)] == served
    # What follows the served prompt in training is the answer and the end-of-turn token it stops at.
    assert trained[len(served):][-2] in server.engine.eos_ids


def _post(server, body, key="sekret", raw=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url + "/v1/chat/completions", headers={**headers, "Content-Type": "application/json"},
                      content=raw if raw is not None else json.dumps(body), timeout=30)


@pytest.mark.parametrize("body, raw, key, status, message", [
    ({"messages": ask("hi")}, None, None, 401, "API key"),
    (None, b"{not json", "sekret", 400, "not valid JSON"),
    ({"messages": []}, None, "sekret", 400, "non-empty list"),
    ({"messages": [{"role": "doctor", "content": "x"}]}, None, "sekret", 400, "'doctor' is not one of"),
    ({"messages": ask("hi"), "max_tokens": 5000}, None, "sekret", 400, "max_tokens=5000 is outside 1..1000"),
    ({"messages": ask("头痛" * 600), "max_tokens": 900}, None, "sekret", 400, "exceeds the model's context length"),
    ({"messages": ask("x" * 30000)}, None, "sekret", 413, "exceeds the limit of 20000"),
    ({"messages": ask("hi"), "temperature": "hot"}, None, "sekret", 422, "'temperature' must be of type"),
    ({"messages": ask("hi"), "n": 2}, None, "sekret", 400, "n=2: this server returns one choice"),
    ({"messages": ask("hi"), "tools": []}, None, "sekret", 400, "Unsupported field 'tools'"),
    ({"messages": ask("hi"), "temperature": -1}, None, "sekret", 400, "temperature=-1 is outside 0..2"),
    ({"messages": ask("hi"), "max_tokens": 0}, None, "sekret", 400, "max_tokens=0 is outside 1..1000"),
    ({"messages": ask("hi"), "top_p": -1}, None, "sekret", 400, "top_p=-1 is outside (0, 1]"),
    ({"messages": ask("hi"), "top_k": -3}, None, "sekret", 400, "top_k=-3 is outside"),
    ({"messages": ask("hi"), "repetition_penalty": 0}, None, "sekret", 400, "repetition_penalty=0 is outside"),
    ({"messages": ask("hi"), "seed": 2**64}, None, "sekret", 400, "is outside 0..2^63-1"),
    ({"messages": ask("hi"), "stop": ["a", "b", "c", "d", "e"]}, None, "sekret", 400, "at most 4"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, None, "sekret",
     400, "parts of type ['image_url']"),
    ({"messages": ask("hi")}, None, "wrong", 401, "API key"),
])
def test_bad_requests_get_openai_style_errors_and_the_server_keeps_serving(server, body, raw, key, status, message):
    r = _post(server, body, key=key, raw=raw)
    assert r.status_code == status
    err = r.json()["error"]
    assert message in err["message"] and err["type"] in ("invalid_request_error", "authentication_error")
    ok = server.client.chat.completions.create(model="x", messages=ask("头痛怎么办？"), max_tokens=16)
    assert ok.choices[0].message.content == QA["头痛怎么办？"]


def test_disconnect_mid_stream_frees_the_slot(chatty_server):
    server = chatty_server
    body = {"messages": ask("请详细说说高血压的饮食注意事项"), "max_tokens": 900, "stream": True,
            "repetition_penalty": 1.0}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": "Bearer sekret"}, timeout=30) as r:
        for line in r.iter_lines():  # wait for generated text, then hang up
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break
    closed = time.monotonic()
    while (not server.engine.batcher.finished or httpx.get(server.url + "/health").json()["active"]) \
            and time.monotonic() - closed < 10:
        time.sleep(0.02)
    freed = time.monotonic() - closed
    reason, tokens = server.engine.batcher.finished[-1]
    assert reason == "cancelled" and tokens < 900 and freed < 5


def test_concurrent_requests_share_batches(server):
    questions = list(QA) * 3
    results = [None] * len(questions)

    def one(i, q):
        results[i] = server.client.chat.completions.create(model="x", messages=ask(q)).choices[0].message.content

    threads = [threading.Thread(target=one, args=(i, q)) for i, q in enumerate(questions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [QA[q] for q in questions]
    assert server.engine.batcher.largest_batch > 1


def test_disclaimer_and_red_flag_notice(server):
    from medtune.infer.api import create_app

    cfg = load_config(CFG, ["serve.disclaimer.enabled=true"])
    client = __import__("fastapi.testclient", fromlist=["TestClient"]).TestClient(create_app(server.engine, cfg.serve))
    r = client.post("/v1/chat/completions", json={"messages": ask("突然胸痛，出冷汗怎么办"), "max_tokens": 8},
                    headers={"Authorization": "Bearer sekret"})
    text = r.json()["choices"][0]["message"]["content"]
    assert text.startswith("⚠️ 您描述的情况（胸痛）可能是急症信号") and text.endswith(cfg.serve.disclaimer.text)


def test_engines_are_registered_and_vllm_explains_what_it_needs(capsys):
    from medtune.errors import MedtuneError
    from medtune.infer.engine import make_engine

    assert main(["ls", "engines"]) == 0
    assert "vllm" in capsys.readouterr().out
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(MedtuneError, match="serve.engine=vllm needs a CUDA GPU"):
            make_engine(load_config(CFG, ["serve.engine=vllm"]))


@pytest.mark.gpu
def test_vllm_engine_serves_the_training_template(trained):
    pytest.importorskip("vllm")
    from medtune.infer.engine import make_engine

    cfg = load_config(CFG, [f"model.name_or_path={trained}", "serve.engine=vllm", "generation.do_sample=false",
                            "generation.repetition_penalty=1.0", "generation.max_new_tokens=16"])
    engine = make_engine(cfg)
    assert engine.chat(ask("头痛怎么办？")) == QA["头痛怎么办？"]


def test_common_client_fields_are_accepted(server):
    """n=1, stop and content given as text parts (what LangChain and newer openai clients send)."""
    parts = [{"role": "user", "content": [{"type": "text", "text": "头痛"}, {"type": "text", "text": "怎么办？"}]}]
    r = server.client.chat.completions.create(model="x", messages=parts, n=1, max_tokens=16)
    assert r.choices[0].message.content == QA["头痛怎么办？"]
    full = QA["头痛怎么办？"]  # 多休息，少熬夜。
    r = server.client.chat.completions.create(model="x", messages=ask("头痛怎么办？"), stop=["，"], max_tokens=16)
    assert r.choices[0].message.content == full.split("，")[0] and r.choices[0].finish_reason == "stop"
    stream = server.client.chat.completions.create(model="x", messages=ask("头痛怎么办？"), stop="少熬", stream=True,
                                                   max_tokens=16)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full.split("少熬")[0]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_unknown_routes_and_methods_answer_in_openai_shape(server):
    r = httpx.get(server.url + "/v1/nothing", headers={"Authorization": "Bearer sekret"})
    assert r.status_code == 404 and "Unknown route /v1/nothing" in r.json()["error"]["message"]
    r = httpx.get(server.url + "/v1/chat/completions", headers={"Authorization": "Bearer sekret"})
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_busy_port_is_reported_before_the_model_loads(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for verb in ("serve", "webui"):
            start = time.time()
            assert main([verb, CFG, f"serve.port={port}"]) == 2
            assert time.time() - start < 20
            assert f"Cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_hostile_bodies_get_json_errors(server):
    deep = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(server.url + "/v1/chat/completions", content=deep, timeout=30,
                   headers={"Authorization": "Bearer sekret", "Content-Type": "application/json"})
    assert r.status_code in (400, 413) and "error" in r.json()
    r = _post(server, {"messages": ask("hi")}, raw=b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]

    # A declared 100 MB body is refused from its header, before a byte of it is read.
    def body():
        yield b'{"messages": "'
        for _ in range(100):
            yield b"x" * 1_000_000

    r = httpx.post(server.url + "/v1/chat/completions", content=body(), timeout=30,
                   headers={"Authorization": "Bearer sekret", "Content-Length": str(100_000_014)})
    assert r.status_code == 413 and "exceeds the limit of 20000" in r.json()["error"]["message"]


def test_routes_behind_the_key_and_health_public(server):
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/openapi.json").status_code == 401
    assert httpx.get(server.url + "/openapi.json", headers={"Authorization": "Bearer sekret"}).status_code == 200


def test_abandoned_non_streaming_request_is_cancelled(chatty_server):
    batcher = chatty_server.engine.batcher
    before = len(batcher.finished)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(chatty_server.url + "/v1/chat/completions", timeout=0.1,
                   headers={"Authorization": "Bearer sekret"},
                   json={"messages": ask("讲一个很长的故事"), "max_tokens": 900, "temperature": 1.0})
    deadline = time.time() + 20
    while time.time() < deadline and not any(r == "cancelled" for r, _ in list(batcher.finished)[before:]):
        time.sleep(0.1)
    done = list(batcher.finished)[before:]
    # The row was freed, not generated to 900 tokens for nobody.
    assert any(r == "cancelled" and n < 900 for r, n in done), done
