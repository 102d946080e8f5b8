"""Pack the study into one deterministic .tar.gz with a sha256 manifest, and check it after writing."""

from pathlib import Path

from llmbench.core.logs import script_logging
from llmbench.outputs.archive import build_archive, measured_day, verify_archive


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        members = {name: Path(path) for name, path in snakemake.params.members}
        top = f"{snakemake.params.study}-{measured_day(Path(snakemake.input.runs))}"
        dest = build_archive(members, Path(snakemake.output[0]), top)
        problems = verify_archive(dest)
        if problems:
            raise RuntimeError(f"{dest} failed its own manifest check: " + "; ".join(problems))
        log.info("archived %d files in %s", len(members), dest)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
