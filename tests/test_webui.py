"""The Gradio chat page in real headless Chromium: load, ask in Chinese, see a streamed answer, screenshot."""

import shutil
import socket

import pytest
from conftest import QA, ROOT

from medtune.config import load_config

gr = pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def page_on(demo):
    """Launch a built page on a free local port; its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}/"
ARTIFACTS = ROOT / "test-artifacts"


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_chat_page_streams_an_answer(trained):
    from medtune.infer.engine import ChatEngine
    from medtune.infer.web import build

    cfg = load_config(str(ROOT / "configs/tiny/chat.yaml"), [
        f"model.name_or_path={trained}", "generation.max_new_tokens=24", "generation.do_sample=false",
        "generation.repetition_penalty=1.0", "serve.disclaimer.enabled=true", "chat.system=null"])
    engine = ChatEngine(cfg.model, cfg.generation)
    demo = build(engine, cfg)
    url = page_on(demo)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.goto(url, wait_until="load")
            page.get_by_role("textbox").first.wait_for(timeout=30_000)
            assert "medtune 医疗问答" in page.content()
            box = page.get_by_role("textbox").first
            box.fill("发烧了吃什么药？")
            box.press("Enter")
            bot = page.locator(".message.bot, [data-testid='bot']").last
            bot.wait_for(timeout=30_000)
            page.wait_for_function(
                "t => [...document.querySelectorAll('.message.bot, [data-testid=\"bot\"]')].some(e => e.innerText.includes(t))",
                arg=cfg.serve.disclaimer.text, timeout=60_000)
            answer = bot.inner_text()
            assert answer.startswith(QA["发烧了吃什么药？"])  # the model's own answer, then the disclaimer
            assert "发烧了吃什么药？" in page.locator(".message.user, [data-testid='user']").last.inner_text()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "webui.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
    assert (ARTIFACTS / "webui.png").stat().st_size > 10_000


def test_page_asks_for_the_api_key_when_one_is_set(trained, monkeypatch):
    """With serve.api_key_env set, the page is behind the same key as the API (any user name, key as password)."""
    import httpx

    from medtune.infer.engine import ChatEngine
    from medtune.infer.web import launch

    monkeypatch.setenv("MEDTUNE_WEB_KEY", "sekret")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config(str(ROOT / "configs/tiny/chat.yaml"), [f"model.name_or_path={trained}", f"serve.port={port}",
                                                           "serve.api_key_env=MEDTUNE_WEB_KEY"])
    demo = launch(ChatEngine(cfg.model, cfg.generation), cfg, prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/config").status_code in (401, 403)
        assert httpx.post(url + "/login", data={"username": "u", "password": "wrong"}).status_code >= 400
        with httpx.Client() as c:
            assert c.post(url + "/login", data={"username": "anyone", "password": "sekret"}).status_code == 200
            assert c.get(url + "/config").status_code == 200
    finally:
        demo.close()
