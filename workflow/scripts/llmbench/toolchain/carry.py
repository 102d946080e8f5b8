"""What travels to a machine reached only by carrying files: one xz-compressed tar, cut into parts under a limit.

The GPU machine of benchmarks/gpu has no package registry and takes at most 64 MiB per call (the working tree
included). The bundle (the trimmed llama.cpp source and the Python wheels missing there) is one stream, cut into
``part-NN`` files of at most ``part_bytes``, with ``bundle.json`` naming each part's size and sha256. Where a
bundle needs more than one part, each call carries the next and the parts already there stay (the machine keeps
ignored files between calls while it is held); :func:`missing_parts` says which are still to carry.
Standard library only at import (and llmbench.core.files): it runs there before anything is installed.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import tarfile
from pathlib import Path

from llmbench.core.files import sha256_file

MIB = 1 << 20
LIMIT_BYTES = 64 * MIB  # one call's working tree and carried files together (the device tool's README)
MANIFEST = "bundle.json"


class CarryError(RuntimeError):
    pass


def stored_wheel(wheel: Path, dest: Path) -> Path:
    """``wheel`` rewritten with its members stored, not deflated (still a valid wheel: RECORD hashes the contents),
    so that xz compresses the contents themselves: polars' 54 MB wheel travels as about 31 MB."""
    import zipfile

    out = dest / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            fresh = zipfile.ZipInfo(info.filename, info.date_time)  # a member's name, time and mode, nothing else
            fresh.external_attr = info.external_attr
            dst.writestr(fresh, src.read(info.filename), zipfile.ZIP_STORED)
    return out


def make_bundle(files: dict[str, Path], out_dir: Path, part_bytes: int, note: dict | None = None) -> dict:
    """Pack ``files`` ({name in the bundle: path}) as one tar.xz cut into parts of at most ``part_bytes`` in
    ``out_dir``; write and return the manifest (parts with bytes and sha256, members with bytes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("part-*"):
        old.unlink()
    stream = out_dir / "bundle.tar.xz.tmp"
    with lzma.open(stream, "wb", preset=9 | lzma.PRESET_EXTREME) as xz, tarfile.open(fileobj=xz, mode="w") as tf:
        for name, path in sorted(files.items()):
            info = tf.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with open(path, "rb") as fh:
                tf.addfile(info, fh)
    parts = []
    with open(stream, "rb") as fh:
        while chunk := fh.read(part_bytes):
            part = out_dir / f"part-{len(parts) + 1:02d}"
            part.write_bytes(chunk)
            parts.append({"name": part.name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    stream.unlink()
    manifest = {"parts": parts, "members": {n: Path(p).stat().st_size for n, p in sorted(files.items())},
                "part_bytes": part_bytes, **(note or {})}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def missing_parts(bundle_dir: Path) -> list[str]:
    """Parts of the bundle in ``bundle_dir`` not there yet or not whole (size or sha256 differ), in order."""
    manifest = json.loads((Path(bundle_dir) / MANIFEST).read_text())
    missing = []
    for part in manifest["parts"]:
        path = Path(bundle_dir) / part["name"]
        if not path.is_file() or path.stat().st_size != part["bytes"] or sha256_file(path) != part["sha256"]:
            missing.append(part["name"])
    return missing


def unpack_bundle(bundle_dir: Path, dest: Path) -> list[str]:
    """Join the parts and unpack the bundle into ``dest``; return the member names. CarryError names the parts
    still missing (carry them in the next calls while the machine is held)."""
    missing = missing_parts(bundle_dir)
    if missing:
        raise CarryError(f"the bundle in {bundle_dir} lacks {', '.join(missing)}: carry "
                         f"{' then '.join(str(Path(bundle_dir) / m) for m in missing)} in the next calls")
    manifest = json.loads((Path(bundle_dir) / MANIFEST).read_text())
    joined = io.BytesIO()
    for part in manifest["parts"]:
        joined.write((Path(bundle_dir) / part["name"]).read_bytes())
    joined.seek(0)
    dest.mkdir(parents=True, exist_ok=True)
    with lzma.open(joined) as xz, tarfile.open(fileobj=xz, mode="r") as tf:
        tf.extractall(dest, filter="data")
        return tf.getnames()


def tree_bytes(files: list[Path]) -> int:
    """Bytes of the files that travel with every call (git's tracked and untracked-not-ignored files)."""
    return sum(p.stat().st_size for p in files if p.is_file())


def check_fits(tree: int, manifest: dict, limit: int = LIMIT_BYTES) -> list[str]:
    """One line per call (tree + its part + the manifest); CarryError when a call would exceed ``limit``."""
    lines, over = [], []
    for part in manifest["parts"]:
        total = tree + part["bytes"] + len(json.dumps(manifest, indent=2)) + 1
        lines.append(f"call with {part['name']}: {total / MIB:.1f} MiB of {limit / MIB:.0f} MiB "
                     f"(tree {tree / MIB:.1f}, part {part['bytes'] / MIB:.1f})")
        if total > limit:
            over.append(part["name"])
    if over:
        raise CarryError(f"{', '.join(over)} would exceed the {limit / MIB:.0f} MiB a call carries: cut smaller "
                         f"parts (--part-mib) or leave files out of the tree")
    return lines


def normalized(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    from packaging.utils import canonicalize_name

    return canonicalize_name(name)


def closure(roots: list[str], python: str = "3.12", leave_out: set[str] = frozenset()) -> dict[str, str]:
    """{name: version} of ``roots`` and everything they require, as installed in this environment, for a Linux
    x86-64 CPython ``python`` (extras not taken; markers evaluated there); names in ``leave_out`` (normalized)
    and what only they require are not followed. CarryError names a requirement not installed here."""
    from importlib import metadata

    from packaging.requirements import Requirement

    env = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    found: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = normalized(todo.pop())
        if name in found or name in leave_out:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise CarryError(f"{name} is needed on the GPU machine but not installed here: `pip install -r "
                             f"requirements.txt` first") from None
        found[name] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(req.name)
    return dict(sorted(found.items()))
