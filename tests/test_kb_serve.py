"""Grounded answers end to end: kb_qa data from the shipped leaflets trains a tiny model; served with
kb.index it answers from the retrieved passages, with citations, through the API (official openai
client), /v1/retrieve, the terminal chat, the web page (real Chromium) and medtune eval."""

import io
import json
import shutil
import socket
import threading
import time

import httpx
import pytest
from conftest import ROOT, train_scripted

from medtune.cli import main
from medtune.config import load_config

pytest.importorskip("bm25s")
pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

KB_CFG = str(ROOT / "configs/kb/medical_kb.yaml")
ANSWERABLE = ["胰岛素针头能重复用吗？", "孩子多少度算发烧？", "用完激素吸入剂为什么要漱口？", "流感疫苗每年都要打吗？"]
NOT_FOUND = "参考资料中没有相关信息。"


@pytest.fixture(scope="module")
def grounded(tmp_path_factory):
    """The shipped knowledge base, its kb_qa data, and a tiny model fully tuned on part of it."""
    d = tmp_path_factory.mktemp("grounded")
    assert main(["kb", KB_CFG, f"kb.index={d / 'kb'}", f"kb.qa.output={d / 'qa'}", "kb.qa.unanswerable=0"]) == 0
    rows = [json.loads(x) for x in (d / "qa/data.jsonl").read_text(encoding="utf-8").splitlines()]
    qa = {json.loads(x)["question"]: json.loads(x)["answer"]
          for x in (ROOT / "src/medtune/kb/samples/qa.jsonl").read_text(encoding="utf-8").splitlines()}
    keep = [r for r in rows if not r["meta"]["kb_qa"]["answerable"]
            or any(r["messages"][0]["content"].endswith("问题：" + q) for q in ANSWERABLE)]
    assert len(keep) == 4 + 8  # the four questions above and the eight the leaflets do not answer
    model = train_scripted(d, [{"messages": r["messages"]} for r in keep], 120, "grounded_model")
    cfg = load_config(KB_CFG, [f"model.name_or_path={model}", "model.template=chatml", f"kb.index={d / 'kb'}",
                               "generation.max_new_tokens=64", "generation.repetition_penalty=1.0",
                               "serve.max_wait_ms=20"])
    return {"dir": d, "model": model, "cfg": cfg, "qa": qa}


@pytest.fixture(scope="module")
def server(grounded):
    import uvicorn

    from medtune.infer.api import create_app
    from medtune.infer.engine import make_engine

    engine = make_engine(grounded["cfg"])  # kb.index set: the engine grounds
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(engine, grounded["cfg"].serve), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    yield {"url": url, "engine": engine, "client": openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)}
    srv.should_exit = True
    thread.join(timeout=10)
    engine.close()


def ask(q):
    return [{"role": "user", "content": q}]


def test_api_answers_from_the_passages_with_citations(server, grounded):
    q = "胰岛素针头能重复用吗？"
    reply = server["client"].chat.completions.create(model="x", messages=ask(q), max_tokens=64)
    message = reply.choices[0].message
    assert message.content == grounded["qa"][q]
    citations = message.model_extra["citations"]
    assert citations[0]["source"] == "insulin_storage.md" and citations[0]["title"] == "胰岛素的保存与注射 · 针头"
    assert citations[0]["line"] == 10 and citations[0]["text"].startswith("注射笔用针头应一次性使用")
    assert [c["n"] for c in citations] == list(range(1, len(citations) + 1))
    # the prompt the model saw is the grounded one (passages + question), not the bare question
    grounded_prompt = server["engine"].ground(ask(q)).messages
    assert reply.usage.prompt_tokens == len(server["engine"].prompt_ids(grounded_prompt))
    assert reply.usage.prompt_tokens > len(server["engine"].prompt_ids(ask(q))) + 50

    absent = server["client"].chat.completions.create(model="x", messages=ask("痛风发作时能喝啤酒吗？"), max_tokens=64)
    assert absent.choices[0].message.content == NOT_FOUND


def test_stream_carries_the_citations_on_its_last_chunk(server, grounded):
    q = "孩子多少度算发烧？"
    chunks = list(server["client"].chat.completions.create(model="x", messages=ask(q), max_tokens=64, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == grounded["qa"][q]
    last = chunks[-1].choices[0]
    assert last.finish_reason == "stop"
    plain = server["client"].chat.completions.create(model="x", messages=ask(q), max_tokens=64)
    assert last.delta.model_extra["citations"] == plain.choices[0].message.model_extra["citations"]
    assert all("citations" not in (c.choices[0].delta.model_extra or {}) for c in chunks[:-1])


def test_retrieve_endpoint_and_its_errors(server):
    r = httpx.post(server["url"] + "/v1/retrieve", json={"query": "胰岛素针头能重复用吗？", "top_k": 2})
    assert r.status_code == 200
    body = r.json()
    assert body["retriever"] == "bm25" and len(body["data"]) == 2
    assert body["data"][0]["id"] == "insulin_storage.md#2" and body["data"][0]["score"] > body["data"][1]["score"]
    for payload, status, message in [
        ({"query": "x" * 600}, 400, "'query' has 600 characters; the limit is 512 (kb.max_query_chars)"),
        ({"query": ""}, 400, "'query' must be a non-empty string"),
        ({"query": 3}, 422, "'query' must be a non-empty string"),
        ({"query": "血糖", "top_k": 0}, 400, "'top_k' must be an integer from 1 to 50"),
        ({"query": "血糖", "k": 2}, 400, "Unsupported field 'k'"),
    ]:
        r = httpx.post(server["url"] + "/v1/retrieve", json=payload)
        assert r.status_code == status and message in r.json()["error"]["message"], (payload, r.text)


def test_passages_that_do_not_fit_the_context_are_left_out(server):
    engine = server["engine"]
    q = ask("胰岛素针头能重复用吗？")
    full = engine.ground(q, 64)
    assert len(full.citations) == 3
    room = engine.context_length - len(engine.prompt_ids(engine.ground(q, 64).messages)) + 1
    fewer = engine.ground(q, room)  # one token short of room for all three: the lowest-ranked goes
    assert [c["id"] for c in fewer.citations] == [c["id"] for c in full.citations][:len(fewer.citations)]
    assert len(fewer.citations) < 3
    assert engine.ground(q, engine.context_length).citations == []


def test_server_without_a_knowledge_base_says_so(grounded):
    from starlette.testclient import TestClient

    from medtune.infer.api import create_app

    class NoKb:  # the route answers before any model is needed
        grounder = None
        name = "m"

        def stats(self):
            return {}

    r = TestClient(create_app(NoKb(), grounded["cfg"].serve)).post("/v1/retrieve", json={"query": "血糖"})
    assert r.status_code == 404 and "has no knowledge base" in r.json()["error"]["message"]


def test_terminal_chat_prints_the_sources_under_the_answer(grounded):
    from medtune.infer import chat_cli

    out = io.StringIO()
    chat_cli.run(grounded["cfg"], io.StringIO("用完激素吸入剂为什么要漱口？\n"), out)
    text = out.getvalue()
    assert f"助手> {grounded['qa']['用完激素吸入剂为什么要漱口？']}\n参考资料 / sources:\n[1] 哮喘吸入剂的正确使用 · 吸入激素后漱口" \
        "（asthma_inhaler.md，第 7 行）" in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_web_page_shows_the_sources(grounded):
    pytest.importorskip("gradio")
    playwright = pytest.importorskip("playwright.sync_api")
    from test_webui import CHROMIUM_ARGS, page_on

    from medtune.infer.engine import make_engine
    from medtune.infer.web import build

    engine = make_engine(grounded["cfg"])
    demo = build(engine, grounded["cfg"])
    url = page_on(demo)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url, wait_until="load")
            box = page.get_by_role("textbox").first
            box.wait_for(timeout=30_000)
            box.fill("流感疫苗每年都要打吗？")
            box.press("Enter")
            page.wait_for_function(
                "t => [...document.querySelectorAll('.message.bot, [data-testid=\"bot\"]')].some(e => e.innerText.includes(t))",
                arg="influenza_vaccine.md", timeout=60_000)
            answer = page.locator(".message.bot, [data-testid='bot']").last.inner_text()
            browser.close()
    finally:
        demo.close()
        engine.close()
    assert answer.startswith(grounded["qa"]["流感疫苗每年都要打吗？"])
    assert "参考资料 / sources:" in answer and "流感疫苗接种 · 接种时间（influenza_vaccine.md，第 7 行）" in answer


def test_eval_compares_the_model_with_and_without_retrieval(grounded, tmp_path):
    import yaml

    samples = ROOT / "src/medtune/kb/samples"
    (tmp_path / "four.jsonl").write_text("".join(
        json.dumps({"id": str(i), "question": q, "answer": grounded["qa"][q]}, ensure_ascii=False) + "\n"
        for i, q in enumerate(ANSWERABLE)), encoding="utf-8")
    cfg = tmp_path / "eval.yaml"
    kb = str(grounded["dir"] / "kb")
    cfg.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(grounded["model"]), "template": "chatml"},
        "kb": {"index": kb},
        "eval": {"models": [{"name": "plain"}, {"name": "grounded", "kb": kb}],
                 "tasks": [{"name": "kb_answers", "type": "grounded_qa", "data": str(tmp_path / "four.jsonl"), "kb": kb,
                            "prompt": "{{ question }}"},
                           {"name": "kb_absent", "type": "refusal", "data": str(samples / "absent.jsonl"),
                            "prompt": "{{ question }}"}],
                 "max_new_tokens": 64, "output_dir": str(tmp_path / "eval")}}, allow_unicode=True))
    assert main(["eval", str(cfg)]) == 0
    tasks = json.loads((tmp_path / "eval/results.json").read_text())["tasks"]
    answers = tasks["kb_answers"]["modes"]["generate"]["models"]
    assert answers["grounded"]["metrics"]["rouge_l"]["value"] == 1.0
    assert answers["grounded"]["metrics"]["supported"]["value"] > answers["plain"]["metrics"]["supported"]["value"]
    absent = tasks["kb_absent"]["modes"]["generate"]["models"]
    assert absent["grounded"]["metrics"]["refused"]["value"] == 1.0  # "参考资料中没有相关信息" every time
    rows = [json.loads(x) for x in (tmp_path / "eval/predictions/grounded/kb_answers.generate.jsonl").read_text().splitlines()]
    assert all(r["context"] for r in rows)
