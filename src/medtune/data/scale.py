"""`data.engine: datatrove`: `medtune prepare` scaled out over processes or nodes, memory bounded on disk.

The same result as the in-process engine (the same kept rows, `dropped/` files, counts and card),
computed in three stages on datatrove's executors (local processes, Slurm, Ray):

1. **clean** (one task per group of input shards, in parallel): convert → cleaning steps →
   decontamination check for every row, written in input order to `events/<unit>.jsonl`; each
   surviving row's dedup bands (the exact digest and the MinHash bands, `dedup.Deduper.bands`) go
   to datatrove's signature files `sigs/bucket_XXX/<task>.minhash.sig`, sorted per task.
2. **buckets** (one task per band): datatrove's `MinhashDedupBuckets` merges the sorted signature
   files of all tasks and writes the pairs of consecutive rows with the same band value (`dups/`).
3. **resolve + place** (this process): each run of equal values keeps its first row, every later row
   is a duplicate of it; the exact band outranks the MinHash ones, the earliest first row wins
   (`Resolved`). Then the events are replayed in input order through `prepare._place`, exactly as
   the in-process engine places its rows.

Memory: a clean task holds one row at a time plus its own signatures while sorting them (rows of the
task × bands × 8 × rows per band bytes); a buckets task streams; resolving holds the duplicates only
(about 17 bytes per duplicate row and band). Input order across tasks is (task, row within task), and
tasks take contiguous shards in config order, so "earlier" means the same thing on both engines.
Not supported here (they need the whole dataset in one process): `data.answers` other than `all`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medtune.config import Config
from medtune.data import io
from medtune.data.datasets import DatasetSpec
from medtune.errors import ConfigError, DataError

log = logging.getLogger(__name__)
# Formats that read one folder of related files as one dataset (a question file and an answer file):
# such a dataset is one unit of work; every other dataset is split into its shards.
WHOLE = ("cmedqa2", "turns")
EXECUTORS = ("local", "slurm", "ray")
_PAIR = np.dtype([("t1", "<u4"), ("d1", "<u4"), ("t2", "<u4"), ("d2", "<u4")])


@dataclass
class Unit:
    """One shard of a dataset (or a whole dataset whose format needs all its files): `spec` as
    configured (row references are made against its path), `read` the spec restricted to the shard."""

    spec: DatasetSpec
    read: DatasetSpec


def units(specs: list[DatasetSpec]) -> list[Unit]:
    out = []
    for spec in specs:
        if spec.format in WHOLE or "://" in spec.path:
            out.append(Unit(spec, spec))
        else:
            out.extend(Unit(spec, replace(spec, path=str(shard))) for shard in io.shards(spec.path))
    return out


def task_units(n_units: int, rank: int, tasks: int) -> range:
    """The contiguous units task `rank` of `tasks` cleans (contiguous, so task order is input order)."""
    return range(rank * n_units // tasks, (rank + 1) * n_units // tasks)


def options(cfg: Config) -> dict[str, Any]:
    """`data.datatrove` with defaults: executor local, workers = the CPUs, one task per unit."""
    opts = {"executor": "local", "workers": None, "tasks": None, "slurm": {}, "ray": {}, **cfg.data.datatrove}
    unknown = set(opts) - {"executor", "workers", "tasks", "slurm", "ray"}
    if unknown:
        raise ConfigError(f"data.datatrove: unknown key(s) {sorted(unknown)}; known: executor, workers, tasks, "
                          "slurm, ray.")
    if opts["executor"] not in EXECUTORS:
        raise ConfigError(f"data.datatrove.executor must be one of {', '.join(EXECUTORS)}; got {opts['executor']!r}.")
    if cfg.data.answers != "all":
        raise ConfigError("data.answers: first/longest/merge groups a dataset's answers in one process; use "
                          "data.engine: local for it (or prepare the answers first).")
    return opts


def scaled(cfg: Config, specs: list[DatasetSpec], passes: Any, work: Path) -> Iterator[tuple[DatasetSpec, Iterator]]:
    """Run stages 1–2 on the executor, then yield (dataset, its cleaned rows in input order) for
    `prepare._one`; `passes.dedup` becomes the resolved duplicate table. `work` is removed at the end."""
    try:
        import datatrove  # noqa: F401
    except ImportError:
        raise ConfigError("data.engine: datatrove needs datatrove: pip install 'medtune[scale]'.") from None
    opts = options(cfg)
    work.mkdir(parents=True, exist_ok=True)
    try:
        parts = units(specs)
        tasks = max(1, min(opts["tasks"] or len(parts), len(parts)))
        workers = opts["workers"] or len(os.sched_getaffinity(0))
        dedup = passes.dedup
        started = time.monotonic()
        pipeline = [Clean(cfg, parts, tasks, work, dedup)]
        if dedup is not None:
            pipeline.append(Bands(work / "sigs", dedup))
        stages = [("clean", pipeline, tasks)]
        if dedup is not None:
            from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
            from datatrove.utils.hashing import HashConfig

            n_bands = len(dedup.bands("x"))
            mh = MinhashConfig(num_buckets=n_bands, hashes_per_bucket=dedup.rows,
                               hash_config=HashConfig(precision=64, hash_fc="sha1"))
            stages.append(("buckets", [MinhashDedupBuckets(str(work / "sigs"), str(work / "dups"), config=mh)], n_bands))
        run_stages(stages, opts, workers, work / "logs")
        log.info("datatrove stages done in %.0f s (%d tasks, %d workers, executor %s)",
                 time.monotonic() - started, tasks, workers, opts["executor"])
        if dedup is not None:
            passes.dedup = Resolved(work / "dups", dedup)
        yield from _replay(parts, tasks, work / "events", passes.dedup)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _replay(parts: list[Unit], tasks: int, events: Path, resolved: Resolved | None) -> Iterator[tuple[DatasetSpec, Iterator]]:
    from medtune.data.prepare import Cleaned

    task_of = {i: t for t in range(tasks) for i in task_units(len(parts), t, tasks)}

    def rows(spec_units: list[tuple[int, Unit]]) -> Iterator[Cleaned]:
        for i, _ in spec_units:
            task = task_of[i]
            with open(events / f"{i:05d}.jsonl", encoding="utf-8") as f:
                for line in f:
                    c = Cleaned(**json.loads(line))
                    if c.row is not None and resolved is not None:
                        resolved.at(task)
                    yield c

    by_spec: dict[str, list[tuple[int, Unit]]] = {}
    for i, u in enumerate(parts):
        by_spec.setdefault(u.spec.name, []).append((i, u))
    for spec_units in by_spec.values():
        yield spec_units[0][1].spec, rows(spec_units)


class Clean:
    """Stage 1, a datatrove pipeline step: clean this task's units, write their events, and pass each
    surviving row's dedup text on (as a datatrove Document) to the band writer."""

    name = "medtune clean"
    type = "medtune"

    def __init__(self, cfg: Config, parts: list[Unit], tasks: int, work: Path, dedup: Any) -> None:
        self.cfg, self.parts, self.tasks, self.work, self.dedup = cfg, parts, tasks, work, dedup

    def __call__(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        from datatrove.data import Document

        from medtune.data.dedup import Decontaminator, key_text
        from medtune.data.formats import FORMATS
        from medtune.data.prepare import clean
        from medtune.data.steps import build

        d = self.cfg.data
        steps = build(d.steps)
        decontam = Decontaminator(**d.decontaminate) if d.decontaminate else None
        (self.work / "events").mkdir(parents=True, exist_ok=True)
        n = 0
        for i in task_units(len(self.parts), rank, self.tasks):
            unit = self.parts[i]
            with open(self.work / "events" / f"{i:05d}.jsonl", "w", encoding="utf-8") as f:
                for item in FORMATS.get(unit.spec.format)(unit.read):
                    c = clean(item, steps, decontam)
                    f.write(json.dumps({k: v for k, v in vars(c).items() if v is not None and v != [] and v != {}},
                                       ensure_ascii=False) + "\n")
                    if c.row is not None and self.dedup is not None:
                        yield Document(text=key_text(c.row, self.dedup.on), id=str(n))
                        n += 1


class Bands:
    """Stage 1's second step: every row's bands, in datatrove's signature format (one file per band and
    task: `rows` uint64 values and the row's index, sorted), so its bucket stage can merge them."""

    name = "medtune dedup bands"
    type = "medtune"

    def __init__(self, folder: Path, dedup: Any) -> None:
        self.folder, self.dedup = folder, dedup

    def __call__(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        r = self.dedup.rows
        record = np.dtype([(f"field{i + 1}", "<u8") for i in range(r)] + [(f"field{r + 1}", "<u4")])
        paths = [self.folder / f"bucket_{b:03d}" / f"{rank:05d}.minhash.sig" for b in range(len(self.dedup.bands("x")))]
        with contextlib.ExitStack() as stack:
            for p in paths:
                p.parent.mkdir(parents=True, exist_ok=True)
            handles = [stack.enter_context(open(p, "wb")) for p in paths]
            for index, doc in enumerate(data or ()):
                bands = self.dedup.bands(doc.text)
                tail = struct.pack("<I", index)
                for h, (_, band) in zip(handles, bands, strict=True):
                    h.write(band.tobytes() + tail)
        for p in paths:  # datatrove's bucket stage merges sorted files
            records = np.fromfile(p, dtype=record)
            records.sort(order=record.names)
            records.tofile(p)
        return iter(())


class Resolved:
    """The duplicate table of stage 3, consulted in input order by `prepare._place` like a `Deduper`:
    for every row (task, index) that is a duplicate, its reason and the (task, index) of the first row."""

    def __init__(self, dups: Path, dedup: Any) -> None:
        self.on = dedup.on
        reasons = [reason for reason, _ in dedup.bands("x")]
        member = np.zeros(0, np.uint64)
        code = np.zeros(0, np.uint8)
        first = np.zeros(0, np.uint64)
        for b, reason in enumerate(reasons):
            for path in sorted(dups.glob(f"{b:05d}_*.dups")):
                pairs = np.fromfile(path, dtype=_PAIR)
                if not len(pairs):
                    continue
                a = (pairs["t1"].astype(np.uint64) << np.uint64(32)) | pairs["d1"]
                m = (pairs["t2"].astype(np.uint64) << np.uint64(32)) | pairs["d2"]
                # Pairs are consecutive rows of one value's run, in order: a pair whose left row is not
                # the previous pair's right row starts a new run, and a run's first row is its start.
                starts = np.ones(len(pairs), bool)
                starts[1:] = a[1:] != m[:-1]
                run_first = a[starts][np.cumsum(starts) - 1]
                member = np.concatenate([member, m])
                code = np.concatenate([code, np.full(len(m), 0 if reason == "duplicate_exact" else 1, np.uint8)])
                first = np.concatenate([first, run_first])
                order = np.lexsort((first, code, member))  # per row: exact before near, then earliest
                member, code, first = member[order], code[order], first[order]
                keep = np.ones(len(member), bool)
                keep[1:] = member[1:] != member[:-1]
                member, code, first = member[keep], code[keep], first[keep]
        self.member, self.code, self.first = member, code, first
        self.needed = np.unique(first)  # rows whose reference a duplicate will name
        self.refs: dict[int, str] = {}
        self._m = self._n = 0
        self._task, self._index = -1, 0
        self.key = 0

    def at(self, task: int) -> None:
        """The next surviving row belongs to `task` (its index within the task is counted here)."""
        if task != self._task:
            self._task, self._index = task, 0
        self.key = (task << 32) | self._index
        self._index += 1

    def check(self, key_text: str, where: str) -> tuple[str, str] | None:
        key = self.key
        if self._n < len(self.needed) and self.needed[self._n] == key:
            self.refs[key] = where
            self._n += 1
        if self._m < len(self.member) and self.member[self._m] == key:
            hit = ("duplicate_exact" if self.code[self._m] == 0 else "duplicate_near", self.refs[int(self.first[self._m])])
            self._m += 1
            return hit
        return None


def run_stages(stages: list[tuple[str, list, int]], opts: dict[str, Any], workers: int, logs: Path) -> None:
    """Each stage on the chosen executor, one after the other (a stage reads the previous one's files)."""
    kind = opts["executor"]
    for name, pipeline, tasks in stages:
        folder = str(logs / name)
        if kind == "local":
            LocalExecutor(pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=folder).run()
        elif kind == "ray":
            from datatrove.executor import RayPipelineExecutor

            ray = dict(opts["ray"])
            RayPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=folder, skip_completed=False,
                                cpus_per_task=ray.pop("cpus_per_task", 1), mem_per_cpu_gb=ray.pop("mem_per_cpu_gb", 2),
                                **ray).run()
        else:
            _slurm(name, pipeline, tasks, workers, folder, dict(opts["slurm"]))


def _slurm(name: str, pipeline: list, tasks: int, workers: int, folder: str, slurm: dict[str, Any]) -> None:
    """Submit one stage as a Slurm array job and wait for its completion files (`medtune prepare` runs
    on a login node; the logging folder must be on the filesystem the nodes share)."""
    from datatrove.executor import SlurmPipelineExecutor

    for key in ("partition", "time"):
        if key not in slurm:
            raise ConfigError(f"data.datatrove.slurm.{key} is required for the slurm executor (e.g. partition: cpu, "
                              "time: '04:00:00').")
    poll = slurm.pop("poll_seconds", 30)
    ex = SlurmPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=folder, skip_completed=False,
                               job_name=f"medtune-{name}", **slurm)
    ex.run()
    import subprocess

    while incomplete := ex.get_incomplete_ranks(skip_completed=True):
        time.sleep(poll)
        queued = subprocess.run(["squeue", "-h", "-j", str(ex.job_id)], capture_output=True, text=True).stdout.strip()
        if not queued and ex.get_incomplete_ranks(skip_completed=True):  # the job left the queue unfinished
            raise DataError(f"Slurm job {ex.job_id} (stage {name}) ended with {len(incomplete)} of {tasks} tasks "
                            f"incomplete; their logs: {folder}/logs/ and the Slurm logs in {folder}/slurm_logs/.")


class LocalExecutor:
    """datatrove's local executor, with a process pool that fails fast: a task that raises fails the run
    with its error, and a worker that dies (killed, out of memory) fails it too, where a
    multiprocessing Pool would wait for it forever."""

    def __init__(self, pipeline: list, tasks: int, workers: int, logging_dir: str) -> None:
        from datatrove.executor import LocalPipelineExecutor

        self.inner = LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir,
                                           skip_completed=False)
        self.tasks, self.workers = tasks, workers

    def run(self) -> None:
        import multiprocessing

        if self.workers <= 1:
            for rank in range(self.tasks):
                _task(self.inner, rank)
            return
        with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_task, self.inner, rank): rank for rank in range(self.tasks)}
            try:
                for future in futures:
                    rank = futures[future]
                    future.result()
            except BrokenProcessPool:
                for f in futures:
                    f.cancel()
                raise DataError(f"a prepare worker process died (killed, or out of memory) before task {rank} of "
                                f"{self.tasks} finished; nothing was written. Lower data.datatrove.workers, or give "
                                "the machine more memory, and run prepare again.") from None
            except BaseException:
                for f in futures:
                    f.cancel()
                raise


def _task(executor: Any, rank: int) -> None:
    """One task in a worker process. datatrove logs each task to `<logs>/logs/task_N.log` and its errors to
    stderr too; the error comes back to `medtune prepare` as the exception, so stderr is kept quiet."""
    from copy import deepcopy

    with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):
        deepcopy(executor)._run_for_rank(rank, local_rank=1)
