"""`medtune chat CONFIG`: a terminal REPL over ChatEngine with streaming and multi-turn history.

Ctrl-C while an answer streams stops that answer (the partial answer stays in the history, as in
chat UIs); Ctrl-C at the prompt asks for a second one to quit. Lines starting with / are commands,
never sent to the model. On the way out the engine's worker is stopped before the interpreter
exits, so a generation still running cannot abort the process (the exit code 134 seen once).
"""

from __future__ import annotations

import sys
from typing import TextIO

from medtune.config import Config
from medtune.infer.engine import make_engine
from medtune.kb.ground import sources_text

HELP = ("输入问题后回车。/reset 清空对话历史，/help 帮助，/exit 退出；回答时按 Ctrl-C 停止当前回答。\n"
        "(Type a question and press Enter. /reset clears the history, /help shows this, /exit quits; "
        "Ctrl-C stops the answer being written.)")


def run(cfg: Config, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    engine = make_engine(cfg)
    try:
        return _repl(engine, cfg, stdin, stdout)
    finally:
        engine.close()


def _repl(engine, cfg: Config, stdin: TextIO, stdout: TextIO) -> int:
    system = [{"role": "system", "content": cfg.chat.system}] if cfg.chat.system else []
    history: list[dict[str, str]] = []
    adapters = f" + {', '.join(cfg.model.adapters)}" if cfg.model.adapters else ""
    print(f"medtune chat — {cfg.model.name_or_path}{adapters} [{cfg.model.template}]\n{HELP}", file=stdout)
    interrupted = False
    while True:
        print("\n用户> ", end="", file=stdout, flush=True)
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            if interrupted:
                print("\n(再见 / bye)", file=stdout)
                return 0
            interrupted = True
            print("\n(再按一次 Ctrl-C 或输入 /exit 退出 / press Ctrl-C again or type /exit to quit)", file=stdout)
            continue
        interrupted = False
        if not line:  # EOF (Ctrl-D or end of piped input)
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if text in ("/exit", "/quit"):
                return 0
            if text == "/reset":
                history.clear()
                print("(对话历史已清空 / history cleared)", file=stdout)
            else:
                print(HELP if text == "/help" else f"(未知命令 / unknown command {text})\n{HELP}", file=stdout)
            continue
        history.append({"role": "user", "content": text})
        print("助手> ", end="", file=stdout, flush=True)
        pieces: list[str] = []
        grounded = engine.ground(system + history)  # the history keeps the question as asked
        try:
            for piece in engine.stream(grounded.messages):
                pieces.append(piece)
                print(piece, end="", file=stdout, flush=True)
        except KeyboardInterrupt:  # the stream's own cleanup has cancelled the generation
            print("\n(已停止 / stopped)", end="", file=stdout, flush=True)
        print(file=stdout)
        if grounded.citations:
            print(sources_text(grounded.citations), file=stdout)
        answer = engine.clean("".join(pieces))
        if answer:
            history.append({"role": "assistant", "content": answer})
        else:
            history.pop()  # nothing was said: forget the question rather than leave a turn unanswered
