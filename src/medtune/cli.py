"""`medtune VERB CONFIG.yaml [dotted.key=value ...]` and `medtune ls KIND`.

This module imports nothing heavy at module level, so `medtune --help` and `medtune ls` answer in
a fraction of a second; torch and transformers load only inside the verbs that need them.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from collections.abc import Callable

from medtune import __version__
from medtune.errors import MedtuneError

VERBS = {
    "prepare": "convert a config's datasets to JSONL + report.json + dropped/<reason>.jsonl",
    "train": "run the config's stage (finetune.stage) with its method (finetune.method)",
    "chat": "terminal chat with the config's model (+ model.adapters), streaming",
    "serve": "OpenAI-compatible HTTP API (/v1/chat/completions, streaming) over the config's model",
    "webui": "Gradio chat page over the config's model",
    "export": "merge adapters into a standalone Hugging Face folder with template, generation config and card",
    "synth": "generate training data with any OpenAI-compatible endpoint (self_instruct, multi_turn, refusal, "
             "kg_qa, report_structuring): resumable, gated, deduplicated",
    "compare": "base-vs-tuned report: eval loss and side-by-side answers to held-out questions",
    "eval": "benchmark tasks x models: accuracy (log-likelihood and strict generation), open-QA metrics, safety, "
            "retention, paired bootstrap CIs; results.json + report.md/html",
    "merge": "merge LoRA adapters (linear / TIES / DARE, peft) and toward the base: sweep the scale, evaluate, "
             "keep the best by merge.medical vs merge.retention, export it",
    "kb": "build a knowledge base from local documents (BM25 / dense / hybrid, incremental); kb.qa: grounded "
          "SFT data; --query: search it",
    "validate": "check a config, its datasets, template, stage and method without running anything",
}
LS_KINDS = ("templates", "formats", "datasets", "stages", "methods", "engines", "tasks", "task-types", "synth",
            "retrievers")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # bitsandbytes (imported by peft) warns on every command that the optional `kernels` package (a hub
    # download) is missing; it changes nothing for medtune's CPU paths, so keep it out of the output.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        if args.verb == "ls" and args.export:
            return _export_dataset_info(args)
        if args.verb == "ls":
            return _ls(args.kind, args.registries)
        return _verbs()[args.verb](args)
    except MedtuneError as e:
        print(f"medtune {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, read-only or vanished folders: a message, not a traceback
        print(f"medtune {args.verb}: error: {io_message(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        if not _disk_full(str(e)):
            raise
        print(f"medtune {args.verb}: error: {io_message(OSError(errno.ENOSPC, str(e)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def io_message(e: OSError) -> str:
    """One paragraph for an I/O fault: the path, the cause, the fix; outputs are committed only when whole."""
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    kept = ("Nothing half-written was left as a result: outputs are built aside and committed only when complete, "
            "and checkpoints only count once marked COMPLETE.")
    if e.errno == errno.ENOSPC:
        return f"no space left on the device{where}. Free some space (or choose another output folder) and rerun. {kept}"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause = "the file system is read-only" if e.errno == errno.EROFS else "permission denied"
        return f"cannot write{where}: {cause}. Choose a writable output folder or fix its permissions. {kept}"
    if e.errno == errno.ENOENT:
        return f"no such file or folder{where}. Check the path (relative paths are relative to the file that names them)."
    return f"{e.strerror or e}{where}. {kept}"


def _disk_full(message: str) -> bool:
    # torch.save / safetensors report a full disk as RuntimeError / SafetensorError ("unexpected pos",
    # "No space left on device (os error 28)")
    return "No space left" in message or "unexpected pos" in message or "file write failed" in message


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medtune", description="Chinese medical LLM toolkit: data → fine-tune → chat → report.",
        epilog="Example: medtune train configs/tiny/sft_lora.yaml train.output_dir=outputs/try train.learning_rate=1e-3")
    parser.add_argument("--version", action="version", version=f"medtune {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, help_text in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        p.add_argument("config", help="YAML config file")
        p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.num_train_epochs=2")
        if verb == "kb":
            p.add_argument("--query", help="search the built index and print the top kb.top_k chunks")
    ls = sub.add_parser("ls", help="list what exists: " + "|".join(LS_KINDS))
    ls.add_argument("kind", choices=LS_KINDS)
    ls.add_argument("--registries", nargs="*", default=[], help="extra datasets.yaml (or dataset_info.json) files")
    ls.add_argument("--export", choices=["dataset_info"], help="datasets: write LLaMA-Factory's dataset_info.json")
    ls.add_argument("--out", default="dataset_info.json", help="where --export writes (default ./dataset_info.json)")
    return parser


def _verbs() -> dict[str, Callable[[argparse.Namespace], int]]:
    return {"prepare": _prepare, "train": _train, "chat": _chat, "compare": _compare, "eval": _eval, "synth": _synth, "export": _export,
            "serve": _serve, "webui": _webui, "validate": _validate, "kb": _kb, "merge": _merge}


def _config(args: argparse.Namespace):
    from medtune.config import load_config

    return load_config(args.config, args.overrides)


def _threads() -> None:
    # Torch's default of one thread per core is up to 25x slower when the other core is busy
    # (shared/research/offline_assets.md); honour OMP_NUM_THREADS when the user sets it.
    if os.environ.get("OMP_NUM_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _prepare(args: argparse.Namespace) -> int:
    from medtune.data.prepare import prepare

    cfg = _config(args)
    report = prepare(cfg)
    print(f"kept {report['kept']} rows, dropped {sum(report['dropped'].values())} "
          f"{report['dropped'] or ''}; report: {report['output_dir']}/report.json")
    if cfg.data.tokenize:
        from medtune.train.common import tokenize_ahead

        print(f"tokenised cache ({cfg.finetune.stage}): {tokenize_ahead(cfg, report)}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from medtune.train import load_stages

    cfg = _config(args)
    _threads()
    stage = load_stages().get(cfg.finetune.stage)
    metrics = stage(cfg)
    print(json.dumps({k: v for k, v in metrics.items() if "loss" in k or k == "global_step"}))
    print(f"outputs: {cfg.output_dir}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    from medtune.infer.chat_cli import run

    cfg = _config(args)
    _threads()
    return run(cfg)


def _compare(args: argparse.Namespace) -> int:
    from medtune.eval.compare import run

    cfg = _config(args)
    _threads()
    report = run(cfg)
    print(f"report: {report}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from medtune.eval.run import run

    cfg = _config(args)
    _threads()
    out = run(cfg)
    print(f"results: {out / 'results.json'}; report: {out / 'report.md'} and {out / 'report.html'}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from medtune.synth.run import run

    cfg = _config(args)
    out = run(cfg)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    print(f"{report['done']}/{report['sources']} sources done: {report['accepted_rows']} rows accepted, rejected "
          f"{report['rejected'] or 'none'}; data: {out / 'data.jsonl'} (registry: {out / 'datasets.yaml'})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from medtune.infer.api import run

    cfg = _config(args)
    _threads()
    run(cfg)
    return 0


def _webui(args: argparse.Namespace) -> int:
    from medtune.infer.web import run

    cfg = _config(args)
    _threads()
    run(cfg)
    return 0


def _export(args: argparse.Namespace) -> int:
    from medtune.export import run

    cfg = _config(args)
    _threads()
    print(f"exported: {run(cfg)}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from medtune.merge import run

    cfg = _config(args)
    _threads()
    out = run(cfg)
    sweep = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    for c in sweep["candidates"]:
        print(f"  {c['name']:<12} scale {c['scale']:<5g} " + "  ".join(f"{t} {v:.4f}" for t, v in c["scores"].items()))
    print(f"chose {sweep['chosen']}: {sweep['why']}; exported: {sweep['exported']}; report: {sweep['report']}")
    return 0


def _kb(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.query is not None:
        from medtune.kb.ground import Grounder

        for n, hit in enumerate(Grounder(cfg.kb).retrieve(args.query), 1):
            print(f"[{n}] {hit.score:.3f} {hit.where()}\n    {hit.chunk['text'][:200]}")
        return 0
    from medtune.kb.index import build

    report = build(cfg.kb)
    print(f"{report['chunks']} chunks from {report['documents']} document(s) (files: {report['added']} new, "
          f"{report['changed']} changed, {report['unchanged']} unchanged, {report['removed']} removed); skipped "
          f"{report['skipped'] or 'none'}; embedded {report['embedded']} chunk(s); index: {report['index']}")
    if cfg.kb.qa.input:
        from medtune.kb.qa import build_qa

        qa = build_qa(cfg.kb)
        print(f"grounded QA: {qa['rows']} rows ({qa['answerable']} answerable), dropped {qa['dropped'] or 'none'}; "
              f"data: {qa['output']}/data.jsonl (registry: {qa['output']}/datasets.yaml)")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from medtune.train.checks import preflight

    cfg = _config(args)
    preflight(cfg)
    print(f"{args.config}: OK ({cfg.finetune.stage}/{cfg.finetune.method}, template {cfg.model.template}, "
          f"{len(cfg.data.datasets)} dataset(s))")
    return 0


def _export_dataset_info(args: argparse.Namespace) -> int:
    """`medtune ls datasets --export dataset_info`: the registry as LLaMA-Factory's dataset_info.json."""
    from pathlib import Path

    from medtune.data.datasets import load_registry
    from medtune.data.io import atomic_write_text
    from medtune.data.llamafactory import write_dataset_info

    if args.kind != "datasets":
        raise MedtuneError("--export dataset_info goes with `medtune ls datasets`.")
    out = Path(args.out)
    info, skipped = write_dataset_info(load_registry(args.registries), out.resolve().parent)
    atomic_write_text(out, json.dumps(info, ensure_ascii=False, indent=2) + "\n")
    print(f"wrote {len(info)} dataset(s) to {out} (file_name relative to its folder: LLaMA-Factory's dataset_dir)")
    for name, why in skipped.items():
        print(f"  skipped {name}: {why}")
    return 0


def _ls(kind: str, registries: list[str]) -> int:
    if kind == "templates":
        from medtune.data.templates import available

        table = available()
    elif kind == "formats":
        from medtune.data.formats import FORMATS

        table = FORMATS.describe()
    elif kind == "datasets":
        from medtune.data.datasets import load_registry

        table = {n: f"{s.format}, licence {s.license}: {s.description or s.path}"
                 for n, s in sorted(load_registry(registries).items())}
    elif kind == "stages":
        from medtune.train import load_stages

        table = load_stages().describe()
    elif kind == "tasks":
        from medtune.eval.tasks import available

        table = available()
    elif kind == "task-types":
        from medtune.eval import task_types

        task_types.names()  # finds the type modules
        table = task_types.TASK_TYPES.describe()
    elif kind == "synth":
        from medtune.synth.tasks import SYNTH_TASKS

        table = SYNTH_TASKS.describe()
    elif kind == "engines":
        from medtune.infer.engine import ENGINES

        table = ENGINES.describe()
    elif kind == "retrievers":
        from medtune.kb.retrieve import RETRIEVERS

        table = RETRIEVERS.describe()
    else:
        from medtune.model.methods import METHODS

        table = METHODS.describe()
    width = max(map(len, table), default=0)
    for name, desc in table.items():
        print(f"{name:<{width}}  {desc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
