from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def nvml_works() -> bool:
    """Whether this machine has a working NVML (an NVIDIA driver); tests of the no-GPU path skip where it does."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return True
    except Exception:
        return False


def load_config(name: str = "config.yaml") -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


@pytest.fixture
def default_config() -> dict:
    return copy.deepcopy(load_config())


@pytest.fixture(scope="session")
def schema() -> dict:
    from llmbench.configcheck import load_schema

    return load_schema(REPO / "workflow/schemas/config.schema.yaml")


def write_tiny_gguf(path: Path, n: int = 64) -> Path:
    """A real (tiny) GGUF written with the gguf package: header, metadata, one tensor."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.arange(n * 4, dtype=np.float32).reshape(n, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")
