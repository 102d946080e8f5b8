"""The validated study config (defaults filled in, secrets redacted), as it ran: archived with the results."""

from pathlib import Path

import yaml

from llmbench.logs import script_logging
from llmbench.provenance import assert_no_secrets, redact


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        text = yaml.safe_dump(redact(dict(snakemake.params.config)), sort_keys=True)
        assert_no_secrets(text)
        Path(snakemake.output[0]).write_text(text)
        log.info("wrote %s", snakemake.output[0])


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
