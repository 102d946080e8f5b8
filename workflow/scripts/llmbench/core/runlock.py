"""One run of the study at a time in a checkout, held for as long as the run lives.

Snakemake's own lock lets two runs work in one folder when their targets do not overlap, and `snakemake --unlock`
removes it while the run that made it is still alive (its lock is a file, not a held lock). Two runs then measure
at once. This lock is an flock on a file under .snakemake/, taken when a run starts its jobs (the workflow's
onstart hook) and dropped by the kernel when that process ends, however it ends: it names the live run, and
``refuse_unlock`` stops `--unlock` while it is held.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import sys
from pathlib import Path

RUN_LOCK = Path(".snakemake/llmbench-run.lock")


class RunLocked(RuntimeError):
    """Another run of the study is alive in this checkout."""


def holder(path: Path = RUN_LOCK) -> str | None:
    """Who holds the run lock now ("pid N since … : command"), or None where no live run holds it."""
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def take(path: Path = RUN_LOCK) -> int:
    """Take the run lock for this process's life; its file descriptor, left open on purpose (closing it, or the
    process ending, drops the lock). Raises RunLocked naming the live run that holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        who = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunLocked(
            f"another run of this study is alive in {Path.cwd()} ({who}): two runs would measure at once and share "
            "the machine, and every number of both would be wrong. Wait for it to end, or stop it (kill its pid), "
            "then run again.") from None
    os.set_inheritable(fd, False)  # jobs started by this run must not keep it alive after the run is gone
    os.ftruncate(fd, 0)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    os.pwrite(fd, f"pid {os.getpid()} since {started}: {' '.join(sys.argv)}\n".encode(), 0)
    return fd


def refuse_unlock(argv: list[str] | None = None, path: Path = RUN_LOCK) -> None:
    """Raise RunLocked where `snakemake --unlock` is asked for while a run of the study is still alive here:
    removing Snakemake's lock then lets a second run start beside it."""
    if "--unlock" not in (sys.argv if argv is None else argv):
        return
    with contextlib.suppress(OSError):
        who = holder(path)
        if who is not None:
            raise RunLocked(
                f"--unlock refused: a run of this study is still alive here ({who}); Snakemake's lock is its own, "
                "and removing it would let a second run measure beside it. Wait for that run to end or stop it "
                "(kill its pid); a run that is gone holds nothing, and --unlock then works.")
