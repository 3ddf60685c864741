"""LLaMA-Factory's `dataset_info.json`, read as a medtune registry and written from one.

`data.registries` accepts a dataset_info.json beside YAML registries: each entry becomes a
`DatasetSpec`. The mapping, attribute by attribute (LLaMA-Factory's data/README.md):

    file_name                 path, relative to the json's folder (a file or a folder of files)
    formatting alpaca         alpaca (columns prompt/query/response/system/history → instruction/input/
                              output/system/history); only `prompt` mapped (pretraining) → text
    formatting alpaca+ranking pairwise (prompt + query → the user turn, chosen, rejected)
    formatting sharegpt       sharegpt (columns messages/system/tools; tags role_tag, content_tag,
                              user_tag, assistant_tag, system_tag, observation_tag, function_tag)
    sharegpt + ranking        pairwise (conversations as the prompt, chosen / rejected message objects)
    file_sha1                 checked when the dataset is read; a mismatch is a warning (LLaMA-Factory
                              ignores it too, but a changed file deserves a word)
    hf_hub_url, ms_hub_url, om_hub_url, script_url, cloud_file_name
                              entries kept, usable only after a local download: naming one in
                              data.datasets says so (medtune reads local files)
    images, videos, audios, kto_tag
                              refused when used: medtune trains text models, and its kto stage reads
                              paired rows (chosen / rejected), not LLaMA-Factory's unpaired kto_tag
    subset, folder, split, num_samples
                              hub-loading details (subset, folder) or sampling (num_samples): named in
                              the refusal when set, since silently ignoring them would train on other rows
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medtune.errors import ConfigError

HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
KEYS = {"file_name", "formatting", "ranking", "columns", "tags", "file_sha1", "subset", "folder", "split",
        "num_samples", *HUB_KEYS}
COLUMNS = {"prompt", "query", "response", "history", "messages", "system", "tools", "images", "videos", "audios",
           "chosen", "rejected", "kto_tag"}
TAGS = {"role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag"}
UNMAPPED = "\x00unmapped"  # a column name no row has: the field reads as absent
SHAREGPT_DEFAULT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                         "system_tag": "system"}


def read_dataset_info(path: Path) -> dict[str, dict[str, Any]]:
    """dataset_info.json → registry entries (the dict shape of a datasets.yaml entry, plus `unavailable`)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}).") from None
    if not isinstance(info, dict):
        raise ConfigError(f"{path}: a dataset_info.json maps dataset names to descriptions.")
    return {name: entry(name, attrs, path) for name, attrs in info.items()}


def entry(name: str, attrs: Any, path: Path) -> dict[str, Any]:
    where = f"{path}: dataset {name!r}"
    if not isinstance(attrs, dict):
        raise ConfigError(f"{where} must be an object with file_name (and formatting, columns, ...).")
    if unknown := sorted(set(attrs) - KEYS):
        raise ConfigError(f"{where}: unknown attribute {unknown[0]!r} (LLaMA-Factory documents {', '.join(sorted(KEYS))}).")
    columns, tags = attrs.get("columns") or {}, attrs.get("tags") or {}
    if unknown := sorted(set(columns) - COLUMNS) or sorted(set(tags) - TAGS):
        raise ConfigError(f"{where}: unknown column or tag {unknown[0]!r}.")
    formatting, ranking = attrs.get("formatting", "alpaca"), bool(attrs.get("ranking", False))
    if formatting not in ("alpaca", "sharegpt"):
        raise ConfigError(f"{where}: formatting {formatting!r} is not alpaca or sharegpt.")
    out: dict[str, Any] = {"path": str(attrs.get("file_name") or name), "license": "unknown (from dataset_info.json)",
                           "source": f"LLaMA-Factory dataset_info.json ({path})", "options": {}}
    if why := _unavailable(attrs, columns):
        return {**out, "format": "unavailable", "unavailable": f"{where}: {why}", "description": why}
    if attrs.get("file_sha1"):
        out["options"]["file_sha1"] = attrs["file_sha1"]
    if formatting == "alpaca" and not ranking:
        if set(columns) <= {"prompt"} and "prompt" in columns:  # LLaMA-Factory's pretraining shape
            return {**out, "format": "text", "columns": {"text": columns["prompt"]}}
        mapped = {"instruction": columns.get("prompt", "instruction"), "input": columns.get("query", "input"),
                  "output": columns.get("response", "output")}
        # unmapped, LLaMA-Factory ignores a row's system and history fields: so does the import
        mapped |= {k: columns.get(k, UNMAPPED) for k in ("system", "history")}
        return {**out, "format": "alpaca", "columns": mapped}
    if formatting == "alpaca":
        return {**out, "format": "pairwise", "columns": {"prompt": columns.get("prompt", "instruction"),
                                                         "input": columns.get("query", "input"),
                                                         "chosen": columns.get("chosen", "chosen"),
                                                         "rejected": columns.get("rejected", "rejected")}}
    out["options"]["tags"] = {**SHAREGPT_DEFAULT_TAGS, **tags}
    messages = columns.get("messages", "conversations")
    if ranking:
        return {**out, "format": "pairwise", "columns": {"conversations": messages,
                                                         "chosen": columns.get("chosen", "chosen"),
                                                         "rejected": columns.get("rejected", "rejected")}}
    mapped = {"messages": messages} | {k: columns[k] for k in ("system", "tools") if k in columns}
    return {**out, "format": "sharegpt", "columns": mapped}


def _unavailable(attrs: dict[str, Any], columns: dict[str, Any]) -> str | None:
    if not attrs.get("file_name"):
        hub = next((attrs[k] for k in HUB_KEYS if attrs.get(k)), None)
        return (f"it names {hub!r} on a hub or in a script, and medtune reads local files. Download it (e.g. "
                "`huggingface-cli download --repo-type dataset ...`) and set file_name to the local copy.") if hub \
            else "it has no file_name."
    if kinds := [k for k in ("images", "videos", "audios") if k in columns]:
        return f"it is multimodal ({', '.join(kinds)}); medtune trains text models."
    if "kto_tag" in columns:
        return ("its rows are unpaired KTO feedback (kto_tag); medtune's kto stage reads paired chosen / rejected "
                "rows (format: pairwise).")
    if set_ := [k for k in ("subset", "folder", "num_samples") if attrs.get(k) not in (None, "")] + \
            (["split"] if attrs.get("split") not in (None, "", "train") else []):
        return (f"it sets {', '.join(set_)}, which medtune does not apply to a local file: point file_name at exactly "
                "the rows to train on (and sample with data.mix / data.max_samples).")
    return None


def write_dataset_info(specs: dict[str, Any], folder: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """medtune's registry → a dataset_info.json (file_name relative to `folder` where possible), and the
    datasets it cannot describe with the reason (formats LLaMA-Factory has no reader for)."""
    import os

    info, skipped = {}, {}
    for name, s in sorted(specs.items()):
        try:
            file_name = os.path.relpath(s.path, folder)
        except ValueError:  # another drive
            file_name = s.path
        c = s.columns
        if s.format == "alpaca":
            cols = {"prompt": c.get("instruction", "instruction"), "query": c.get("input", "input"),
                    "response": c.get("output", "output"), "system": c.get("system", "system"),
                    "history": c.get("history", "history")}
            cols = {k: v for k, v in cols.items() if v != UNMAPPED}
            info[name] = {"file_name": file_name, "columns": cols}
        elif s.format in ("sharegpt", "openai"):
            tags = ({"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                     "system_tag": "system"} if s.format == "openai" else dict(SHAREGPT_DEFAULT_TAGS))
            info[name] = {"file_name": file_name, "formatting": "sharegpt",
                          "columns": {"messages": c.get("messages", "messages" if s.format == "openai" else "conversations")},
                          "tags": tags}
        elif s.format == "pairwise":  # string prompts; rows whose prompt is a message list need sharegpt ranking
            info[name] = {"file_name": file_name, "ranking": True,
                          "columns": {"prompt": c.get("prompt", "prompt"), "chosen": c.get("chosen", "chosen"),
                                      "rejected": c.get("rejected", "rejected")}}
        elif s.format == "text":  # LLaMA-Factory reads .txt lines into a `text` column too
            info[name] = {"file_name": file_name, "columns": {"prompt": c.get("text", "text")}}
        else:
            skipped[name] = (f"format {s.format}: LLaMA-Factory has no reader for it; run `medtune prepare` and "
                             "register the prepared JSONL (openai messages) instead")
    return info, skipped
