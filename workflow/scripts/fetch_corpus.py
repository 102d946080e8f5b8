"""A corpus from a dataset file on the hub (e.g. wikitext-2's test split as parquet): its text column, joined."""

import json
import tempfile
from pathlib import Path

from llmbench.core.files import atomic_path
from llmbench.core.logs import script_logging
from llmbench.modelfiles.corpus import parquet_text
from llmbench.modelfiles.fetch import fetch_hf_file


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        src = snakemake.params.source
        with tempfile.TemporaryDirectory(prefix="llmbench-corpus-") as tmp:
            parquet = Path(tmp) / Path(src["filename"]).name
            record = fetch_hf_file(src["repo"], src["filename"], src["revision"], parquet, sha256=src["sha256"],
                                   repo_type="dataset")
            with atomic_path(snakemake.output.text) as part:
                part.write_text(parquet_text(parquet, src["text_column"]))
        Path(snakemake.output.record).write_text(json.dumps(record, indent=2) + "\n")
        log.info("corpus %s from %s/%s", snakemake.output.text, src["repo"], src["filename"])


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
