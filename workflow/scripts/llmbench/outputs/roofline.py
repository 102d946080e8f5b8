"""The decode roofline: how close each job's decode speed came to what its memory bandwidth allows.

Generating one token of a dense model reads every weight once, so decode tokens/s ≤ bandwidth / bytes read per
token. The bytes per token are the model file's tensor bytes with one correction: the token-embedding table is only
gathered (one row per token) unless the output head is tied to it, in which case the logits read all of it. The
KV cache and activations are not counted, so the bytes are a floor and the bound an upper limit on speed: a fraction
of the bound near 1 means decode is memory-bound and the engine streams the weights well. On a CPU, a model small
beside the last-level cache is partly served from cache and can pass a DRAM bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from llmbench.core.quants import rank
from llmbench.engines.registry import TOOLS, batching_tools
from llmbench.engines.runs import RUN_SCHEMA, with_all_columns
from llmbench.modelfiles.models import CorruptModelError, check_gguf, read_tensor_table
from llmbench.outputs.markdown import Footnotes, fmt, marked_quant, pipe_table
from llmbench.outputs.stats import GROUP, with_levels
from llmbench.study.bandwidth import CPU_LABEL, GPU_LABEL

EMBEDDING = "token_embd.weight"
OUTPUT = "output.weight"
# Split modes whose GPUs each read their share of every layer at the same time: their bandwidths add up. In a layer
# split one GPU works after the other on a single stream, so one GPU's bandwidth bounds it.
PARALLEL_SPLITS = {"row", "tensor"}
KV_BYTES = 2  # llama.cpp's KV cache is f16 unless --cache-type-k/-v say otherwise
TRAFFIC_SCHEMA = {"model": pl.String, "quant": pl.String, "tensor_bytes": pl.Int64, "bytes_per_token": pl.Int64,
                  "block_count": pl.Int64, "embedding_weights": pl.Int64, "embedding_row_weights": pl.Int64,
                  "embedding_gathered": pl.Boolean, "bytes_note": pl.String, "bytes_null_reason": pl.String,
                  "kv_bytes_per_context_token": pl.Int64}
# Engines that de-quantize the GGUF hold the weights in this many bytes each (engine_facts' "dtype").
DTYPE_BYTES = {"torch.float32": 4, "torch.float16": 2, "torch.bfloat16": 2}
DEVICE_SCHEMA = {**{k: RUN_SCHEMA[k] for k in GROUP}, "bandwidth_bytes_per_s": pl.Float64, "bandwidth_label": pl.String,
                 "bandwidth_null_reason": pl.String}


def gguf_traffic(path: str | Path) -> dict[str, Any]:
    """Bytes a dense GGUF model reads per generated token, from its tensor table (no tensor data is read).

    A split GGUF (given by its first shard) is read whole: every shard's tensors, the model's metadata from the
    first. Raises CorruptModelError, as the file check does, for a file that is not a readable GGUF, and for a
    first shard whose other shards are missing."""
    path = Path(path)
    shards = check_gguf(path).get("shards") or [path.name]
    headers = [read_tensor_table(path.parent / name) for name in shards]
    meta = headers[0].meta
    tensors = {t.name: (t.nbytes, t.dims) for h in headers for t in h.tensors}  # name: (bytes, dimensions)
    arch = meta.get("general.architecture")
    arch = arch.decode() if isinstance(arch, bytes) else str(arch)
    total = sum(b for b, _ in tensors.values())
    embd_bytes, embd_dims = tensors.get(EMBEDDING, (0, [0, 1]))
    gathered = EMBEDDING in tensors and OUTPUT in tensors
    out = {"architecture": arch, "tensor_bytes": total, "block_count": meta.get(f"{arch}.block_count"),
           # GGUF lists dimensions fastest first: token_embd is [n_embd, n_vocab].
           "embedding_weights": math.prod(embd_dims), "embedding_row_weights": embd_dims[0],
           "embedding_gathered": gathered, "bytes_per_token": None, "bytes_note": None, "bytes_null_reason": None,
           "kv_bytes_per_context_token": kv_bytes_per_context_token(meta, arch)}
    if meta.get(f"{arch}.expert_count"):
        out["bytes_null_reason"] = (f"mixture of experts ({meta[f'{arch}.expert_count']} experts): a token reads only "
                                    "its routed experts, so the dense bound does not apply")
    elif gathered:
        out["bytes_per_token"] = total - embd_bytes + embd_bytes // embd_dims[-1]
        out["bytes_note"] = ("tensor bytes less the token-embedding table, of which one row is "
                             "gathered per token; the output head is a tensor of its own")
    else:
        out["bytes_per_token"] = total
        out["bytes_note"] = ("all tensor bytes: the output head is tied to the token-embedding table, so the logits "
                             "read all of it" if EMBEDDING in tensors else "all tensor bytes")
    return out


def kv_bytes_per_context_token(meta: Mapping[str, Any], arch: str) -> int | None:
    """Bytes of KV cache a generated token reads per token already in the context: keys and values of every
    layer, n_layer × n_head_kv × (key + value length) × 2 bytes (llama.cpp's default f16 cache); None where the
    GGUF does not say its attention's shape."""
    layers, heads = meta.get(f"{arch}.block_count"), meta.get(f"{arch}.attention.head_count")
    kv_heads = meta.get(f"{arch}.attention.head_count_kv", heads)
    embd = meta.get(f"{arch}.embedding_length")
    if not (layers and heads and kv_heads and embd):
        return None
    key = meta.get(f"{arch}.attention.key_length", embd // heads)
    value = meta.get(f"{arch}.attention.value_length", embd // heads)
    return int(layers) * int(kv_heads) * (int(key) + int(value)) * KV_BYTES


def traffic_table(files: Mapping[tuple[str, str], Path]) -> pl.DataFrame:
    """Bytes per token of each (model, quant) file; a file the check proves damaged gets a null with the reason,
    so that the table is made for every other file (the damaged one's bench jobs say the same)."""
    rows = []
    for (m, q), p in files.items():
        try:
            facts = gguf_traffic(p)
        except CorruptModelError as e:
            facts = {"bytes_null_reason": f"not read: {e}"}
        rows.append({"model": m, "quant": q, **{k: v for k, v in facts.items() if k in TRAFFIC_SCHEMA}})
    return pl.DataFrame(rows, schema=TRAFFIC_SCHEMA)


def _gpu_specs(job_gpus: Mapping[str, Any], machine_gpus: Mapping[str, Any]) -> tuple[list[dict], str | None]:
    """The hardware record's entry for each GPU of the job (matched by UUID, else by NVML index), or why none."""
    if "not_available" in machine_gpus:
        return [], f"no GPU bandwidth: {machine_gpus['not_available']}"
    indices = [k for k in job_gpus if k != "not_available"]
    if not indices:
        reason = job_gpus.get("not_available", "its provenance names no GPU")
        return [], f"the job's GPUs are unknown ({reason})"
    by_uuid = {g.get("uuid"): g for g in machine_gpus.values() if isinstance(g, Mapping) and g.get("uuid")}
    specs = []
    for i in indices:
        spec = by_uuid.get((job_gpus[i] or {}).get("uuid")) or machine_gpus.get(i)
        if spec is None:
            return [], f"GPU {i} of the job is not in the bandwidth record (measured on another machine?)"
        if "bytes_per_s" not in spec:
            return [], spec.get("not_available", f"GPU {i} has no bandwidth in the record")
        specs.append(spec)
    return specs, None


def job_bandwidth(tool: str, split: str, gpus: int | None, n_gpu_layers: int | None, block_count: int | None,
                  job_gpus: Mapping[str, Any] | None, machine: Mapping[str, Any]) -> tuple[float | None, str | None,
                                                                                         str | None]:
    """(bytes/s, label, null reason) of the memory a job's weights were read from."""
    on_gpu = bool(gpus) and n_gpu_layers != 0
    if not on_gpu:
        cpu = machine.get("cpu") or {}
        if cpu.get("bytes_per_s") is None:
            return None, None, cpu.get("not_available", "no CPU bandwidth was measured")
        return cpu["bytes_per_s"], cpu["label"], None
    # llama.cpp counts the output layer as one more offloadable layer; a negative count means all of them.
    if n_gpu_layers is not None and n_gpu_layers > 0 and block_count is not None and n_gpu_layers <= block_count:
        return None, None, (f"partial offload ({n_gpu_layers} of {block_count + 1} layers on the GPU): weights are "
                            "read from GPU and CPU memory, so no single bandwidth bounds it")
    if job_gpus is None:
        return None, None, "no provenance record for this job, so its GPUs are unknown"
    specs, reason = _gpu_specs(job_gpus, machine.get("gpus") or {})
    if reason:
        return None, None, reason
    names = sorted({s["name"] for s in specs})
    # A tensor-parallel tool (registry) spreads every layer over the job's GPUs, whatever the split wildcard says.
    parallel = len(specs) > 1 and (split in PARALLEL_SPLITS or (tool in TOOLS and TOOLS[tool].tensor_parallel))
    if parallel:
        bw, how = sum(s["bytes_per_s"] for s in specs), f"{len(specs)} GPUs summed (each reads its share at once)"
    else:
        bw = max(s["bytes_per_s"] for s in specs)
        how = "one GPU" + (f" of {len(specs)} (layers run one GPU after the other)" if len(specs) > 1 else "")
    assumed = "" if n_gpu_layers is not None else "; layers on the GPU not reported, all assumed"
    return bw, f"{specs[0]['label']}: {', '.join(names)}, {how}{assumed}", None


def device_table(runs: pl.DataFrame, traffic: pl.DataFrame, provenance: Mapping[tuple[str, ...], Mapping | None],
                 machine: Mapping[str, Any]) -> pl.DataFrame:
    """Per job: the bandwidth of the memory its weights sat in, its label, or why there is none.

    ``provenance`` maps (tool, model, quant, split, concurrency, depth) to the job's provenance "gpus" entry (None
    where absent).
    """
    runs = with_levels(runs)
    jobs = runs.group_by(GROUP).agg(
        pl.col("gpus").drop_nulls().first(),
        # The engine's report where it ran; a skipped job's row carries the planned count.
        pl.col("n_gpu_layers").filter(pl.col("status") == "ok").drop_nulls().first().alias("_ok_layers"),
        pl.col("n_gpu_layers").drop_nulls().first().alias("_any_layers"),
    ).join(traffic.select("model", "quant", "block_count"), on=["model", "quant"], how="left")
    rows = []
    for j in jobs.iter_rows(named=True):
        layers = j["_ok_layers"] if j["_ok_layers"] is not None else j["_any_layers"]
        bw, label, reason = job_bandwidth(j["tool"], j["split"], j["gpus"], layers, j["block_count"],
                                          provenance.get(tuple(j[k] for k in GROUP)), machine)
        rows.append({**{k: j[k] for k in GROUP}, "bandwidth_bytes_per_s": bw, "bandwidth_label": label,
                     "bandwidth_null_reason": reason})
    return pl.DataFrame(rows, schema=DEVICE_SCHEMA)


def _held_bytes() -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """(bytes per token, note, null reason) for engines that de-quantize the file (engine_facts has dtype and
    parameters): the weights as the engine holds them, the gathered embedding table again only one row."""
    size = pl.col("_dtype").replace_strict(DTYPE_BYTES, default=None, return_dtype=pl.Int64)
    embedding = pl.when(pl.col("embedding_gathered")).then(
        pl.col("embedding_weights") - pl.col("embedding_row_weights")).otherwise(0)
    held = (pl.col("_parameters") - embedding.fill_null(0)) * size
    note = pl.format("the engine holds the weights de-quantized to {} ({} B each): {} parameters, the file's bytes "
                     "do not apply", pl.col("_dtype"), size, pl.col("_parameters"))
    reason = pl.format("the engine holds the weights as {}, whose size per weight is not known here", pl.col("_dtype"))
    return held, note, reason


def roofline_table(runs: pl.DataFrame, traffic: pl.DataFrame, devices: pl.DataFrame) -> pl.DataFrame:
    """Per tool × model × quant × split × level: median decode tokens/s of one stream, bytes per token, bandwidth,
    bound, fraction."""
    runs = with_all_columns(with_levels(runs))  # rows measured before a column existed read it as null
    ok = pl.col("status") == "ok"
    facts = pl.col("engine_facts").filter(ok).drop_nulls()
    # Per stream, as the bound below: a batching tool's rows give the whole batch's decode rate.
    per_stream = pl.when(pl.col("tool").is_in(batching_tools())).then(
        pl.col("decode_tokens_per_s") / pl.col("concurrency")).otherwise(pl.col("decode_tokens_per_s"))
    speed = runs.group_by(GROUP).agg(
        per_stream.filter(ok).median().alias("median_decode_tokens_per_s"),
        ok.sum().alias("generations"),
        pl.col("status_reason").filter(~ok).drop_nulls().unique().sort().str.join("; ").alias("_skipped"),
        facts.str.json_path_match("$.dtype").drop_nulls().first().alias("_dtype"),
        facts.str.json_path_match("$.parameters").drop_nulls().first().cast(pl.Int64).alias("_parameters"),
        pl.col("quant_label_note").drop_nulls().first(),  # the file is not what its label says (tensor_mix)
    )
    t = speed.join(traffic.drop("block_count"), on=["model", "quant"], how="left").join(devices, on=GROUP, how="left")
    held, held_note, held_reason = _held_bytes()
    dequantized = pl.col("_dtype").is_not_null() & pl.col("_parameters").is_not_null() & pl.col("tensor_bytes").is_not_null()
    t = t.with_columns(
        pl.when(dequantized).then(held).otherwise(pl.col("bytes_per_token")).alias("bytes_per_token"),
        pl.when(dequantized).then(held_note).otherwise(pl.col("bytes_note")).alias("bytes_note"),
        pl.when(dequantized & held.is_null()).then(held_reason)
        .when(pl.col("tensor_bytes").is_null() & pl.col("bytes_null_reason").is_null())
        .then(pl.lit("no GGUF file for this model here (a tool's own library model): its bytes are unknown"))
        .otherwise(pl.col("bytes_null_reason")).alias("bytes_null_reason"),
        pl.when(pl.col("median_decode_tokens_per_s").is_null())
        .then(pl.coalesce(pl.col("_skipped").replace("", None), pl.lit("no decode speed measured")))
        .alias("speed_null_reason"),
    )
    # One decode step of N streams (a load level) reads the weights once and each stream's KV cache at its depth:
    # each stream's token costs the weights + N × the KV bytes of the depth; at one stream on an empty context the
    # weights alone.
    kv = pl.col("kv_bytes_per_context_token") * pl.col("depth") * pl.col("concurrency")
    swept = (pl.col("depth") > 0)
    t = t.with_columns(
        pl.when(swept).then(pl.col("bytes_per_token") + kv).otherwise(pl.col("bytes_per_token")).alias("bytes_per_token"),
        pl.when(swept & pl.col("bytes_per_token").is_not_null()).then(pl.format(
            "{}; + {} streams × the f16 KV cache of {} context tokens ({} bytes per context token)",
            pl.col("bytes_note"), pl.col("concurrency"), pl.col("depth"), pl.col("kv_bytes_per_context_token"),
        )).otherwise(pl.col("bytes_note")).alias("bytes_note"),
        pl.when(swept & pl.col("kv_bytes_per_context_token").is_null() & pl.col("bytes_null_reason").is_null())
        .then(pl.lit("the GGUF does not say its attention's shape: the KV bytes at this depth are unknown"))
        .otherwise(pl.col("bytes_null_reason")).alias("bytes_null_reason"),
    )
    return t.with_columns(
        (pl.col("bandwidth_bytes_per_s") / pl.col("bytes_per_token")).alias("bound_tokens_per_s"),
    ).with_columns(
        (pl.col("median_decode_tokens_per_s") / pl.col("bound_tokens_per_s")).alias("fraction_of_bound"),
        pl.coalesce("bytes_null_reason", "bandwidth_null_reason").alias("bound_null_reason"),
    ).select(*GROUP, "generations", "median_decode_tokens_per_s", "speed_null_reason", "tensor_bytes",
             "bytes_per_token", "bytes_note", "bandwidth_bytes_per_s", "bandwidth_label", "bound_tokens_per_s",
             "bound_null_reason", "fraction_of_bound", "quant_label_note").sort(GROUP)


def render_markdown(table: pl.DataFrame) -> str:
    """The roofline for people: one footnote per reason, label and bytes note instead of repeated cells."""
    note = Footnotes()
    order = pl.col("quant").replace_strict(rank(table["quant"]), return_dtype=pl.Int64)
    rows = []
    for r in table.sort(["tool", "model", "split", order, "concurrency", "depth"]).iter_rows(named=True):
        speed = fmt(r["median_decode_tokens_per_s"]) or f"not run {note(r['speed_null_reason'] or 'not run')}"
        mib = "" if r["bytes_per_token"] is None else f"{r['bytes_per_token'] / 2**20:.1f} {note(r['bytes_note'])}"
        bw = ("" if r["bandwidth_bytes_per_s"] is None
              else f"{r['bandwidth_bytes_per_s'] / 1e9:.1f} {note(r['bandwidth_label'])}")
        bound = (fmt(r["bound_tokens_per_s"]) if r["bound_tokens_per_s"] is not None
                 else f"none {note(r['bound_null_reason'] or 'not known')}")
        frac = "" if r["fraction_of_bound"] is None else f"{r['fraction_of_bound']:.2f}"
        rows.append([r["tool"], r["model"], marked_quant(r["quant"], r.get("quant_label_note"), note), r["split"],
                     str(r["concurrency"]), str(r["depth"]), speed, mib or "unknown", bw or "unknown", bound, frac])
    # Clients (sequences of a batch) and depth tell a load level's row from the one-request row of the same file.
    header = ["tool", "model", "quant", "split", "clients", "depth", "median decode tok/s per stream",
              "MiB read per token", "bandwidth GB/s", "bound tok/s", "fraction of bound"]
    return "".join([
        "## Decode speed against the memory-bandwidth bound\n\n", pipe_table(header, rows), "\n",
        "Bound = bandwidth / bytes read per generated token, for a dense model that reads every weight once per "
        "token. Bytes per token come from the GGUF's tensor table; the KV cache and activations are not counted, "
        "so the bound is an upper limit on speed and a fraction near 1 means decode is memory-bound. A fraction "
        "above 1 on a CPU means part of the weights were served from cache, or that the memory was busier when "
        "the bandwidth was measured than during the benchmark (on a shared machine such as a VM it varies from run "
        "to run). Bandwidth: "
        f"'{GPU_LABEL}' is the GPU's specification (not a measurement; kernels reach less); "
        f"'{CPU_LABEL}' is rule measure_memory_bandwidth's numpy measurement on this machine. "
        "GB = 10^9 bytes.\n",
        note.render(),
    ])
