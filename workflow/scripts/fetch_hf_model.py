"""Fetch one GGUF, or one shard of a split GGUF, from the Hugging Face hub (or its local cache) at a pinned revision.

A split GGUF's first shard comes last (its job takes the other shards as input): its job checks the complete set
and writes the model's record, which lists every shard.
"""

import json
from pathlib import Path

from llmbench.core.logs import script_logging
from llmbench.modelfiles.fetch import fetch_hf_file, split_record
from llmbench.modelfiles.models import check_gguf
from llmbench.modelfiles.tensor_mix import tensor_mix


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        src, out = snakemake.params.source, snakemake.output
        record = fetch_hf_file(src["repo"], src["filename"], src["revision"], out.gguf, sha256=src.get("sha256"))
        log.info("fetched %s/%s at %s (sha256 %s)", src["repo"], src["filename"], record["resolved_commit"], record["sha256"])
        if "shard" in src:
            record["shard"] = src["shard"]
        if "shards" in snakemake.input.keys():
            others = [json.loads(Path(p).read_text()) for p in snakemake.input.shard_records]
            files = [Path(p).name for p in (out.gguf, *snakemake.input.shards)]
            log.info("split GGUF %s: %s", out.gguf, check_gguf(out.gguf))
            record = split_record(record, others, files)
        whole = "shard" not in src or "shards" in snakemake.input.keys()  # a whole file, or the first shard's job
        if "quant" in snakemake.wildcards.keys() and whole:
            files = [out.gguf, *(snakemake.input.shards if "shards" in snakemake.input.keys() else [])]
            record["tensor_mix"] = tensor_mix(files, snakemake.wildcards.quant).record()
        Path(out.record).write_text(json.dumps(record, indent=2) + "\n")


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
