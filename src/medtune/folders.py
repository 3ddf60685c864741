"""Output folders that never look complete when they are not.

Every folder medtune writes as a unit (a run, prepared data, an export, an eval report) gets a
`COMPLETE` file written last, after everything in it is fsynced. Prepared data and exports are
built in a hidden sibling (`.NAME.tmp-PID`) and swapped into place only on success, so a kill or a
full disk leaves the previous complete folder, never new weights beside an old README or a long
truncated JSONL beside an old `report.json`. Loading refuses a medtune folder without its marker.
Checkpoints use the same marker name (`checkpoint-N/COMPLETE`, see `medtune.train.checkpoints`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from medtune.errors import ConfigError

MARKER = "COMPLETE"
# Files that say medtune wrote a folder (so a folder without MARKER is an interrupted one, not a foreign one).
OWN_FILES = ("lineage.json", "report.json", "results.json")
log = logging.getLogger(__name__)


def mark_complete(folder: Path) -> None:
    """fsync everything in `folder`, then write and fsync its marker: after this, the folder is whole."""
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    with open(folder / MARKER, "w", encoding="utf-8") as f:
        f.write(datetime.now(timezone.utc).isoformat(timespec="seconds") + "\n")
        f.flush()
        os.fsync(f.fileno())


def unmark(folder: Path) -> None:
    """A folder about to be rewritten in place (a run's final save) is not complete until marked again."""
    with contextlib.suppress(FileNotFoundError):
        (folder / MARKER).unlink()


def is_medtune(folder: Path) -> bool:
    """Whether medtune wrote this folder (a run, export, prepared data, eval report, or a run's checkpoint)."""
    if folder.name.startswith("checkpoint-") and (folder.parent / "lineage.json").exists():
        return True
    return any((folder / f).exists() for f in OWN_FILES)


def require_complete(folder: str | Path, what: str) -> None:
    """Refuse a folder medtune started writing and did not finish (killed, disk full)."""
    d = Path(folder)
    if not d.is_dir() or (d / MARKER).exists():
        return
    if is_medtune(d):
        raise ConfigError(f"{what} {str(d)!r} is incomplete (no {MARKER} marker): the run, export or save that wrote "
                          "it was interrupted. Finish it (train.resume_from_checkpoint=true, or rerun the export), "
                          "or point at a complete folder.")
    if (d / "config.yaml").exists():
        log.warning("%s %s has no %s marker (written by an older medtune?): its completeness cannot be checked",
                    what, d, MARKER)


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """Build a folder in a hidden sibling and swap it into `out` only on success (marker written last).

    Refuses to replace a non-empty folder that medtune did not write: a mistyped output path must
    not delete someone's files."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists() and not is_medtune(out) \
            and not (out / "config.yaml").exists():
        raise ConfigError(f"{out} already holds files medtune did not write; choose an empty or new output folder "
                          "(medtune replaces its output folders whole).")
    clean_leftovers(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        mark_complete(tmp)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_leftovers(out: Path) -> None:
    """Remove the hidden build folders of earlier runs that were killed (their process is gone)."""
    for p in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        log.info("removing %s, left by an interrupted run", p)
        shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_room(out: Path, need_bytes: int) -> None:
    """Before heavy work: the output's parent is writable and has room for about `need_bytes`."""
    parent = Path(out).resolve().parent
    existing = next((p for p in [parent, *parent.parents] if p.exists()), Path("/"))
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".medtune-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"Cannot write to {parent} ({e.strerror or e}). Choose a writable output folder "
                          "(check permissions and whether the disk is mounted read-only).") from None
    free = shutil.disk_usage(existing).free
    if need_bytes and free < need_bytes * 1.1:
        raise ConfigError(f"Not enough free space in {parent}: about {need_bytes / 2**20:.0f} MiB needed, "
                          f"{free / 2**20:.0f} MiB free. Free some space or choose another output folder.")
