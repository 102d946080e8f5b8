"""Reading llama.cpp's own log: the layers it offloaded and its out-of-memory lines.

tests/data/llama_server_load_cpu.log is a real llama-server log (this project's CPU build, --log-verbosity 4,
SmolLM2-135M Q4_0); tests/data/llama_bench_probe_cpu.log is an excerpt (the print_info and load_tensors lines of
the last load) of a real llama-bench -v probe on the same build. No GPU build has run here, so the GPU and
out-of-memory lines below are stand-ins written from the format strings of the pinned llama.cpp source
(src/llama-model.cpp, ggml/src/ggml-cuda/ggml-cuda.cu, ggml/src/ggml-alloc.c, src/llama.cpp).
"""

import pytest

from conftest import REPO
from llmbench.engines.llama_log import oom_reason, out_of_memory_line, parse_offload

# Stand-ins from llama-model.cpp's LLAMA_LOG_INFO("%s: offloaded %d/%d layers to GPU\n", ...) on a GPU build.
GPU_LOAD = """\
print_info: n_layer               = 32
load_tensors: loading model tensors, this can take a while... (load_mode = mmap)
load_tensors: offloading output layer to GPU
load_tensors: offloading 19 repeating layers to GPU
load_tensors: offloaded 20/33 layers to GPU
load_tensors:        CUDA0 model buffer size =  2780.00 MiB
"""

# Stand-in of a CUDA out-of-memory load, each line written from its format string in the pinned source.
CUDA_OOM = (REPO / "tests/data/llama_cuda_oom.standin.log").read_text()


def test_real_cpu_server_log_reads_zero_of_all_layers():
    o = parse_offload((REPO / "tests/data/llama_server_load_cpu.log").read_text())
    # SmolLM2-135M: n_layer = 30, so 31 offloadable layers (the output layer counts), none on a GPU here.
    assert (o.offloaded, o.total) == (0, 31)
    assert "no offload line" in o.source


def test_real_cpu_bench_probe_counts_layers_by_device():
    o = parse_offload((REPO / "tests/data/llama_bench_probe_cpu.log").read_text())
    assert (o.offloaded, o.total) == (0, 31) and "assigned to device" in o.source


def test_gpu_offload_line_wins_and_the_last_load_counts():
    o = parse_offload(CUDA_OOM + GPU_LOAD)  # an earlier failed attempt in the same log file
    assert (o.offloaded, o.total) == (20, 33) and "offloaded N/M" in o.source


def test_layers_on_a_gpu_are_counted_from_the_debug_lines():
    text = "load_tensors: loading model tensors\n" + "".join(
        f"load_tensors: layer {i:3d} assigned to device {'CUDA0' if i >= 2 else 'CPU'}, is_swa = 0\n" for i in range(5))
    o = parse_offload(text)
    assert (o.offloaded, o.total) == (3, 5)


def test_a_log_without_a_load_gives_no_number():
    o = parse_offload("main: error: failed to load model 'x.gguf'\n")
    assert (o.offloaded, o.total) == (None, None) and "no model load" in o.source


def test_out_of_memory_line_is_the_first_allocation_failure():
    assert out_of_memory_line(CUDA_OOM).endswith("cudaMalloc failed: out of memory")
    assert out_of_memory_line(GPU_LOAD) is None
    assert out_of_memory_line((REPO / "tests/data/llama_server_load_cpu.log").read_text()) is None


@pytest.mark.parametrize("line", [
    "  CUDA error: out of memory",
    "llama_model_load: error loading model: unable to allocate CUDA0 buffer",
    "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 1073741824",
    "llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache",
    "sched_reserve: failed to allocate compute pp buffers",
])
def test_each_llama_cpp_allocation_failure_is_out_of_memory(line):
    assert out_of_memory_line(f"info line\n{line}\nmore\n") == line.strip()


def test_a_corrupt_file_is_not_out_of_memory():
    text = "llama_model_load: error loading model: tensor 'blk.3.attn_q.weight' data is not within the file bounds\n"
    assert out_of_memory_line(text) is None


def test_reason_quotes_the_line_the_settings_and_the_fix():
    reason = oom_reason("llama-server", "cudaMalloc failed: out of memory", 81, 2048)
    assert reason.startswith("out of memory: llama-server (n_gpu_layers=81, ctx_size=2048)")
    assert "'cudaMalloc failed: out of memory'" in reason and "n_gpu_layers" in reason and "auto" in reason
