"""`medtune webui CONFIG`: a Gradio chat page over the same ChatEngine as the API and the terminal.

Streaming, multi-turn history, clear / retry / undo (Gradio's chat controls), the generation
settings as sliders, and the disclaimer under the title (and after answers when enabled).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from medtune.config import Config
from medtune.infer.api import red_flag_notice
from medtune.infer.engine import EngineBase, make_engine
from medtune.kb.ground import sources_text

DISCLAIMER = "本页面由 medtune 提供，回答由 AI 生成，仅供参考，不能替代医生的诊断和治疗。如有急症请立即拨打 120。"


def build(engine: EngineBase, cfg: Config) -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    g, s = cfg.generation, cfg.serve

    def respond(message: str, history: list[dict[str, Any]], temperature: float, top_p: float,
                max_new_tokens: int, repetition_penalty: float) -> Iterator[str]:
        system = [{"role": "system", "content": cfg.chat.system}] if cfg.chat.system else []
        turns = [{"role": h["role"], "content": h["content"]} for h in history if isinstance(h.get("content"), str)]
        messages = system + turns + [{"role": "user", "content": message}]
        notice = red_flag_notice(messages, s)
        answer = notice + "\n\n" if notice else ""
        grounded = engine.ground(messages, int(max_new_tokens))
        for piece in engine.stream(grounded.messages, temperature=temperature or None, do_sample=temperature > 0,
                                   top_p=top_p, max_new_tokens=int(max_new_tokens),
                                   repetition_penalty=repetition_penalty):
            answer += piece
            yield answer
        if grounded.citations:
            answer += "\n\n" + sources_text(grounded.citations).replace("\n", "  \n")
            yield answer
        if s.disclaimer.enabled:
            yield answer + "\n\n" + s.disclaimer.text

    return gr.ChatInterface(
        respond, title="medtune 医疗问答", description=f"模型：`{engine.name}`　　{DISCLAIMER}",
        additional_inputs=[
            gr.Slider(0.0, 1.5, value=g.temperature if g.do_sample else 0.0, step=0.05, label="temperature (0 = greedy)"),
            gr.Slider(0.05, 1.0, value=g.top_p, step=0.05, label="top_p"),
            gr.Slider(8, s.max_tokens_cap, value=g.max_new_tokens, step=8, label="max_new_tokens"),
            gr.Slider(1.0, 2.0, value=g.repetition_penalty, step=0.05, label="repetition_penalty"),
        ],
        additional_inputs_accordion=gr.Accordion("生成参数 / generation settings", open=False),
        examples=[["高血压患者能吃党参吗？"], ["最近总是失眠，怎么办？"]], cache_examples=False,
    )


def launch(engine: EngineBase, cfg: Config, **kwargs: Any) -> Any:
    """Build and start the page. With the API key set (serve.api_key_env), the page asks for it too:
    any user name, the key as the password (compared in constant time), like the API's bearer key."""
    import hmac

    key = os.environ.get(cfg.serve.api_key_env) or None
    auth = (lambda _user, password: hmac.compare_digest(password.encode(), key.encode())) if key else None
    demo = build(engine, cfg).queue(default_concurrency_limit=cfg.serve.max_batch_size)
    demo.launch(server_name=cfg.serve.host, server_port=cfg.serve.port, share=False, auth=auth,
                auth_message="medtune：请输入 API key 作为密码（用户名任意） / enter the API key as the password"
                if key else None, **kwargs)
    return demo


def run(cfg: Config) -> None:
    from medtune.infer.api import check_port

    check_port(cfg.serve.host, cfg.serve.port)  # before the model loads, not as a traceback after
    launch(make_engine(cfg), cfg)
