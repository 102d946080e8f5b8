"""The validated study config (defaults filled in, secrets redacted), as it ran: archived with the results."""

import yaml

from llmbench.core.files import write_text_atomically
from llmbench.core.logs import script_logging
from llmbench.study.provenance import assert_no_secrets, redact


def config_text(config: dict) -> str:
    """The config as YAML, keys sorted, with secret-keyed values, secret env values and credentials of a known shape
    (llmbench.core.secrets) redacted; ValueError naming the variable if a secret env value still shows."""
    text = yaml.safe_dump(redact(dict(config)), sort_keys=True)
    assert_no_secrets(text)
    return text


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        text = config_text(snakemake.params.config)
        write_text_atomically(snakemake.output[0], text)
        log.info("wrote %s", snakemake.output[0])


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
