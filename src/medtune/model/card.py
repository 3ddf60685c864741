"""The model card (README.md) of a run or an export folder, written from its lineage record.

The lineage carries every dataset that shaped the weights, earlier runs of a continue-finetune or
stacking chain included, so the licences of the first run's data are still on the card of the last.
"""

from __future__ import annotations

from typing import Any


def model_card(lineage: dict[str, Any], metrics: dict[str, Any], eos: list[int] | None = None) -> str:
    """Markdown: what this model is, which adapters it contains, what it was trained on, under which licences."""
    exported = lineage.get("stage") == "export"
    kind = lineage.get("kind")
    lines = ["---", "library_name: " + ("transformers" if kind == "full" else "peft"),
             "tags: [medtune, medical, chinese]", "---", "",
             "# Medical model " + ("exported by medtune" if exported else "trained by medtune"), "",
             f"- base model: `{lineage.get('base')}`",
             f"- weights: {'full model' if kind == 'full' else 'adapter on the base (load with model.adapters)'}",
             f"- stage / method: {lineage.get('stage')} / {lineage.get('method')}",
             f"- adapters applied before this one: {_paths(lineage.get('requires'))}",
             f"- earlier updates already inside these weights: {_paths(lineage.get('absorbs'))}",
             f"- chat template: `{lineage.get('template')}`" + (" (embedded as `chat_template`)" if exported else ""),
             ]
    if eos:
        lines.append(f"- generation stops at token ids {eos}")
    lines += ["", "## Training data (this run and every run before it)", "",
              "| dataset | licence | source | rows kept | run |", "|---|---|---|---|---|"]
    for d in lineage.get("datasets", []):
        lines.append(f"| {d.get('name')} | {d.get('license')} | {d.get('source')} | {d.get('kept')} | `{d.get('run')}` |")
    if not lineage.get("datasets"):
        lines.append("| unknown | | | | |")
    lines += ["", "The licences above bind the model too: several medical datasets are research-only or "
              "non-commercial.", "", "## Metrics", ""]
    lines += [f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in metrics.items()
              if "loss" in k or k in ("global_step", "train_examples", "eval_examples", "train_pairs")] \
        or ["- (none recorded)"]
    if exported:
        lines += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "tok = AutoTokenizer.from_pretrained(PATH); model = AutoModelForCausalLM.from_pretrained(PATH)",
                  "ids = tok.apply_chat_template([{'role': 'user', 'content': '高血压能吃党参吗？'}],",
                  "                              add_generation_prompt=True, return_tensors='pt')",
                  "print(tok.decode(model.generate(ids, max_new_tokens=128)[0, ids.shape[1]:], skip_special_tokens=True))",
                  "```"]
    else:
        lines += ["", "## Use", "", "```bash", "medtune chat CONFIG.yaml model.adapters=[THIS_FOLDER]   # adapters",
                  "medtune export CONFIG.yaml                              # a standalone folder", "```"]
    lines += ["", "Not medical advice: outputs of a model tuned on forum data can be wrong or harmful.", ""]
    return "\n".join(lines)


def _paths(paths: list[str] | None) -> str:
    return ", ".join(f"`{p}`" for p in paths) if paths else "none"
