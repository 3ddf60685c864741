"""`medtune synth CONFIG`: source rows → an OpenAI-compatible model → gated, deduplicated training data.

One flow: read the task's sources; skip those the ledger already holds (a rerun continues a killed
or interrupted run); send the rest through `concurrency` workers; each reply is parsed, gated
(schema, grounding, refusal check, dedup against existing data and earlier outputs) and appended to
`ledger.jsonl` as one line, flushed and fsynced, so a kill loses at most the replies in flight and
never duplicates one. Then the ledger is materialised into medtune's own files:

    data.jsonl             {"messages": [...], "meta": {"synth": provenance}}  (format: openai)
    rejected/<reason>.jsonl  every rejected reply or conversation, with its source and detail
    datasets.yaml          a registry entry, so `data.registries: [<dir>/datasets.yaml]` trains on it
    report.json            counts by reason, requests, retries, tokens and cost
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from medtune.config import Config
from medtune.data.dedup import Deduper, key_text
from medtune.data.io import atomic_write_text, read_json_records, write_jsonl
from medtune.errors import ConfigError
from medtune.synth.client import Client
from medtune.synth.tasks import Reject, Source, SynthTask, get, prompt_source, render

log = logging.getLogger(__name__)


def run(cfg: Config) -> Path:
    sc = cfg.synth
    task = get(sc.task)
    if not sc.input:
        raise ConfigError("synth.input is not set: point it at the source rows (see `medtune ls synth`).")
    path = Path(sc.input)
    if not path.is_file():
        raise ConfigError(f"synth.input {str(path)!r} does not exist.")
    out = Path(sc.output_dir or f"outputs/synth/{sc.task}")
    prompt_file, prompt_text = prompt_source(task, sc)
    prompt_hash = hashlib.sha256(prompt_text.encode()).hexdigest()[:16]

    sources, repeated = _unique(list(task.read(path, sc))[: sc.limit])
    ledger = Ledger(out / "ledger.jsonl")
    dedup = _deduper(sc.dedup_against, ledger)
    todo = [s for s in sources if s.id not in ledger.done]
    log.info("%s: %d sources, %d already done, %d to generate", sc.task, len(sources), len(sources) - len(todo),
             len(todo))
    client = Client(sc.endpoint, sc, sc.max_tokens, sc.temperature)
    meta = {"task": sc.task, "endpoint": sc.endpoint.base_url, "prompt": Path(prompt_file).name,
            "prompt_sha256": prompt_hash}
    interrupted = False
    try:
        asyncio.run(_generate(todo, task, prompt_text, client, ledger, dedup, meta, cfg))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        ledger.close()
        materialise(out, ledger.path, client, cfg, {"sources": len(sources), "repeated_sources": repeated,
                                                     "input": str(path), "prompt_sha256": prompt_hash})
    if interrupted:
        raise KeyboardInterrupt
    return out


def _unique(sources: list[Source]) -> tuple[list[Source], int]:
    seen: set[str] = set()
    kept = [s for s in sources if not (s.id in seen or seen.add(s.id))]
    return kept, len(sources) - len(kept)


def _deduper(files: list[str], ledger: Ledger) -> Deduper:
    """Questions already in the given data files, and those this run accepted before, count as seen."""
    dedup = Deduper(exact=True, on="question")
    for f in files:
        for line, row in read_json_records(f):
            if isinstance(row, dict) and isinstance(row.get("messages"), list):
                dedup.check(key_text(row, "question"), f"{f}:{line}")
    for entry in ledger.entries:
        for rec in entry["accepted"]:
            dedup.check(key_text(rec, "question"), entry["where"])
    return dedup


async def _generate(todo: list[Source], task: SynthTask, prompt_text: str, client: Client, ledger: Ledger,
                    dedup: Deduper, meta: dict[str, Any], cfg: Config) -> None:
    from tqdm import tqdm

    if not todo:
        await client.close()
        return
    meta["generator"] = await client.resolve_model()
    queue: asyncio.Queue[Source] = asyncio.Queue()
    for s in todo:
        queue.put_nowait(s)
    bar = tqdm(total=len(todo), desc=f"synth {task.name}", unit="row")

    async def worker() -> None:
        while not queue.empty():
            s = queue.get_nowait()
            reply = await client.chat(render(prompt_text, s, cfg.synth))
            ledger.append(judge(task, s, reply, dedup, meta, cfg))
            bar.update()

    workers = [asyncio.create_task(worker()) for _ in range(max(1, cfg.synth.concurrency))]
    try:
        await asyncio.gather(*workers)
    finally:
        for w in workers:
            w.cancel()
        bar.close()
        await client.close()


def judge(task: SynthTask, s: Source, reply: str, dedup: Deduper, meta: dict[str, Any], cfg: Config) -> dict:
    """One ledger entry: the accepted conversations (with provenance) and every rejection with its reason."""
    entry: dict[str, Any] = {"id": s.id, "where": s.where, "accepted": [], "rejected": []}
    try:
        conversations = task.parse(reply, s, cfg.synth)
    except Reject as r:
        entry["rejected"].append({"reason": r.reason, "detail": str(r), "reply": reply})
        return entry
    for conv in conversations:
        reason = task.check(conv, s, cfg.synth)
        if reason is None:
            dup = dedup.check(key_text({"messages": conv}, "question"), s.where)
            reason = dup[0] if dup else None
        if reason:
            entry["rejected"].append({"reason": reason, "messages": conv})
        else:
            entry["accepted"].append({"messages": conv, "meta": {"synth": {**meta, "source": s.where,
                                                                           "source_id": s.id}}})
    return entry


class Ledger:
    """Append-only JSONL of finished sources. Each entry is one write + flush + fsync; a line cut
    short by a kill is dropped on the next start (that source is simply generated again)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: list[dict[str, Any]] = []
        if path.exists():
            raw = path.read_bytes()
            good = 0
            for line in raw.splitlines(keepends=True):
                try:
                    self.entries.append(json.loads(line))
                except json.JSONDecodeError:
                    break
                if not line.endswith(b"\n"):
                    self.entries.pop()
                    break
                good += len(line)
            if good < len(raw):
                log.warning("%s: dropping %d bytes of an unfinished last entry", path, len(raw) - good)
                with path.open("r+b") as f:
                    f.truncate(good)
        self.done = {e["id"] for e in self.entries}
        self.file = path.open("a", encoding="utf-8")

    def append(self, entry: dict[str, Any]) -> None:
        self.file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.done.add(entry["id"])

    def close(self) -> None:
        self.file.close()


def materialise(out: Path, ledger_path: Path, client: Client, cfg: Config, facts: dict[str, Any]) -> dict:
    entries = [e for _, e in read_json_records(ledger_path)] if ledger_path.exists() else []
    accepted = [rec for e in entries for rec in e["accepted"]]
    write_jsonl(out / "data.jsonl", accepted)
    rejected: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        for r in e["rejected"]:
            rejected.setdefault(r["reason"], []).append({"source_id": e["id"], "where": e["where"], **r})
    for reason, rows in rejected.items():
        write_jsonl(out / "rejected" / f"{reason}.jsonl", rows)
    previous = json.loads((out / "report.json").read_text(encoding="utf-8")).get("usage", {}) \
        if (out / "report.json").exists() else {}
    u = client.usage
    usage = {k: previous.get(k, 0) + getattr(u, k) for k in ("requests", "retries", "prompt_tokens",
                                                              "completion_tokens")}
    usage["errors"] = dict(Counter(previous.get("errors", {})) + Counter(u.errors))
    usage["cost"] = previous.get("cost", 0.0) + u.cost(cfg.synth)
    generators = sorted({rec["meta"]["synth"]["generator"] for rec in accepted})
    report = {"task": cfg.synth.task, **facts, "done": len(entries), "accepted_rows": len(accepted),
              "rejected": {k: len(v) for k, v in sorted(rejected.items())}, "generators": generators,
              "endpoint": cfg.synth.endpoint.base_url, "usage": usage}
    atomic_write_text(out / "report.json", json.dumps(report, ensure_ascii=False, indent=2))
    name = f"synth_{cfg.synth.task}"
    atomic_write_text(out / "datasets.yaml", (
        f"# Written by medtune synth: use with data.registries: [{out / 'datasets.yaml'}], data.datasets: [{name}]\n"
        f"{name}:\n  path: data.jsonl\n  format: openai\n"
        f"  license: generated by {', '.join(generators) or 'a model'}; check its terms and the source data's\n"
        f"  source: medtune synth {cfg.synth.task} from {facts['input']}\n"))
    log.info("synth: %d/%d sources done, %d rows accepted, rejected %s; %d requests, %d retries, %d+%d tokens",
             len(entries), facts["sources"], len(accepted), report["rejected"], usage["requests"], usage["retries"],
             usage["prompt_tokens"], usage["completion_tokens"])
    return report
