"""Take the local llama.cpp source archive the config names (llama_cpp.source_archive), verified by its sha256."""

import shutil

from llmbench.core.files import atomic_path
from llmbench.core.logs import script_logging
from llmbench.modelfiles.fetch import verify_sha256


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        with atomic_path(snakemake.output[0]) as part:
            shutil.copyfile(snakemake.input[0], part)
            digest = verify_sha256(part, snakemake.params.sha256,
                                   f"llama_cpp.source_archive {snakemake.input[0]}")
        log.info("took %s (sha256 %s)", snakemake.input[0], digest)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
