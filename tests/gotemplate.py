"""A small interpreter for the subset of Go's text/template that medtune's Ollama templates use (range over
.Messages, if / else if / else with eq, not, and; variables; trim markers), written from Go's documented
semantics so the tests can check that each `.ollama` file renders what its Jinja twin renders. It is not
Ollama: it checks the translation, not the runtime."""

import re

ACTION = re.compile(r"{{(-?)\s*(.*?)\s*(-?)}}", re.S)


def parse(source):
    """Source → nested list of ("text", s) | ("out", expr) | ("set", name, expr) | ("if", [(cond, body)], else)
    | ("range", expr, body)."""
    items, pos = [], 0
    for m in ACTION.finditer(source):
        text = source[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        if items and items[-1][0] == "trim_next":
            items.pop()
            text = text.lstrip()
        items.append(("text", text))
        items.append(("action", m.group(2)))
        if m.group(3):
            items.append(("trim_next",))
        pos = m.end()
    tail = source[pos:]
    if items and items[-1][0] == "trim_next":
        items.pop()
        tail = tail.lstrip()
    items.append(("text", tail))
    tree, rest = _block(items, 0)
    assert rest == len(items), "unbalanced end"
    return tree


def _block(items, i):
    out = []
    while i < len(items):
        kind = items[i][0]
        if kind == "text":
            out.append(items[i])
            i += 1
            continue
        act = items[i][1]
        if act in ("end", "else") or act.startswith("else if "):
            return out, i
        if act.startswith("range "):
            body, i = _block(items, i + 1)
            assert items[i][1] == "end"
            out.append(("range", act[6:], body))
            i += 1
        elif act.startswith("if "):
            branches, otherwise, cond = [], [], act[3:]
            while True:
                body, i = _block(items, i + 1)
                branches.append((cond, body))
                act = items[i][1]
                if act.startswith("else if "):
                    cond = act[8:]
                    continue
                if act == "else":
                    otherwise, i = _block(items, i + 1)
                    act = items[i][1]
                assert act == "end"
                i += 1
                break
            out.append(("if", branches, otherwise))
        elif m := re.match(r"(\$\w+)\s*:?=\s*(.+)", act):
            out.append(("set", m.group(1), m.group(2)))
            i += 1
        else:
            out.append(("out", act))
            i += 1
    return out, i


def _value(expr, dot, root, env):
    expr = expr.strip()
    if expr.startswith("(") and expr.endswith(")"):
        return _value(expr[1:-1], dot, root, env)
    words = re.findall(r'\([^)]*\)|"[^"]*"|\S+', expr)
    if len(words) > 1:
        fn, args = words[0], [_value(w, dot, root, env) for w in words[1:]]
        return {"eq": lambda a, b: a == b, "not": lambda a: not a, "and": lambda *a: all(a)}[fn](*args)
    if expr.startswith('"'):
        return expr[1:-1]
    if expr.startswith("$."):
        return root.get(expr[2:])
    if expr.startswith("$"):
        return env[expr]
    if expr.startswith("."):
        return dot.get(expr[1:], "")
    raise ValueError(expr)


def _run(tree, dot, root, env):
    out = []
    for node in tree:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "out":
            out.append(str(_value(node[1], dot, root, env) or ""))
        elif node[0] == "set":
            env[node[1]] = _value(node[2], dot, root, env)
        elif node[0] == "range":
            for item in _value(node[1], dot, root, env):
                out.append(_run(node[2], item, root, env))
        else:
            for cond, body in node[1]:
                if _value(cond, dot, root, env):
                    out.append(_run(body, dot, root, env))
                    break
            else:
                out.append(_run(node[2], dot, root, env))
    return "".join(out)


def render(source, messages, **root):
    """Render an Ollama template: messages as Ollama passes them (Role, Content, Thinking)."""
    msgs = [{"Role": m["role"], "Content": m["content"], "Thinking": m.get("reasoning_content", "")} for m in messages]
    return _run(parse(source), {"Messages": msgs, **root}, {"Messages": msgs, **root}, {})
