"""`medtune chat CONFIG`: a terminal REPL over ChatEngine with streaming and multi-turn history."""

from __future__ import annotations

import sys
from typing import TextIO

from medtune.config import Config
from medtune.infer.engine import make_engine

HELP = "输入问题后回车。/reset 清空对话历史，/exit 退出。  (/reset clears history, /exit quits)"


def run(cfg: Config, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    engine = make_engine(cfg)
    system = [{"role": "system", "content": cfg.chat.system}] if cfg.chat.system else []
    history: list[dict[str, str]] = []
    adapters = f" + {', '.join(cfg.model.adapters)}" if cfg.model.adapters else ""
    print(f"medtune chat — {cfg.model.name_or_path}{adapters} [{cfg.model.template}]\n{HELP}", file=stdout)
    while True:
        print("\n用户> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:  # EOF (Ctrl-D or end of piped input)
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history.clear()
            print("(对话历史已清空 / history cleared)", file=stdout)
            continue
        history.append({"role": "user", "content": text})
        print("助手> ", end="", file=stdout, flush=True)
        pieces = []
        for piece in engine.stream(system + history):
            pieces.append(piece)
            print(piece, end="", file=stdout, flush=True)
        print(file=stdout)
        history.append({"role": "assistant", "content": engine.clean("".join(pieces))})
    return 0
