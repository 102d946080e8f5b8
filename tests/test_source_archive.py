"""The trimmed llama.cpp source archive keeps what the tools' build reads, and the commit it was made from.

The sdist here is a stand-in (standin-sdist: a few files in the real sdist's layout, with a real git submodule
directory); the real sdist's trim is built into the CPU tools by benchmarks/gpu/check_prepare.py.
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from llmbench.toolchain import build
from llmbench.toolchain.build import extract_sdist, git_commit
from llmbench.toolchain.source_archive import MANIFEST, TrimError, trim_manifest, trim_sdist

ROOT = "llama_cpp_python-0.3.36"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def standin_sdist(tmp_path) -> tuple[Path, str]:
    """A stand-in sdist: llama.cpp's layout under vendor/llama.cpp, its git directory where a submodule's lives."""
    root = tmp_path / "src" / ROOT
    llama = root / "vendor/llama.cpp"
    files = {
        "PKG-INFO": "Name: llama_cpp_python\n", "llama_cpp/__init__.py": "", "docs/index.md": "binding docs",
        "vendor/llama.cpp/CMakeLists.txt": "project(llama)\n", "vendor/llama.cpp/src/llama.cpp": "int x;\n",
        "vendor/llama.cpp/ggml/src/ggml-cuda/mmq.cu": "// cuda\n", "vendor/llama.cpp/ggml/src/ggml-cpu/ops.c": "",
        "vendor/llama.cpp/ggml/src/ggml-vulkan/v.cpp": "// vulkan\n", "vendor/llama.cpp/models/ggml-vocab.gguf": "v" * 5000,
        "vendor/llama.cpp/docs/build.md": "docs", "vendor/llama.cpp/tools/server/server.cpp": "",
        "vendor/llama.cpp/tools/ui/tests/e2e.ts": "", "vendor/llama.cpp/tools/ui/CMakeLists.txt": "",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    gitdir = root / ".git/modules/vendor/llama.cpp"
    gitdir.parent.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "--separate-git-dir", str(gitdir), str(llama)], check=True)
    (llama / ".git").write_text("gitdir: ../../.git/modules/vendor/llama.cpp\n")  # relative, as in the sdist
    git(llama, "config", "core.worktree", "../../../../vendor/llama.cpp")
    git(llama, "add", "-A")
    git(llama, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "llama.cpp")
    git(llama, "gc", "-q")  # into a pack, as the sdist ships it
    commit = git(llama, "rev-parse", "HEAD")
    sdist = tmp_path / f"{ROOT}.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        tf.add(root, arcname=ROOT)
    return sdist, commit


def test_the_trim_keeps_the_build_source_and_drops_the_rest(standin_sdist, tmp_path):
    sdist, commit = standin_sdist
    manifest = trim_sdist(sdist, tmp_path / "trim.tar.xz")
    with tarfile.open(tmp_path / "trim.tar.xz") as tf:
        names = set(tf.getnames())
    kept = {f"{ROOT}/{p}" for p in ("PKG-INFO", "vendor/llama.cpp/CMakeLists.txt", "vendor/llama.cpp/src/llama.cpp",
                                    "vendor/llama.cpp/ggml/src/ggml-cuda/mmq.cu", "vendor/llama.cpp/tools/server/server.cpp",
                                    "vendor/llama.cpp/tools/ui/CMakeLists.txt", MANIFEST)}
    assert kept <= names
    for gone in ("llama_cpp/__init__.py", "docs/index.md", "vendor/llama.cpp/ggml/src/ggml-vulkan/v.cpp",
                 "vendor/llama.cpp/models/ggml-vocab.gguf", "vendor/llama.cpp/docs/build.md",
                 "vendor/llama.cpp/tools/ui/tests/e2e.ts"):
        assert f"{ROOT}/{gone}" not in names
    assert not any("/objects/pack/" in n for n in names)
    assert manifest["commit"] == commit and manifest["trimmed_from"] == sdist.name
    assert manifest["dropped_bytes"] >= 5000 and len(manifest["trimmed_from_sha256"]) == 64


def test_the_trimmed_source_still_answers_git_for_llama_cpp_build_info(standin_sdist, tmp_path):
    """cmake/build-info.cmake asks `git rev-parse --short HEAD` and `git rev-list --count HEAD`."""
    sdist, commit = standin_sdist
    trim_sdist(sdist, tmp_path / "trim.tar.xz")
    source = extract_sdist(tmp_path / "trim.tar.xz", tmp_path / "unpacked")
    assert git(source, "rev-parse", "--short", "HEAD") == commit[:7]
    assert git(source, "rev-list", "--count", "HEAD") == "1"
    assert git_commit(source) == commit
    assert trim_manifest(source)["commit"] == commit
    assert trim_manifest(extract_sdist(sdist, tmp_path / "full")) is None


def test_without_git_the_commit_comes_from_the_manifest(standin_sdist, tmp_path, monkeypatch):
    sdist, commit = standin_sdist
    trim_sdist(sdist, tmp_path / "trim.tar.xz")
    source = extract_sdist(tmp_path / "trim.tar.xz", tmp_path / "unpacked")
    monkeypatch.setattr(build, "_first_line", lambda cmd: None)  # as on a machine where git is not installed
    assert git_commit(source) == commit


def test_the_trim_is_deterministic(standin_sdist, tmp_path):
    sdist, _ = standin_sdist
    trim_sdist(sdist, tmp_path / "a.tar.xz")
    trim_sdist(sdist, tmp_path / "b.tar.xz")
    assert (tmp_path / "a.tar.xz").read_bytes() == (tmp_path / "b.tar.xz").read_bytes()


def test_another_archive_in_the_same_place_is_unpacked_afresh(standin_sdist, tmp_path):
    sdist, _ = standin_sdist
    dest = tmp_path / "unpacked"
    extract_sdist(sdist, dest)
    assert (dest / ROOT / "docs/index.md").exists()
    trim_sdist(sdist, tmp_path / "trim.tar.xz")
    extract_sdist(tmp_path / "trim.tar.xz", dest)
    assert not (dest / ROOT / "docs/index.md").exists()  # the full sdist's files are not mixed into the trim's


def test_an_archive_that_is_no_sdist_is_refused_by_name(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x/README").write_text("hi")
    bad = tmp_path / "other.tar.gz"
    with tarfile.open(bad, "w:gz") as tf:
        tf.add(tmp_path / "x", arcname="x")
    with pytest.raises(TrimError, match="not a llama-cpp-python sdist"):
        trim_sdist(bad, tmp_path / "trim.tar.xz")


def test_the_configured_archive_is_taken_only_with_its_sha256(tmp_path):
    """Rule take_llama_cpp_source_archive (llama_cpp.source_archive): the archive is copied into resources when
    its sha256 is the config's, and refused, naming the key, when not."""
    import hashlib
    import importlib.util
    from types import SimpleNamespace

    from conftest import REPO
    from llmbench.modelfiles.fetch import IntegrityError

    spec = importlib.util.spec_from_file_location("take", REPO / "workflow/scripts/take_source_archive.py")
    take = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(take)
    archive = tmp_path / "src.tar.xz"
    archive.write_bytes(b"source")

    def job(sha256):
        return SimpleNamespace(input=[str(archive)], output=[str(tmp_path / "res/src.tar.xz")],
                               log=[str(tmp_path / "take.log")], params=SimpleNamespace(sha256=sha256))

    take.main(job(hashlib.sha256(b"source").hexdigest()))
    assert (tmp_path / "res/src.tar.xz").read_bytes() == b"source"
    (tmp_path / "res/src.tar.xz").unlink()
    with pytest.raises(IntegrityError, match=r"llama_cpp.source_archive .*src.tar.xz: sha256 is"):
        take.main(job("0" * 64))
    assert not (tmp_path / "res/src.tar.xz").exists()


def test_an_archive_of_another_version_is_refused_before_building(standin_sdist, tmp_path):
    from llmbench.toolchain.build import BuildError, BuildSpec, build_llama_cpp

    sdist, _ = standin_sdist
    never = "the build must not start"
    with pytest.raises(BuildError, match=r"holds llama_cpp_python-0.3.36, but llama_cpp.version is 0.3.40"):
        build_llama_cpp(sdist, tmp_path / "src", tmp_path / "build", BuildSpec("0.3.40", cuda=False), 1, None,
                        compile=lambda *a: pytest.fail(never), smoke=lambda *a: pytest.fail(never), flags=set())
