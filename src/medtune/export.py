"""`medtune export CONFIG`: base + adapters → one standalone Hugging Face folder.

The folder loads in plain transformers (`AutoModelForCausalLM.from_pretrained(dir)`) and renders
prompts exactly as training did: the template file is the tokenizer's `chat_template`, and the
generation config stops at the template's end-of-turn token, so `generate()` and any HF-compatible
server (vLLM, TGI, llama.cpp's converter) end answers where the model learned to. The resolved
config and a model card (base, data and licences, method, metrics) travel with the weights.
A QLoRA adapter is merged into a de-quantised (full-precision) base: `load_model` never quantises.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from medtune.config import Config, dump_config
from medtune.data.encode import end_of_turn_ids
from medtune.errors import ConfigError
from medtune.folders import check_room, staged
from medtune.model.load import load_model, source_gguf, tuned_model

log = logging.getLogger(__name__)


def run(cfg: Config) -> Path:
    import torch

    from medtune.model import lineage
    from medtune.model.card import model_card

    out = Path(cfg.export.output_dir) if cfg.export.output_dir else cfg.output_dir / "merged"
    dtype = getattr(torch, cfg.export.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"export.dtype {cfg.export.dtype!r} is not a torch dtype; use float32, bfloat16 or float16.")
    model_cfg = tuned_model(cfg, cfg.export.adapters)  # the chain resolved: every update exactly once
    check_room(out, _weights_bytes(model_cfg.name_or_path, dtype) * (2 if cfg.export.gguf else 1))  # before loading
    model, tokenizer, template = load_model(model_cfg)  # adapters merged in full precision
    if hasattr(model, "peft_config"):
        raise ConfigError("Prefix / P-tuning adapters cannot be merged into standalone weights; serve them with "
                          "model.adapters=[DIR] instead of exporting.")
    model = model.to(dtype)
    eos = end_of_turn_ids(tokenizer, template)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    base = model_cfg.name_or_path
    record = lineage.for_export(base, model_cfg.adapters, out, template.name, lineage.arch_of(model.config))
    metrics = _read_json(Path(model_cfg.adapters[-1] if model_cfg.adapters else base) / "metrics.json")
    # Built in a hidden sibling and swapped in whole: a kill or a full disk leaves the previous export.
    with staged(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        dump_config(cfg, tmp)
        lineage.write(tmp, record)
        if cfg.export.gguf:
            from medtune.export_gguf import quantize, write_gguf, write_modelfile

            write_gguf(model, tokenizer, tmp / "model.gguf", cfg.export.gguf_dtype, source_gguf(cfg.model.name_or_path))
            for kind in cfg.export.gguf_quantize:  # llama.cpp's own quantiser
                log.info("quantised GGUF: %s", quantize(tmp / "model.gguf", kind))
            if cfg.export.ollama:
                write_modelfile(tmp, template, tokenizer, cfg.generation)
        (tmp / "README.md").write_text(model_card(record, metrics, eos), encoding="utf-8")
    log.info("exported %s + %s to %s", model_cfg.name_or_path, model_cfg.adapters, out)
    return out


def _weights_bytes(name_or_path: str, dtype: Any) -> int:
    """The size the exported weights will have: the base's weight files, rescaled to export.dtype."""
    from medtune.model.load import resolve_model_path

    folder = Path(resolve_model_path(name_or_path))
    files = [*folder.glob("*.safetensors"), *folder.glob("*.bin")] if folder.is_dir() else []
    size = sum(f.stat().st_size for f in files)
    return size * dtype.itemsize // 4 if size else 0  # bases are stored in fp32 here (tiny, gguf conversions)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
