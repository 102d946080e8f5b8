"""Fetch the pinned llama-cpp-python sdist (it vendors llama.cpp's source) with pip, verified by sha256."""

import shutil
import tempfile
from pathlib import Path

from llmbench.core.files import atomic_path
from llmbench.core.logs import script_logging
from llmbench.modelfiles.fetch import pip_download, verify_sha256


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        version, expected = snakemake.params.version, snakemake.params.sha256
        with tempfile.TemporaryDirectory(prefix="llmbench-sdist-") as tmp:
            sdist = pip_download(f"llama-cpp-python=={version}", Path(tmp), binary=False)
            with atomic_path(snakemake.output[0]) as part:
                shutil.copyfile(sdist, part)
                digest = verify_sha256(part, expected, f"llama-cpp-python {version} sdist")
        log.info("fetched %s (sha256 %s)", sdist.name, digest)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
