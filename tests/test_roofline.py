"""The decode roofline: bytes per token from a GGUF's tensor table, bandwidth per job, the bound and its fraction."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from conftest import write_tiny_gguf
from llmbench.engines.runs import RUN_SCHEMA
from llmbench.outputs import roofline
from llmbench.study import bandwidth

VOCAB, EMBD = 32, 8
GB = 1e9


def write_gguf(path, *, tied: bool, experts: int = 0):
    """A real GGUF of float32 tensors: embedding [VOCAB × EMBD], one 8×8 block, maybe an output head."""
    tensors = {"token_embd.weight": np.zeros((VOCAB, EMBD), dtype=np.float32),
               "blk.0.ffn_up.weight": np.zeros((EMBD, EMBD), dtype=np.float32)}
    if not tied:
        tensors["output.weight"] = np.zeros((VOCAB, EMBD), dtype=np.float32)
    return write_tiny_gguf(path, tensors=tensors, metadata=(lambda w: w.add_expert_count(experts)) if experts else None)


def test_tied_output_head_reads_the_whole_embedding_table(tmp_path):
    t = roofline.gguf_traffic(write_gguf(tmp_path / "tied.gguf", tied=True))
    assert t["tensor_bytes"] == (VOCAB * EMBD + EMBD * EMBD) * 4
    assert t["bytes_per_token"] == t["tensor_bytes"]
    assert t["embedding_gathered"] is False and "tied" in t["bytes_note"]
    assert (t["embedding_weights"], t["embedding_row_weights"], t["block_count"]) == (VOCAB * EMBD, EMBD, 1)


def test_separate_output_head_gathers_one_embedding_row(tmp_path):
    t = roofline.gguf_traffic(write_gguf(tmp_path / "untied.gguf", tied=False))
    assert t["tensor_bytes"] == (2 * VOCAB * EMBD + EMBD * EMBD) * 4
    # The embedding table is only gathered: one row of it, plus the block and the output head.
    assert t["bytes_per_token"] == (EMBD + EMBD * EMBD + VOCAB * EMBD) * 4
    assert t["embedding_gathered"] is True and "one row" in t["bytes_note"]


def test_mixture_of_experts_has_no_dense_bound(tmp_path):
    t = roofline.gguf_traffic(write_gguf(tmp_path / "moe.gguf", tied=True, experts=8))
    assert t["bytes_per_token"] is None and "mixture of experts (8 experts)" in t["bytes_null_reason"]


CPU = {"bytes_per_s": 20 * GB, "label": "measured on the CPU (numpy copy, 2 thread(s), best of 5, ...)"}


def gpu(name="NVIDIA GeForce RTX 4090", uuid="GPU-a", bw=1008 * GB):
    return {"name": name, "uuid": uuid, "bytes_per_s": bw, "label": "GPU spec via NVML (bus width × clock × 2)"}


MACHINE = {"cpu": CPU, "gpus": {"0": gpu(uuid="GPU-a"), "1": gpu(uuid="GPU-b")}}
TWO = {"0": {"uuid": "GPU-a"}, "1": {"uuid": "GPU-b"}}


def test_cpu_jobs_use_the_measured_cpu_bandwidth():
    assert roofline.job_bandwidth("llama-server", "none", 0, 0, 30, {}, MACHINE) == (20 * GB, CPU["label"], None)
    # A GPU job that offloads no layer reads its weights from CPU memory too.
    assert roofline.job_bandwidth("llama-server", "layer", 2, 0, 30, TWO, MACHINE)[0] == 20 * GB


def test_layer_split_is_bounded_by_one_gpu_and_row_split_by_their_sum():
    bw, label, reason = roofline.job_bandwidth("llama-server", "layer", 2, 33, 32, TWO, MACHINE)
    assert (bw, reason) == (1008 * GB, None)
    assert label.startswith("GPU spec via NVML") and "one GPU of 2" in label and "RTX 4090" in label
    bw, label, _ = roofline.job_bandwidth("llama-server", "row", 2, 33, 32, TWO, MACHINE)
    assert bw == 2016 * GB and "2 GPUs summed" in label
    # vLLM splits tensors over its GPUs whatever the split wildcard says; -1 means every layer.
    assert roofline.job_bandwidth("vllm", "none", 2, -1, 32, TWO, MACHINE)[0] == 2016 * GB


def test_gpus_match_by_uuid_before_index():
    machine = {"cpu": CPU, "gpus": {"0": gpu(uuid="GPU-x", bw=1 * GB), "1": gpu(uuid="GPU-a", bw=3 * GB)}}
    assert roofline.job_bandwidth("llama-server", "none", 1, 33, 32, {"0": {"uuid": "GPU-a"}}, machine)[0] == 3 * GB


def test_gpu_bandwidth_nulls_say_why():
    partial = roofline.job_bandwidth("llama-server", "layer", 2, 20, 80, TWO, MACHINE)
    assert partial[:2] == (None, None) and "partial offload (20 of 81 layers" in partial[2]
    no_nvml = {"cpu": CPU, "gpus": {"not_available": "NVML could not start (LibraryNotFound)"}}
    assert "NVML could not start" in roofline.job_bandwidth("vllm", "none", 1, -1, 32, TWO, no_nvml)[2]
    assert "no provenance record" in roofline.job_bandwidth("vllm", "none", 1, -1, 32, None, MACHINE)[2]
    elsewhere = roofline.job_bandwidth("vllm", "none", 1, -1, 32, {"5": {"uuid": "GPU-z"}}, MACHINE)
    assert "not in the bandwidth record" in elsewhere[2]
    no_cpu = roofline.job_bandwidth("llama-server", "none", 0, 0, 32, {}, {"gpus": {}})
    assert no_cpu == (None, None, "no CPU bandwidth was measured")


def rows(tool, quant, speeds, **extra):
    return [{"tool": tool, "model": "m", "quant": quant, "split": "none", "status": "ok", "decode_tokens_per_s": s,
             "gpus": 0, "n_gpu_layers": 0, **extra} for s in speeds]


def skipped(tool, quant, reason):
    return [{"tool": tool, "model": "m", "quant": quant, "split": "none", "status": "skipped",
             "status_reason": reason, "gpus": 0, "n_gpu_layers": 0}]


def traffic(**over):
    base = {"model": "m", "quant": "Q4_0", "tensor_bytes": 2 * 10**8, "bytes_per_token": 10**8, "block_count": 30,
            "embedding_weights": 1000, "embedding_row_weights": 10, "embedding_gathered": True,
            "bytes_note": "tensor bytes less the token-embedding table", "bytes_null_reason": None}
    return pl.DataFrame([{**base, **over}], schema=roofline.TRAFFIC_SCHEMA)


def table(runs, machine=MACHINE, tr=None):
    tr = traffic() if tr is None else tr
    return roofline.roofline_table(runs, tr, roofline.device_table(runs, tr, {}, machine))


def test_bound_and_fraction_arithmetic():
    # Stand-in runs: 20 GB/s over 1e8 bytes per token is 200 tok/s; the median 50 is a quarter of it.
    runs = pl.DataFrame(rows("llama-server", "Q4_0", [40.0, 50.0, 60.0]), schema=RUN_SCHEMA)
    r = table(runs).row(0, named=True)
    assert r["median_decode_tokens_per_s"] == 50.0 and r["generations"] == 3
    assert r["bound_tokens_per_s"] == pytest.approx(200.0)
    assert r["fraction_of_bound"] == pytest.approx(0.25)
    assert r["bandwidth_label"] == CPU["label"] and r["bound_null_reason"] is None


def test_dequantizing_engine_counts_the_weights_it_holds():
    facts = json.dumps({"dtype": "torch.float32", "parameters": 5000})
    runs = pl.DataFrame(rows("transformers", "Q4_0", [10.0], engine_facts=facts), schema=RUN_SCHEMA)
    r = table(runs).row(0, named=True)
    # 5000 parameters less the gathered embedding table (1000) but one row of it (10), 4 bytes each.
    assert r["bytes_per_token"] == (5000 - 1000 + 10) * 4
    assert "float32" in r["bytes_note"] and r["bound_tokens_per_s"] == pytest.approx(20 * GB / 16040)
    odd = json.dumps({"dtype": "torch.float8_e4m3fn", "parameters": 5000})
    runs = pl.DataFrame(rows("transformers", "Q4_0", [10.0], engine_facts=odd), schema=RUN_SCHEMA)
    r = table(runs).row(0, named=True)
    assert r["bound_tokens_per_s"] is None and "float8_e4m3fn" in r["bound_null_reason"]


def test_nulls_carry_their_reasons():
    runs = pl.DataFrame(skipped("vllm", "Q4_0", "vLLM is not installed") + rows("ollama", "Q8_0", [30.0]),
                        schema=RUN_SCHEMA)
    t = table(runs, machine={"cpu": {"not_available": "bandwidth not measured (stand-in)"}, "gpus": {}})
    vllm = t.filter(pl.col("tool") == "vllm").row(0, named=True)
    assert vllm["median_decode_tokens_per_s"] is None and vllm["speed_null_reason"] == "vLLM is not installed"
    assert vllm["bound_null_reason"] == "bandwidth not measured (stand-in)"
    ollama = t.filter(pl.col("tool") == "ollama").row(0, named=True)  # Q8_0 has no GGUF here: a library model
    assert ollama["bytes_per_token"] is None and "no GGUF file" in ollama["bound_null_reason"]
    assert ollama["fraction_of_bound"] is None


def test_table_shape_and_markdown():
    runs = pl.DataFrame(rows("llama-server", "Q4_0", [50.0]) + rows("llama-bench", "Q4_0", [60.0])
                        + skipped("vllm", "Q4_0", "needs a GPU"), schema=RUN_SCHEMA)
    t = table(runs)
    assert t.height == 3 and t.columns[:4] == ["tool", "model", "quant", "split"]
    assert {"median_decode_tokens_per_s", "bytes_per_token", "bandwidth_bytes_per_s", "bandwidth_label",
            "bound_tokens_per_s", "fraction_of_bound", "bound_null_reason"} <= set(t.columns)
    md = roofline.render_markdown(t)
    assert md.count("\n| ") == 1 + 3  # the header and three rows
    assert "measured on the CPU (numpy copy" in md and "not run [" in md and "needs a GPU" in md
    assert "0.25" in md and "0.30" in md


class StandInNvml:
    """A stand-in for pynvml (nvidia-ml-py): two RTX 4090s as NVML reports them (384-bit bus, 10501 MHz)."""

    NVML_CLOCK_MEM = 2

    class NVMLError(Exception):
        pass

    def __init__(self, fail_init=False):
        self.fail_init, self.shut = fail_init, False

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA GeForce RTX 4090"

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h}"

    def nvmlDeviceGetMemoryBusWidth(self, h):
        if h == 1:
            raise self.NVMLError("Not Supported")
        return 384

    def nvmlDeviceGetMaxClockInfo(self, h, kind):
        assert kind == self.NVML_CLOCK_MEM
        return 10501


def test_gpu_spec_bandwidth_from_nvml_stand_in():
    nvml = StandInNvml()
    out = bandwidth.gpu_bandwidths(nvml)
    # 384 bit / 8 × 10501 MHz × 2 = 1008.1 GB/s, the RTX 4090's data-sheet figure.
    assert out["0"]["bytes_per_s"] == pytest.approx(1008.096 * GB)
    assert out["0"]["label"].startswith("GPU spec via NVML") and out["0"]["source"] == "specification"
    assert out["0"]["name"] == "NVIDIA GeForce RTX 4090" and out["0"]["uuid"] == "GPU-0"
    assert "Not Supported" in out["1"]["not_available"] and nvml.shut


def test_no_nvml_is_a_reason_not_a_number():
    out = bandwidth.gpu_bandwidths(StandInNvml(fail_init=True))
    assert list(out) == ["not_available"] and "NVML could not start" in out["not_available"]


def test_cpu_bandwidth_measurement_returns_a_rate_and_how():
    out = bandwidth.measure_cpu_bandwidth(threads=2, repetitions=2, array_bytes=8 * 2**20)
    assert out["bytes_per_s"] > 0 and out["source"] == "measured"
    assert out["label"].startswith("measured on the CPU (numpy ") and "best of 2" in out["label"]
    assert out["threads_tried"] == [1, 2] and out["array_bytes"] == 8 * 2**20
    assert {(r["kernel"], r["threads"]) for r in out["runs"]} == {("copy", 1), ("add", 1), ("copy", 2), ("add", 2)}
    assert out["bytes_per_s"] == max(r["bytes_per_s"] for r in out["runs"])
    with pytest.raises(ValueError, match="threads"):
        bandwidth.measure_cpu_bandwidth(threads=0)


def test_array_size_follows_the_last_level_cache(tmp_path):
    for cpu, shared in (("cpu0", "0-1"), ("cpu1", "0-1")):
        d = tmp_path / cpu / "cache" / "index3"
        d.mkdir(parents=True)
        for name, text in (("type", "Unified"), ("level", "3"), ("shared_cpu_list", shared), ("size", "96M")):
            (d / name).write_text(text + "\n")
    llc, source = bandwidth.last_level_cache_bytes(tmp_path)
    assert llc == 96 * 2**20 and source.startswith("L3, 1 instance")  # one shared instance counted once
    assert bandwidth.default_array_bytes(llc) == 4 * 96 * 2**20
    assert bandwidth.default_array_bytes(None) == bandwidth.MIN_ARRAY_BYTES
    assert bandwidth.last_level_cache_bytes(tmp_path / "absent")[0] is None


def test_damaged_gguf_is_named_with_the_fix(tmp_path):
    from llmbench.modelfiles.models import CorruptModelError

    whole = write_gguf(tmp_path / "whole.gguf", tied=True).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:40])
    with pytest.raises(CorruptModelError, match=r"cut.gguf is a damaged GGUF.*Delete it and run the workflow again"):
        roofline.gguf_traffic(cut)


def test_the_kv_cache_at_depth_is_read_by_every_stream_of_a_step():
    # Llama-3.1-8B's attention: 32 layers × 8 KV heads × (128 + 128) × 2 bytes = 131072 bytes per context token.
    meta = {"llama.block_count": 32, "llama.attention.head_count": 32, "llama.attention.head_count_kv": 8,
            "llama.embedding_length": 4096}
    assert roofline.kv_bytes_per_context_token(meta, "llama") == 131072
    assert roofline.kv_bytes_per_context_token({"llama.block_count": 2}, "llama") is None
    tr = traffic().with_columns(pl.lit(1000, pl.Int64).alias("kv_bytes_per_context_token"))
    runs = pl.DataFrame(rows("llama-server", "Q4_0", [50.0], concurrency=4, depth=1024)
                        + rows("llama-server", "Q4_0", [80.0], concurrency=4, depth=0), schema=RUN_SCHEMA)
    deep, empty = table(runs, tr=tr).sort("depth", descending=True).iter_rows(named=True)
    # A step of 4 streams at depth 1024 reads the 1e8 weight bytes once and 4 × 1024 × 1000 KV bytes.
    assert deep["bytes_per_token"] == 100_000_000 + 4 * 1024 * 1000 and "4 streams" in deep["bytes_note"]
    assert deep["bound_tokens_per_s"] == pytest.approx(20 * GB / (100_000_000 + 4_096_000))
    assert empty["bytes_per_token"] == 100_000_000  # on an empty context the weights alone, per stream


def test_a_batch_is_compared_with_the_bound_per_stream():
    # llama-batched-bench's rows give the batch's decode rate (S_TG): 4 streams at 200 tok/s in all are 50 each.
    runs = pl.DataFrame(rows("llama-batched-bench", "Q4_0", [200.0], concurrency=4, depth=0)
                        + rows("llama-server", "Q4_0", [50.0], concurrency=4, depth=0), schema=RUN_SCHEMA)
    batch, server = table(runs).sort("tool").iter_rows(named=True)
    assert batch["median_decode_tokens_per_s"] == server["median_decode_tokens_per_s"] == 50.0
    assert batch["fraction_of_bound"] == server["fraction_of_bound"]


def test_each_load_level_is_a_row_of_its_own_with_its_clients_and_depth():
    runs = pl.DataFrame(rows("llama-server", "Q4_0", [80.0], concurrency=1, depth=0)
                        + rows("llama-server", "Q4_0", [50.0], concurrency=4, depth=0), schema=RUN_SCHEMA)
    md = roofline.render_markdown(table(runs))
    assert "| tool | model | quant | split | clients | depth | median decode tok/s per stream |" in md
    assert "| llama-server | m | Q4_0 | none | 1 | 0 | 80 |" in md and "| llama-server | m | Q4_0 | none | 4 | 0 | 50 |" in md


def test_a_quant_whose_file_is_not_its_label_is_marked_with_the_real_mix():
    note = "Q4_0 here holds 67 % Q4_0, 33 % Q8_0 by weight bytes"
    runs = pl.DataFrame(rows("llama-server", "Q4_0", [50.0]), schema=RUN_SCHEMA).with_columns(
        pl.lit(note).alias("quant_label_note"))
    t = table(runs)
    assert t["quant_label_note"].to_list() == [note]
    md = roofline.render_markdown(t)
    marker = md.split("| Q4_0 ≠ ")[1].split(" ")[0]
    assert f"\n{marker} {note}\n" in md
