"""A trimmed llama.cpp source archive: the pinned llama-cpp-python sdist less what the tools' build never reads.

The sdist is 76.6 MB (compressed; 217 MB unpacked): the vendored llama.cpp carries 75 MB of test vocabularies
(``models/``), 38 MB of docs, a 39 MB shallow git pack, the other GPU backends and the Python binding. A machine
reached only by carrying files (no package registry, a size limit on what travels) needs the source for the build
alone. :func:`trim_sdist` writes it as a ``.tar.xz`` with the sdist's own layout (``<root>/vendor/llama.cpp``), so
:func:`llmbench.toolchain.build.extract_sdist` builds it as it builds the sdist, and writes ``LLMBENCH-TRIM.json`` at its
root: the sdist it came from (name, sha256), llama.cpp's commit and what was left out. The git metadata keeps
only HEAD's commit object (a loose object), so llama.cpp's CMake (``cmake/build-info.cmake``: ``git rev-parse
--short HEAD``, ``git rev-list --count HEAD``) records the same commit and build number as the full sdist does.
"""

from __future__ import annotations

import io
import json
import lzma
import subprocess
import tarfile
import tempfile
import zlib
from pathlib import Path

from llmbench.core.files import atomic_path, sha256_file

MANIFEST = "LLMBENCH-TRIM.json"
LLAMA = "vendor/llama.cpp"
SUBMODULE_GIT = ".git/modules/vendor/llama.cpp"

# Paths under vendor/llama.cpp that no CMake file of the tools' build reads (LLAMA_BUILD_TESTS/EXAMPLES=OFF, no
# backend but CPU and CUDA); checked by building the tools from the trimmed archive (benchmarks/gpu/README.md).
DROPPED = (
    "models",  # tokenizer vocabularies of llama.cpp's own tests
    "docs", "media", ".github", ".devops", "benches", "tests", "examples", "pocs", "gguf-py", "conversion",
    "tools/ui/tests",  # the web UI's browser tests (the UI itself is not built: LLAMA_USE_PREBUILT_UI=OFF)
    *(f"ggml/src/ggml-{backend}" for backend in (
        "cann", "et", "hexagon", "metal", "musa", "opencl", "openvino", "rpc", "sycl", "virtgpu", "vulkan",
        "webgpu", "zdnn", "zendnn", "hip", "blas")),
)
# Of the submodule's git directory, what `git rev-parse` and `git rev-list --count` need (the pack is not kept);
# the index too, which common/CMakeLists.txt watches to regenerate the build info.
GIT_KEPT = ("HEAD", "config", "shallow", "packed-refs", "refs", "index")


class TrimError(RuntimeError):
    pass


def _root_of(names: list[str]) -> str:
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or f"{next(iter(roots))}/{LLAMA}/CMakeLists.txt" not in names:
        raise TrimError(f"not a llama-cpp-python sdist: expected one root folder holding {LLAMA}/CMakeLists.txt, "
                        f"found roots {sorted(roots)[:5]}")
    return roots.pop()


def _kept(name: str, root: str) -> bool:
    rel = name[len(root) + 1:]
    if rel == "PKG-INFO":
        return True
    if rel.startswith(SUBMODULE_GIT + "/"):
        return rel[len(SUBMODULE_GIT) + 1:].split("/", 1)[0] in GIT_KEPT
    if rel in (".git", ".git/modules", ".git/modules/vendor", SUBMODULE_GIT, "vendor"):
        return True
    if rel != LLAMA and not rel.startswith(LLAMA + "/"):
        return False  # the Python binding, its docs and tests: the binding travels as its own wheel
    inner = rel[len(LLAMA) + 1:]
    return not any(inner == d or inner.startswith(d + "/") for d in DROPPED)


def head_commit_object(tf: tarfile.TarFile, root: str, name: str) -> tuple[str, bytes]:
    """llama.cpp's HEAD commit in the open sdist ``tf`` (root folder ``root``, file name ``name`` for errors) and
    its loose git object (zlib of ``commit <len>\0<body>``)."""
    with tempfile.TemporaryDirectory(prefix="llmbench-trim-") as tmp:
        git = f"{root}/.git"
        tf.extractall(tmp, members=[m for m in tf.getmembers() if m.name.startswith(git + "/")
                                    or m.name in (git, f"{root}/{LLAMA}/.git")], filter="tar")
        source = Path(tmp) / root / LLAMA
        source.mkdir(parents=True, exist_ok=True)

        def git_out(*args: str) -> bytes:
            try:
                return subprocess.run(["git", "-C", str(source), *args], capture_output=True, check=True).stdout
            except (OSError, subprocess.CalledProcessError) as e:
                raise TrimError(f"git could not read {name}'s llama.cpp commit ({e}); is git installed?") from None

        commit = git_out("rev-parse", "HEAD").decode().strip()
        body = git_out("cat-file", "commit", commit)
    return commit, zlib.compress(b"commit %d\0" % len(body) + body, 9)


def trim_sdist(sdist: str | Path, dest: str | Path) -> dict:
    """Write the trimmed source of ``sdist`` to ``dest`` (.tar.xz) and return its manifest (also stored inside).

    The archive is deterministic for one sdist (members in the sdist's order, their own mtimes, owner 0, xz preset
    9e). Raises TrimError when ``sdist`` is no llama-cpp-python sdist or git cannot read its commit.
    """
    sdist, dest = Path(sdist), Path(dest)
    dropped_bytes = kept_bytes = 0
    with tarfile.open(sdist) as src:
        members = src.getmembers()
        root = _root_of([m.name for m in members])
        commit, commit_object = head_commit_object(src, root, sdist.name)
        manifest = {
            "trimmed_from": sdist.name, "trimmed_from_sha256": sha256_file(sdist), "commit": commit,
            "dropped": [f"{LLAMA}/{d}" for d in DROPPED] + [f"{SUBMODULE_GIT}/objects/pack", "the Python binding"],
            "why": "the source of the llama.cpp tools' build alone (llmbench.toolchain.source_archive)",
        }
        with atomic_path(dest) as part:
            with lzma.open(part, "wb", preset=9 | lzma.PRESET_EXTREME) as xz, \
                    tarfile.open(fileobj=xz, mode="w", format=tarfile.PAX_FORMAT) as out:
                for m in members:
                    if not _kept(m.name, root):
                        dropped_bytes += m.size
                        continue
                    kept_bytes += m.size
                    m.uid = m.gid = 0
                    m.uname = m.gname = ""
                    out.addfile(m, src.extractfile(m) if m.isfile() else None)
                obj = tarfile.TarInfo(f"{root}/{SUBMODULE_GIT}/objects/{commit[:2]}/{commit[2:]}")
                obj.size, obj.mode, obj.mtime = len(commit_object), 0o444, members[0].mtime
                out.addfile(obj, io.BytesIO(commit_object))
                manifest.update(kept_bytes=kept_bytes, dropped_bytes=dropped_bytes)
                text = (json.dumps(manifest, indent=2) + "\n").encode()
                info = tarfile.TarInfo(f"{root}/{MANIFEST}")
                info.size, info.mode, info.mtime = len(text), 0o644, members[0].mtime
                out.addfile(info, io.BytesIO(text))
    return manifest


def trim_manifest(llama_source: str | Path) -> dict | None:
    """The manifest of a trimmed archive unpacked with llama.cpp at ``llama_source``; None for a full sdist."""
    path = Path(llama_source).parents[1] / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None
