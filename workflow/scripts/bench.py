"""One bench job: the tool's engine started, every prompt × repetition generated, one row per generation
(llmbench.study.measure), and how they were measured beside them."""

import signal
import sys
from pathlib import Path

from llmbench.core.logs import script_logging
from llmbench.study.job import Job
from llmbench.study.measure import bench


def main(snakemake):
    # Snakemake stops jobs with SIGTERM: turn it into an exception so the engine is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    job = Job.from_snakemake(snakemake)
    with script_logging(job.log) as log:
        rows = bench(job, Path(snakemake.output.run), Path(snakemake.output.provenance),
                     Path(snakemake.scriptdir).parents[1], log)
        log.info("wrote %d rows to %s, and how they were measured to %s", rows.height, snakemake.output.run,
                 snakemake.output.provenance)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
