"""transformers backend: what it refuses and why, and one real generation on a real GGUF.

Tests that load through transformers need torch, transformers, gguf and accelerate, and skip, naming the one
missing, where the environment lacks it. The real-model test reads its GGUF from LLMBENCH_TEST_GGUF.
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_tiny_gguf
from llmbench.engines.base import EngineError, ToolUnavailable
from llmbench.engines.transformers import Transformers, unsupported_quant_types

MiB = 1 << 20


def needs_stack():
    for name in ("torch", "transformers", "gguf", "accelerate"):
        pytest.importorskip(name, reason=f"the transformers backend needs {name}, which is not installed here")


def write_gguf(path: Path, qtype: str) -> Path:
    """A real (tiny) GGUF with one tensor stored as ``qtype``."""
    import gguf

    x = np.linspace(-1, 1, 8 * 32, dtype=np.float32).reshape(8, 32)
    if qtype == "F64":
        tensor = x.astype(np.float64)
    else:
        t = gguf.GGMLQuantizationType[qtype]
        tensor = (gguf.quants.quantize(x, t), t)
    return write_tiny_gguf(path, tensors={"token_embd.weight": tensor})


def test_missing_transformers_is_unavailable_and_says_what_to_install(monkeypatch, tiny_gguf):
    pytest.importorskip("torch")
    # None in sys.modules stands in for a machine without transformers: importing it then fails.
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ToolUnavailable, match=r"transformers is not installed here.*requirements.txt"):
        Transformers(tiny_gguf).start()


def test_cuda_without_a_gpu_is_unavailable(tiny_gguf):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(ToolUnavailable, match="no CUDA GPU visible to torch"):
        Transformers(tiny_gguf, device="cuda").start()


@pytest.mark.parametrize("qtype, bad", [("F64", ["F64"]), ("Q8_0", []), ("Q4_1", []), ("F16", [])])
def test_quant_types_without_a_dequantizer_are_found(tmp_path, qtype, bad):
    assert unsupported_quant_types(write_gguf(tmp_path / f"m-{qtype}.gguf", qtype)) == bad


def test_unsupported_quant_type_is_an_error_naming_type_and_file(tmp_path):
    needs_stack()
    path = write_gguf(tmp_path / "model-f64.gguf", "F64")
    with pytest.raises(EngineError, match=r"cannot load .*model-f64\.gguf.* F64 tensors"):
        Transformers(path).start()


def test_missing_model_file_is_named(tmp_path):
    needs_stack()
    with pytest.raises(EngineError, match="nope.gguf does not exist"):
        Transformers(tmp_path / "nope.gguf").start()


def test_generate_before_start_is_an_error(tiny_gguf):
    with pytest.raises(EngineError, match="not started"):
        Transformers(tiny_gguf).generate("hi", 4, 0.0, 1)


def test_unknown_device_is_refused(tiny_gguf):
    with pytest.raises(ValueError, match="'mps'"):
        Transformers(tiny_gguf, device="mps")


@pytest.mark.e2e
def test_real_gguf_generates_with_the_engines_counts():
    path = os.environ.get("LLMBENCH_TEST_GGUF")
    if not path or not Path(path).is_file():
        pytest.skip(f"set LLMBENCH_TEST_GGUF to a real chat GGUF (e.g. SmolLM2-135M-Instruct.Q4_1.gguf); got {path!r}")
    needs_stack()
    backend = Transformers(Path(path), threads=1)
    with backend:
        facts = backend.facts()
        assert facts["dtype"] in ("torch.float32", "torch.float16", "torch.bfloat16")
        assert facts["load_ms"] > 0 and facts["parameters"] > 0 and facts["n_gpu_layers"] == 0
        g = backend.generate("What is the capital of France?", 8, 0.0, 1)
        assert 1 <= g.generated_tokens <= 8 and g.prompt_tokens == g.prefill_tokens > 0
        assert 0 < g.ttft_ms < g.wall_ms and g.finish_reason in ("stop", "length")
        assert g.text.strip()
        assert backend.generate("What is the capital of France?", 8, 0.0, 2).text == g.text  # greedy: seed is moot
        sampled = backend.generate("Tell me a story.", 8, 0.8, 3)
        assert 1 <= sampled.generated_tokens <= 8
        assert backend.peak_rss_bytes() > 200 * MiB
    assert backend.model is None
    backend.stop()  # a second stop is harmless
