"""llama-cpp-python backend: how it finds (or misses) the binding and the library, and the real engine.

The binding loads its library once per process, at import; so the real-engine test runs in a process of its own.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO, load_config
from llmbench.engines.base import EngineError, OutOfMemory, ToolUnavailable
from llmbench.engines.llama_cpp_python import LlamaCppPython

# llama.cpp out-of-memory lines, a stand-in written from the pinned source (see tests/engines/test_llama_log.py).
CUDA_OOM = (REPO / "tests/data/llama_cuda_oom.standin.log").read_text()

LIB_DIR = REPO / "resources/llama.cpp" / f"{load_config()['llama_cpp']['version']}-cpu" / "bin"


@pytest.fixture(autouse=True)
def _restore_lib_path_env(monkeypatch):
    # start() sets LLAMA_CPP_LIB_PATH for the binding. Setting it here first makes monkeypatch record the
    # original state (absent or not), which it puts back after the test whatever start() did.
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", "")
    monkeypatch.delenv("LLAMA_CPP_LIB_PATH")


def backend(tmp_path: Path, lib_dir: Path) -> LlamaCppPython:
    return LlamaCppPython(tmp_path / "model.gguf", lib_dir, threads=1)


def test_missing_library_names_the_dir_and_says_to_build(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    says = rf"{re.escape(str(empty))} has no libllama.so; build llama.cpp first \(rule build_llama_cpp\)"
    with pytest.raises(EngineError, match=says):
        backend(tmp_path, empty).start()


def test_binding_not_installed_is_tool_unavailable(tmp_path, monkeypatch):
    lib_dir = tmp_path / "bin"
    lib_dir.mkdir()
    (lib_dir / "libllama.so").write_bytes(b"stand-in, never loaded")
    # A None entry makes `import llama_cpp` fail as it does where the binding is not installed.
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(ToolUnavailable, match=r"llama-cpp-python is not installed.*pip install -r requirements.txt"):
        backend(tmp_path, lib_dir).start()


def test_binding_loaded_on_another_library_is_an_error(tmp_path, monkeypatch):
    lib_dir = tmp_path / "bin"
    lib_dir.mkdir()
    (lib_dir / "libllama.so").write_bytes(b"stand-in, never loaded")
    standin = SimpleNamespace(_lib=SimpleNamespace(_name=str(tmp_path / "other/libllama.so")))
    monkeypatch.setitem(sys.modules, "llama_cpp.llama_cpp", standin)
    with pytest.raises(EngineError, match=r"already loaded from .*other/libllama.so.*cannot be swapped"):
        backend(tmp_path, lib_dir).start()


def test_unknown_split_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="split_mode 'rows'"):
        LlamaCppPython(tmp_path / "m.gguf", tmp_path, split_mode="rows")


@pytest.mark.parametrize("bad", [-1, "all"])
def test_bad_layer_count_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match=rf"n_gpu_layers {bad!r} is neither a number of layers"):
        LlamaCppPython(tmp_path / "m.gguf", tmp_path, n_gpu_layers=bad)


def test_out_of_memory_in_the_load_log_is_out_of_memory(tmp_path, monkeypatch):
    """A stand-in binding whose Llama() logs llama.cpp's CUDA out-of-memory lines and fails, as the real one does."""
    from llmbench.engines import llama_cpp_python as backend_module

    callbacks = []

    def failing_llama(**kw):
        for line in CUDA_OOM.splitlines(keepends=True):
            callbacks[-1](3, line.encode(), None)
        raise ValueError(f"Failed to load model from file: {kw['model_path']}")

    standin = SimpleNamespace(llama_log_callback=lambda f: f, llama_log_set=lambda f, _: callbacks.append(f),
                              Llama=failing_llama, LLAMA_SPLIT_MODE_NONE=0)
    monkeypatch.setattr(backend_module, "import_llama_cpp", lambda lib_dir: standin)
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    b = LlamaCppPython(tmp_path / "model.gguf", tmp_path, n_gpu_layers=81, log_path=tmp_path / "engine.log")
    with pytest.raises(OutOfMemory, match=r"^out of memory: llama-cpp-python \(n_gpu_layers=81, ctx_size=2048\)"):
        b.start()
    assert "cudaMalloc failed" in (tmp_path / "engine.log").read_text()


def test_generate_before_start_is_an_error_and_stop_is_idempotent(tmp_path):
    b = backend(tmp_path, tmp_path)
    with pytest.raises(EngineError, match="not started"):
        b.generate("hi", 4, 0.0, 1)
    b.stop()
    b.stop()


REAL_RUN = """
    import json, sys
    from pathlib import Path
    from llmbench.engines.llama_cpp_python import LlamaCppPython
    model, lib_dir, log = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    with LlamaCppPython(model, lib_dir, threads=2, ctx_size=512, seed=7, n_gpu_layers="auto", log_path=log) as b:
        gens = [b.generate("What is the capital of France? Answer in one sentence.", 12, 0.0, 7) for _ in range(2)]
        out = {"gens": [g.__dict__ for g in gens], "facts": b.facts(), "peak_rss": b.peak_rss_bytes()}
    print(json.dumps(out))
"""


@pytest.mark.e2e
def test_real_engine_counts_come_from_llama_cpp(tmp_path):
    if not (LIB_DIR / "libllama.so").exists():
        pytest.skip(f"no llama.cpp build at {LIB_DIR} (run the workflow's rule build_llama_cpp)")
    model = os.environ.get("LLMBENCH_TEST_GGUF")
    if not model or not Path(model).is_file():
        pytest.skip("set LLMBENCH_TEST_GGUF to a small chat GGUF (e.g. SmolLM2-135M-Instruct) to run the real engine")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(REAL_RUN), model, str(LIB_DIR), str(tmp_path / "engine.log")],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO / "workflow/scripts")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    for g in out["gens"]:
        assert 0 < g["generated_tokens"] <= 12
        assert 0 < g["prefill_tokens"] <= g["prompt_tokens"]
        assert g["decode_ms"] > 0 and 0 < g["ttft_ms"] < g["wall_ms"]
        assert g["finish_reason"] in ("stop", "length") and g["text"]
        # No prompt cache or KV prefix carried over: each generation evaluates its whole prompt.
        assert g["prefill_tokens"] == g["prompt_tokens"]
    first, second = out["gens"]
    assert (first["prompt_tokens"], first["text"]) == (second["prompt_tokens"], second["text"])
    assert Path(out["facts"]["library"]).parent == LIB_DIR
    assert out["facts"]["engine_build"].startswith("llama-cpp-python ")
    assert out["peak_rss"] > 50 * 2**20
    # "auto" on a build without a GPU backend: nothing to fit, and llama.cpp's load log shows 0 of n_layer + 1.
    facts = out["facts"]
    assert facts["n_gpu_layers"] == "auto" and facts["n_gpu_layers_fitted_by_llama_server"] == 0
    assert facts["n_gpu_layers_offloaded"] == 0 and facts["n_layers_total"] > 1
    assert "load_tensors" in (tmp_path / "engine.log").read_text()
