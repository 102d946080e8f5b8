"""File utilities of the fetch, derive, bench and archive steps: a file's sha256 (cached by its stat for model
files read by every job), a file that appears whole or not at all, and a write that fails naming the path, its
filesystem and the fix (a full disk above all), and a results file read that names the file when it is damaged."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

CHUNK = 8 << 20


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of the file at ``path``, read in 8 MiB chunks (model files are tens of GB); OSError if unread."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def cached_sha256(path: str | Path) -> tuple[str, bool]:
    """The hex sha256 of the file at ``path`` and whether it came from its cache (True) or was read (False).

    Bench, accuracy and KLD jobs hash the model file they run (tens of GB) to prove it is the one its record names;
    reading it whole in every job would cost minutes each, so the digest is kept beside the file, in
    ``.<name>.sha256.json``, under the file's (size, mtime_ns, ctime_ns, inode, device) and used while these are
    unchanged. Any write through the filesystem changes ctime, which no program can set back (``touch -d`` or
    ``os.utime`` restore mtime, not ctime), so an edited, copied-over or re-fetched file is read again. What it
    cannot see is damage below the filesystem (a bit flipped on the disk itself): ``sha256_file`` reads the bytes.
    A cache that cannot be written (a read-only model folder) only costs a re-read next time. OSError if ``path``
    cannot be read."""
    path = Path(path)
    key = _stat_key(path)
    cache = path.with_name(f".{path.name}.sha256.json")
    try:
        kept = json.loads(cache.read_text())
        if kept.get("key") == key and isinstance(kept.get("sha256"), str):
            return kept["sha256"], True
    except (OSError, ValueError, AttributeError):  # no cache yet, or one cut short: read the file
        pass
    digest = sha256_file(path)
    if _stat_key(path) == key:  # a file changed while it was read has no digest worth keeping
        with contextlib.suppress(OSError):
            write_text_atomically(cache, json.dumps({"key": key, "sha256": digest}) + "\n")
    return digest, False


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class DamagedResultError(RuntimeError):
    """A results file that exists but cannot be read whole (cut short by a full disk or a killed copy, or damaged);
    its message names the file and the command that makes it again. ``path`` is the file."""

    def __init__(self, path: str | Path, error: BaseException):
        self.path = Path(path)
        super().__init__(
            f"{path} cannot be read ({type(error).__name__}: {str(error).strip()[:500]}): the file is cut short or "
            f"damaged (a full disk, a killed job or copy), or was written by another version of the workflow. "
            f"Delete it and make it again: rm {path} && snakemake --cores all {path} (then run the workflow again)")


def read_parquet_checked(path: str | Path, columns: list[str] | None = None):
    """The polars DataFrame in the parquet file at ``path`` (only ``columns`` where given), read whole;
    DamagedResultError naming the file and the fix if it cannot be read (a file that is absent: FileNotFoundError)."""
    import polars as pl

    if not Path(path).exists():
        raise FileNotFoundError(errno.ENOENT, "no such results file", str(path))
    try:
        return pl.read_parquet(path, columns=columns)
    except Exception as e:  # polars raises ComputeError, ColumnNotFoundError, OSError, ... for a bad file
        raise DamagedResultError(path, e) from e


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; move it into place only if the block succeeds.

    A full disk, an exceeded quota, a read-only filesystem or a file too large for it, met by the block (as
    OSError, or a polars/pyarrow error quoting "os error N") or by the move, is raised as WriteFailed naming
    ``dest``, its filesystem and the fix (write_failure); the temporary file is removed, so nothing partial stays.
    Other errors of the block pass unchanged: it may also read or download, and those are not about ``dest``."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        if (failed := write_failure(e, dest)) is None:
            raise
        raise failed from e
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp makes the file private (0600); the result should have the mode any new file gets.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    except Exception as e:
        failed = None if isinstance(e, WriteFailed) else write_failure(e, dest, only=FILESYSTEM_ERRORS)
        if failed is None:
            raise
        raise failed from e
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(dest: str | Path, write: Callable[[Path], object]) -> Path:
    """Write ``dest`` whole or not at all: ``write(tmp)`` writes a temporary file beside it (e.g.
    ``frame.write_parquet``), moved into place when it returns; returns ``dest``.

    Any OSError of the write (or a polars/pyarrow error quoting one) is raised as WriteFailed naming ``dest``, its
    filesystem and the fix; ``dest`` is then as it was before (absent, or its previous whole version)."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        try:
            write(tmp)
        except WriteFailed:
            raise
        except Exception as e:
            if (failed := write_failure(e, dest)) is None:
                raise
            raise failed from e
    return dest


def write_text_atomically(dest: str | Path, text: str) -> Path:
    """``dest`` holding ``text`` (UTF-8), written whole or not at all as write_atomically."""
    return write_atomically(dest, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class WriteFailed(OSError):
    """A file that could not be written. Its message names the file, the filesystem it is on (with its free space)
    and the fix; ``errno`` is the cause's (ENOSPC for a full disk), so ``except OSError`` still catches it."""

    def __str__(self) -> str:  # the sentence alone: OSError's "[Errno 28] " prefix says less than the sentence
        return self.strerror


# Write errors that are the filesystem's, whatever else the block did: atomic_path names the destination for these.
FILESYSTEM_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
_FIXES = {
    errno.ENOSPC: "free space on that filesystem (or move the results to a larger one), then run the workflow again",
    errno.EDQUOT: "free space under your quota on that filesystem (or raise the quota), then run the workflow again",
    errno.EROFS: "the filesystem is mounted read-only: remount it read-write or run from a writable folder",
    errno.EFBIG: "the file is larger than that filesystem allows: write the results to another filesystem",
    errno.EACCES: "make the folder writable for this user, then run the workflow again",
    errno.EPERM: "make the folder writable for this user, then run the workflow again",
    errno.EIO: "the device reported an I/O error: check the disk (dmesg, smartctl) before running again",
}
# Rust's std::io (polars, pyarrow's messages) quotes the OS error as "(os error 28)"; Python as "[Errno 28]".
_QUOTED_ERRNO = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")


def error_number(error: BaseException) -> int | None:
    """The OS error number behind ``error``: an OSError's errno, or the one its message quotes (polars raises a
    ComputeError "... No space left on device (os error 28)" and an OSError without errno); None if none."""
    if isinstance(error, OSError) and error.errno:
        return error.errno
    if m := _QUOTED_ERRNO.search(str(error)):
        return int(m.group(1) or m.group(2))
    return None


def filesystem_of(path: str | Path) -> str:
    """The mount point holding ``path`` (or its nearest existing parent) with its free and total space, e.g.
    "/data (0.0 GiB free of 1.8 TiB)"; the path alone where it cannot be read."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    mount = p
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        usage = shutil.disk_usage(mount)
    except OSError:
        return str(mount)
    return f"{mount} ({_size(usage.free)} free of {_size(usage.total)})"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def write_failure(error: BaseException, dest: str | Path, only: frozenset[int] | None = None) -> WriteFailed | None:
    """``error``, met writing ``dest``, as a WriteFailed whose message says what happened ("no space left on device
    writing <dest>"), on which filesystem and the fix; None if it carries no OS error number (or one outside
    ``only``)."""
    code = error_number(error)
    if code is None or (only is not None and code not in only):
        return None
    what = os.strerror(code)
    what = what[0].lower() + what[1:]
    fix = _FIXES.get(code, "remove the cause, then run the workflow again")
    return WriteFailed(code, f"{what} writing {dest} (filesystem {filesystem_of(dest)}): {fix}. "
                             f"Nothing partial was left at {dest}. ({type(error).__name__}: {error})")
