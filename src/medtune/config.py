"""Run configs: YAML → nested dataclasses, strictly.

Every verb takes one YAML file plus `dotted.key=value` overrides. Unknown keys fail with a
close-match suggestion, because a misspelt key that is silently ignored (`lerning_rate`) is the
most expensive kind of config bug: it costs a whole training run. The `train:` block is kept as a
dict and handed to Hugging Face `TrainingArguments`, which validates it against its own fields
(see `medtune.train.common.training_arguments`), so we never re-declare the trainer's options.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from medtune.errors import ConfigError

# The schema's classes are part of this module's API (re-exported).
from medtune.schema import (  # noqa: F401
    ApiModelConfig,
    ChatConfig,
    CompareConfig,
    Config,
    DataConfig,
    DisclaimerConfig,
    EndpointConfig,
    EvalConfig,
    EvalModelConfig,
    ExportConfig,
    FinetuneConfig,
    FreezeConfig,
    GenerationConfig,
    JudgeConfig,
    KbConfig,
    LoraConfig,
    MergeConfig,
    ModelConfig,
    PrefixConfig,
    RetentionConfig,
    ServeConfig,
    SynthConfig,
)


class _Loader(yaml.SafeLoader):
    """YAML 1.2 scalars: `5e-5` is a float (1.1 says string) and only true/false are booleans
    (1.1 turns `eval_strategy: no` into False). Both 1.1 readings break trainer arguments."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply `dotted.key=value` overrides and parse it strictly."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"Config file {str(p)!r} does not exist.")
        try:
            raw = load_yaml(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections (model:, data:, train:, ...).")
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    raw = resolve_paths(raw, base)
    for item in overrides:  # paths on the command line are relative to the working directory
        apply_override(raw, item, Path.cwd())
    cfg = parse_dataclass(Config, raw, "")
    cfg.source = str(path) if path is not None else None
    return cfg


def apply_override(raw: dict[str, Any], item: str, base: Path | None = None) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (`1e-4`, `[a, b]`, `null`).
    With `base`, a relative path value is resolved against it (see `resolve_paths`)."""
    if "=" not in item:
        raise ConfigError(f"Override {item!r} must look like section.key=value, e.g. train.learning_rate=5e-5.")
    key, _, value = item.partition("=")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"Override {item!r}: {part!r} is not a section.")
    try:
        parsed = load_yaml(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"Override {item!r}: value is not valid YAML: {e}") from None
    if base is not None:  # resolve as if the override were the whole config: {a: {b: {c: value}}}
        wrapped: Any = parsed
        for part in reversed(parts):
            wrapped = {part: wrapped}
        wrapped = resolve_paths(wrapped, base)
        for part in parts:
            wrapped = wrapped[part]
        parsed = wrapped
    node[parts[-1]] = parsed


# Config keys that name files or folders ("[]": each item of a list, "*": each model of eval.models).
# One rule for every relative path: it is relative to the file that names it, the config file's
# folder for config values (the working directory for command-line overrides); dataset paths are
# relative to their registry file, a task's data to its task file.
PATH_KEYS = {
    "model.name_or_path", "model.adapters", "data.registries", "data.output_dir", "data.decontaminate.benchmarks",
    "finetune.reward_model", "finetune.retention.task", "compare.questions", "compare.adapters", "compare.report",
    "eval.tasks", "eval.models.name_or_path", "eval.models.adapters", "eval.models.predictions", "eval.output_dir",
    "eval.refusal_rules", "synth.input", "synth.output_dir", "synth.prompt", "synth.dedup_against",
    "export.output_dir", "export.adapters", "train.output_dir", "train.resume_from_checkpoint",
    "train.logging_dir", "train.deepspeed", "kb.documents", "kb.index", "kb.embedding_model", "kb.template",
    "kb.qa.input", "kb.qa.output", "kb.qa.absent", "eval.models.kb",
    "merge.adapters", "merge.output_dir", "merge.tasks",
}
# Values that may name a built-in thing instead of a file: kept unless they exist as a file or look like one.
_NAMED = {"model.name_or_path", "eval.tasks", "finetune.retention.task", "train.deepspeed", "kb.template", "merge.tasks"}


def resolve_paths(raw: Any, base: Path, prefix: str = "") -> Any:
    """Make the relative paths of a raw config absolute against `base` (the config file's folder)."""
    if isinstance(raw, dict):
        out = {}
        for key, value in raw.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if dotted == "eval.models" and isinstance(value, list):
                out[key] = [resolve_paths(m, base, dotted) if isinstance(m, dict) else m for m in value]
            elif dotted in PATH_KEYS:
                out[key] = _resolve_one(value, base, dotted)
            else:
                out[key] = resolve_paths(value, base, dotted)
        return out
    return raw


def _resolve_one(value: Any, base: Path, key: str) -> Any:
    if isinstance(value, list):
        return [_resolve_one(v, base, key) for v in value]
    if not isinstance(value, str) or not value or value in ("latest", "true"):
        return value
    if value.startswith("gguf:") and value != "gguf:gemma3-270m":
        return "gguf:" + _absolute(value.removeprefix("gguf:"), base)
    if ":" in value.split("/")[0] or "://" in value:  # tiny:llama, gguf:gemma3-270m, hf://..., C: drives aside
        return value
    if key in _NAMED and not (base / value).exists() and not value.startswith(("./", "../", "/", "~")) \
            and not value.endswith((".yaml", ".yml", ".json")):
        return value  # a hub id (Qwen/Qwen2.5-0.5B), a built-in task name (general_zh)
    return _absolute(value, base)


def _absolute(value: str, base: Path) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


# Names users bring from LLaMA-Factory / peft that difflib cannot match to ours.
_SYNONYMS = {"rank": "r", "lora_rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
             "lora_target": "target_modules", "target": "target_modules", "dataset": "datasets",
             "template_name": "template", "model_name_or_path": "name_or_path", "adapter_name_or_path": "adapters",
             "cutoff_len": "max_length", "val_size": "test_size", "finetuning_type": "method"}


def parse_dataclass(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a dict, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}: {data!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = [_SYNONYMS[key]] if _SYNONYMS.get(key) in fields else difflib.get_close_matches(str(key), fields, n=1)
            hint = f" Did you mean {(where + '.' if where else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"Unknown config key {name!r}.{hint} Allowed here: {', '.join(fields)}.")
        kwargs[key] = check_value(hints[key], value, name)
    return cls(**kwargs)


def check_value(tp: Any, value: Any, name: str) -> Any:
    """Check `value` against a type hint, converting the harmless cases (int → float)."""
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, name)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return check_value(option, value, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{name}: {value!r} is not a valid {_type_name(tp)}.")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(repr, typing.get_args(tp)))}.")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = [e.value for e in tp]
        if value not in allowed and value not in tp.__members__:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, allowed))}.")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{name} must be a list, e.g. [{value!r}]; got {value!r}.")
        (item_tp,) = typing.get_args(tp)
        return [check_value(item_tp, v, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping; got {value!r}.")
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false; got {value!r}.")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name} must be an integer; got {value!r}.")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{name} must be a {tp.__name__}; got {value!r}.")
    return value


def _type_name(tp: Any) -> str:
    return " or ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(tp) if a is not type(None))


def to_dict(cfg: Config) -> dict[str, Any]:
    """The fully resolved config as plain data (what `config.yaml` in an output dir holds)."""
    out = dataclasses.asdict(cfg)
    out.pop("source", None)
    return out


def dump_config(cfg: Config, directory: str | Path) -> Path:
    """Write the resolved config next to a run's outputs, so every artifact says how it was made."""
    from medtune.data.io import atomic_write_text  # every rank of a multi-process run writes it

    return atomic_write_text(Path(directory) / "config.yaml",
                             yaml.safe_dump(to_dict(cfg), allow_unicode=True, sort_keys=False))
