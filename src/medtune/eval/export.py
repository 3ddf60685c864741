"""Our multiple-choice tasks as lm-evaluation-harness tasks (`eval.export: [lm_eval]`).

For each multiple-choice task, `lm_eval/` in the eval output gets:

    <task>.jsonl   the single-answer items exactly as medtune scored them (after the format's loader,
                   `limit` and option orders): {id, question, letters, texts, answer}
    <task>.yaml    an lm-eval task over that file: output_type multiple_choice, each item's option
                   letters as its choices, no target delimiter, acc
    <task>_prompt.py  doc_to_text: the task's Jinja prompt, rendered with the same Jinja settings and
                   wrapped in the model's chat template (the text before and after the user's message)

so `lm_eval --model hf --model_args pretrained=... --include_path lm_eval --tasks medtune_<task>`
scores the same strings medtune's letter log-likelihood scores. Before writing, every item's
prompt is rendered through the generated module and compared with medtune's own: a chat template
that cannot be written as a fixed prefix and suffix is refused, not exported approximately. lm-eval
moves a prompt's trailing whitespace into the continuation ("\\nA" instead of "A"); the added token
is the same for every option, so the argmax and the accuracy are unchanged (tests/test_lm_eval.py).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from medtune.data.io import atomic_write_text, write_jsonl
from medtune.errors import ConfigError
from medtune.eval.task_types import task_type
from medtune.eval.tasks import TaskData, prompt_source, render_prompt

EXPORTS = ("lm_eval",)
_SENTINEL = "\x00MEDTUNE-USER-MESSAGE\x00"

_MODULE = '''"""doc_to_text for lm-eval: medtune task {name!r}, written by `medtune eval` (eval.export: lm_eval)."""

from jinja2.sandbox import ImmutableSandboxedEnvironment

PREFIX = {prefix!r}
SUFFIX = {suffix!r}
SOURCE = {source!r}
VARIABLES = {variables!r}
_ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
_PROMPT = _ENV.from_string(SOURCE)


def doc_to_text(doc):
    options = dict(zip(doc["letters"], doc["texts"]))
    user = _PROMPT.render(**VARIABLES, question=doc["question"], options=options, multi=False)
    return PREFIX + user + SUFFIX
'''


def lm_eval(td: TaskData, prompt_text: Any, out: Path, final: Path) -> list[Path]:
    """Writes the task's lm-eval files under `out` (the YAML names the data where it will be:
    `final`); `prompt_text(messages)` is the model's chat template as medtune's scorer renders it."""
    task = td.task
    items = [x for x in td.items if not x.multi]
    if not items:
        return []
    shots = [{"question": x.question, "options": x.options, "answer": x.answer} for x in td.shots]
    wrapped = prompt_text([{"role": "user", "content": _SENTINEL}])
    if wrapped.count(_SENTINEL) != 1:
        raise ConfigError(f"eval.export lm_eval: the chat template does not show the user's message once verbatim; "
                          f"task {task.name!r} cannot be exported exactly.")
    prefix, suffix = wrapped.split(_SENTINEL)
    module = _MODULE.format(name=task.name, prefix=prefix, suffix=suffix,
                            source=prompt_source(task, task.prompt or task_type(task.type).prompt),
                            variables={**task.prompt_vars, "shots": shots})
    name = f"medtune_{task.name}"
    code = out / f"{task.name}_prompt.py"
    atomic_write_text(code, module)
    doc_to_text = _load(code).doc_to_text
    # Options as two lists: items with 4 and 5 options share one Arrow schema without null-filled keys.
    rows = [{"id": x.id, "question": x.question, "letters": list(x.options), "texts": list(x.options.values()),
             "answer": x.answer} for x in items]
    for x, row in zip(items, rows, strict=True):
        ours = prompt_text([{"role": "user", "content": render_prompt(task, question=x.question, options=x.options,
                                                                       multi=False, shots=shots)}])
        if doc_to_text(row) != ours:
            code.unlink()
            raise ConfigError(f"eval.export lm_eval: task {task.name!r}, item {x.id!r}: the exported prompt differs "
                              "from medtune's (a chat template that changes the message text?); not exported.")
    data = write_jsonl(out / f"{task.name}.jsonl", rows)
    yaml_text = "\n".join([
        f"# lm-eval task for medtune's {task.name!r} ({task.description or task.type}); written by medtune eval.",
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str((final / data.name).resolve()), ensure_ascii=False)}",
        "test_split: test",
        "output_type: multiple_choice",
        f"doc_to_text: !function {code.stem}.doc_to_text",
        'doc_to_choice: "{{ letters }}"',
        'doc_to_target: "{{ letters.index(answer) }}"',
        'target_delimiter: ""',
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        "  version: 1.0", ""])
    return [code, data, atomic_write_text(out / f"{task.name}.yaml", yaml_text)]


def _load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"medtune_export_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module
