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
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from medtune.errors import ConfigError

# The schema's classes are part of this module's API (re-exported).
from medtune.schema import (  # noqa: F401
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
    LoraConfig,
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
    for item in overrides:
        apply_override(raw, item)
    cfg = parse_dataclass(Config, raw, "")
    cfg.source = str(path) if path is not None else None
    return cfg


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (`1e-4`, `[a, b]`, `null`)."""
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
        node[parts[-1]] = load_yaml(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"Override {item!r}: value is not valid YAML: {e}") from None


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
        kwargs[key] = _coerce(hints[key], value, name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, name: str) -> Any:
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
                return _coerce(option, value, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{name}: {value!r} is not a valid {_type_name(tp)}.")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{name} must be a list, e.g. [{value!r}]; got {value!r}.")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(item_tp, v, f"{name}[{i}]") for i, v in enumerate(value)]
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
