"""A study as one reproducible file: results, figures, tables, provenance and config in a .tar.gz with a manifest.

The archive is byte-for-byte deterministic (members sorted, times and owners zeroed, gzip without a timestamp),
so the same study archives to the same bytes, and MANIFEST.sha256 inside lists the sha256 of every other member.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from llmbench.core.files import DamagedResultError, atomic_path, read_parquet_checked, sha256_file
from llmbench.core.secrets import find_secrets
from llmbench.study.provenance import assert_no_secrets

MANIFEST = "MANIFEST.sha256"
# Members that hold a copy of the study config (results/config/study.yaml, each job's provenance record).
CONFIG_MEMBERS = ("config/study.yaml", ".provenance.json")
# Members read as text for the secret check; parquet and images are data the workflow wrote from measurements.
TEXT_SUFFIXES = {".json", ".yaml", ".yml", ".md", ".csv", ".log", ".txt", ".html", ".svg", ".rst"}


def measured_day(runs: Path) -> str:
    """The day the study's rows were measured (the latest generation, YYYY-MM-DD), so that archiving again writes
    the same bytes; today (UTC) where nothing was measured yet."""
    import datetime as dt

    import polars as pl

    latest = pl.read_parquet(runs, columns=["started_at"])["started_at"].max() if Path(runs).exists() else None
    return (latest or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d")


def manifest_text(members: dict[str, Path]) -> str:
    return "".join(f"{sha256_file(path)}  {name}\n" for name, path in sorted(members.items()))


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_archive(members: dict[str, Path], dest: Path, top: str) -> Path:
    """Write ``dest`` with every member under ``top/``; refuse a text member that holds a secret's value, and a
    parquet or JSON member that cannot be read whole (DamagedResultError naming it and the command to remake it)."""
    for name, path in members.items():
        if Path(name).suffix in TEXT_SUFFIXES:
            text = Path(path).read_text(errors="replace")
            try:
                assert_no_secrets(text)
            except ValueError as e:
                raise ValueError(f"{name}: {e}; it was not archived") from None
            # Only the members that copy the config: elsewhere a model's generated text may look like a key.
            if name.endswith(CONFIG_MEMBERS) and (found := find_secrets(text)):
                raise ValueError(f"{name} holds {found[0].what} (its value not repeated here), a copy of the config "
                                 f"that should have been redacted: {found[0].fix}; it was not archived")
    # A results file cut short (a full disk, a killed copy) would be archived under a valid manifest: its sha256 is
    # of the bytes as they are. Read whole, it is refused naming the file and the job that makes it again.
    for name, path in members.items():
        if name.endswith(".parquet"):
            read_parquet_checked(path)
        elif name.endswith(".json"):
            try:
                json.loads(Path(path).read_bytes())
            except ValueError as e:
                raise DamagedResultError(path, e) from e
    manifest = manifest_text(members).encode()
    with atomic_path(dest) as part:
        with open(part, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(_info(f"{top}/{MANIFEST}", len(manifest)), io.BytesIO(manifest))
                for name in sorted(members):
                    path = Path(members[name])
                    with open(path, "rb") as fh:
                        tar.addfile(_info(f"{top}/{name}", path.stat().st_size), fh)
    return dest


def unreadable(data: bytes, name: str) -> str | None:
    """Why a parquet or JSON member (by ``name``'s suffix) cannot be read whole from ``data``, None if it can (and
    for members of other kinds): every column of every row group of a parquet file, the whole JSON document."""
    try:
        if name.endswith(".parquet"):
            import polars as pl

            pl.read_parquet(io.BytesIO(data))
        elif name.endswith(".json"):
            json.loads(data)
    except Exception as e:  # polars raises ComputeError, OSError, ...; json ValueError: any of them is a bad file
        return f"{type(e).__name__}: {str(e).strip()[:300]}"
    return None


def verify_archive(path: Path) -> list[str]:
    """Problems found by checking every member against the manifest, and by reading every parquet and JSON member
    whole (a file cut short before it was archived matches its manifest line); an empty list: the archive is
    intact. Each problem names the member and, for an unreadable one, the command that makes it again."""
    problems, digests, listed = [], {}, {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member).read() if member.isfile() else b""
            _, _, name = member.name.partition("/")
            if name == MANIFEST:
                for line in data.decode().splitlines():
                    digest, _, listed_name = line.partition("  ")
                    listed[listed_name] = digest
            else:
                digests[name] = hashlib.sha256(data).hexdigest()
                if (why := unreadable(data, name)) is not None:
                    problems.append(f"{name} cannot be read ({why}): it was archived damaged or cut short. Delete "
                                    f"it under the study's folder and make it again: rm {name} && snakemake --cores "
                                    f"all {name}, then archive again (snakemake archive)")
    if not listed:
        return [f"{path} has no {MANIFEST}"]
    for name, digest in sorted(listed.items()):
        if name not in digests:
            problems.append(f"{name} is in the manifest but not in the archive")
        elif digests[name] != digest:
            problems.append(f"{name}: sha256 {digests[name]} but the manifest says {digest}")
    problems += [f"{name} is in the archive but not in the manifest" for name in sorted(set(digests) - set(listed))]
    return problems
