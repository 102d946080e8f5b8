"""Fetch one GGUF from the Hugging Face hub (or its local cache) at a pinned revision."""

import json
from pathlib import Path

from llmbench.fetch import fetch_hf_file
from llmbench.logs import script_logging


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        src = snakemake.params.source
        record = fetch_hf_file(
            src["repo"], src["filename"], src["revision"], snakemake.output.gguf, sha256=src.get("sha256")
        )
        Path(snakemake.output.record).write_text(json.dumps(record, indent=2) + "\n")
        log.info("fetched %s/%s at %s (sha256 %s)", src["repo"], src["filename"], record["resolved_commit"], record["sha256"])


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
