"""Bar charts for the eval report (matplotlib, PNG): headline metrics, and accuracy per category."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.eval import task_types as types

# Chinese category names need a CJK font; the first one installed wins (fonts-wqy-zenhei on Debian).
CJK_FONTS = ["WenQuanYi Zen Hei", "Noto Sans CJK SC", "Source Han Sans SC", "SimHei", "Microsoft YaHei",
             "DejaVu Sans"]


def draw(folder: Path, summary: dict[str, Any]) -> dict[str, str]:
    """Write the charts; return report key → path relative to the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _register_cjk_fonts()
    plt.rcParams["font.family"] = "sans-serif"
    plt.rcParams["font.sans-serif"] = CJK_FONTS
    plt.rcParams["axes.unicode_minus"] = False
    folder.mkdir(parents=True, exist_ok=True)
    models = summary["models"]
    charts: dict[str, str] = {}
    labels, values = [], {m: [] for m in models}
    for name, task in summary["tasks"].items():
        key = types.task_type(task["type"]).metrics[0]  # the headline metric
        for mode, block in task["modes"].items():
            labels.append(f"{name}\n{mode}")
            for m in models:
                d = block["models"].get(m)
                values[m].append(100 * d["metrics"][key]["value"] if d else 0.0)
    if labels:
        _bars(plt, labels, values, "% (accuracy / ROUGE-L / refusal rate / MAP)", folder / "overview.png")
        charts["overview"] = "charts/overview.png"
    for name, task in summary["tasks"].items():
        for mode, block in task["modes"].items():
            cats = sorted({c for d in block["models"].values() for c in d.get("categories", {})})
            if len(cats) > 1:
                vals = {m: [100 * d["categories"].get(c, {}).get("accuracy", 0.0) for c in cats]
                        for m, d in block["models"].items()}
                path = folder / f"{name}.{mode}.png"
                _bars(plt, cats, vals, f"{name} ({mode}): accuracy %", path)
                charts[f"{name}.{mode}"] = f"charts/{path.name}"
    return charts


def _register_cjk_fonts() -> None:
    """matplotlib caches its font list on first use; a CJK font installed later is missing from it
    (every Chinese label then renders as boxes). Add installed CJK font files explicitly."""
    from matplotlib import font_manager

    if {f.name for f in font_manager.fontManager.ttflist} & set(CJK_FONTS[:-1]):
        return
    for path in font_manager.findSystemFonts():
        if any(k in path.lower() for k in ("wqy", "cjk", "simhei", "yahei", "sourcehan")):
            font_manager.fontManager.addfont(path)


def _bars(plt: Any, labels: list[str], values: dict[str, list[float]], ylabel: str, path: Path) -> None:
    width = 0.8 / max(len(values), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) * max(1, len(values)) / 1.5), 4))
    for i, (model, vals) in enumerate(values.items()):
        xs = [x + i * width for x in range(len(labels))]
        ax.bar(xs, vals, width, label=model)
    ax.set_xticks([x + width * (len(values) - 1) / 2 for x in range(len(labels))])
    ax.set_xticklabels(labels, fontsize=8, rotation=30 if len(labels) > 6 else 0, ha="right" if len(labels) > 6
                       else "center")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
