"""The report's building blocks: headings, paragraphs, tables and images as tuples, rendered to
Markdown and to HTML from the same list, so the two can never disagree; and the number formats
every section uses (percentages, CIs, paired differences)."""

from __future__ import annotations

import html
from typing import Any

Block = tuple[Any, ...]


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def ci(m: dict[str, float]) -> str:
    return f"{pct(m['value'])} [{pct(m['low'])}, {pct(m['high'])}]"


def delta(d: dict[str, float]) -> str:
    mark = " ▲" if d["low"] > 0 else " ▼" if d["high"] < 0 else ""
    return f"{100 * d['diff']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]{mark}"


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for kind, *rest in blocks:
        if kind == "h":
            out.append("#" * rest[0] + " " + rest[1])
        elif kind == "p":
            out.append(rest[0])
        elif kind == "img":
            out.append(f"![{rest[1]}]({rest[0]})")
        else:
            head, rows = rest
            cell = lambda x: str(x).replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or " "  # noqa: E731
            out += ["| " + " | ".join(map(cell, head)) + " |", "|" + "---|" * len(head)]
            out += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
        out.append("")
    return "\n".join(out)


def to_html(blocks: list[Block]) -> str:
    body = []
    for kind, *rest in blocks:
        if kind == "h":
            body.append(f"<h{rest[0]}>{html.escape(rest[1])}</h{rest[0]}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(rest[0])}</p>")
        elif kind == "img":
            body.append(f'<img src="{html.escape(rest[0])}" alt="{html.escape(rest[1])}">')
        else:
            head, rows = rest
            cell = lambda x: html.escape(str(x)).replace("&lt;br&gt;", "<br>").replace("\n", "<br>")  # noqa: E731
            body.append("<table><tr>" + "".join(f"<th>{cell(h)}</th>" for h in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
                        + "</table>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}table{border-collapse:"
             "collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:14px}"
             "th{background:#f3f3f3}img{max-width:100%}")
    return (f'<!doctype html><html lang="zh"><head><meta charset="utf-8"><title>medtune evaluation report</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
