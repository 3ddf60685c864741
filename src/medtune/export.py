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
from medtune.model.load import load_model, source_gguf, tuned_model

log = logging.getLogger(__name__)


def run(cfg: Config) -> Path:
    import torch

    out = Path(cfg.export.output_dir) if cfg.export.output_dir else cfg.output_dir / "merged"
    model_cfg = tuned_model(cfg, cfg.export.adapters)
    model, tokenizer, template = load_model(model_cfg)  # adapters merged in full precision
    if hasattr(model, "peft_config"):
        raise ConfigError("Prefix / P-tuning adapters cannot be merged into standalone weights; serve them with "
                          "model.adapters=[DIR] instead of exporting.")
    dtype = getattr(torch, cfg.export.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"export.dtype {cfg.export.dtype!r} is not a torch dtype; use float32, bfloat16 or float16.")
    model = model.to(dtype)
    eos = end_of_turn_ids(tokenizer, template)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    dump_config(cfg, out)
    if cfg.export.gguf:
        from medtune.export_gguf import write_gguf

        write_gguf(model, tokenizer, out / "model.gguf", cfg.export.gguf_dtype, source_gguf(cfg.model.name_or_path))
    (out / "README.md").write_text(model_card(cfg, model_cfg, template.name, eos), encoding="utf-8")
    log.info("exported %s + %s to %s", model_cfg.name_or_path, model_cfg.adapters, out)
    return out


def model_card(cfg: Config, model_cfg: Any, template: str, eos: list[int]) -> str:
    """A Markdown card: what this model is, what it was trained on and under which licences."""
    run_dir = cfg.output_dir if cfg.train.get("output_dir") else None
    metrics = _read_json(run_dir / "metrics.json") if run_dir else {}
    data = _read_json(run_dir / "data" / "report.json") if run_dir else {}
    lines = ["---", "library_name: transformers", "tags: [medtune, medical, chinese]", "---", "",
             "# Medical model exported by medtune", "",
             f"- base model: `{cfg.model.name_or_path}`",
             f"- merged adapters: {', '.join(f'`{a}`' for a in model_cfg.adapters) or 'none (full weights)'}",
             f"- stage / method: {cfg.finetune.stage} / {cfg.finetune.method}",
             f"- chat template: `{template}` (embedded as `chat_template`); generation stops at token ids {eos}",
             "", "## Training data", "", "| dataset | licence | source | rows kept | dropped |", "|---|---|---|---|---|"]
    for name, d in data.get("datasets", {}).items():
        lines.append(f"| {name} | {d['license']} | {d['source']} | {d['kept']} | {sum(d['dropped'].values())} |")
    if not data:
        lines.append(f"| {', '.join(cfg.data.datasets) or 'unknown'} | see the registry | | | |")
    lines += ["", "The licences above bind the model too: several medical datasets are research-only or "
              "non-commercial.", "", "## Metrics", ""]
    lines += [f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in metrics.items()
              if "loss" in k or k in ("global_step", "train_examples", "eval_examples")] or ["- (none recorded)"]
    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "tok = AutoTokenizer.from_pretrained(PATH); model = AutoModelForCausalLM.from_pretrained(PATH)",
              "ids = tok.apply_chat_template([{'role': 'user', 'content': '高血压能吃党参吗？'}],",
              "                              add_generation_prompt=True, return_tensors='pt')",
              "print(tok.decode(model.generate(ids, max_new_tokens=128)[0, ids.shape[1]:], skip_special_tokens=True))",
              "```", "", "Not medical advice: outputs of a model tuned on forum data can be wrong or harmful.", ""]
    return "\n".join(lines)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
