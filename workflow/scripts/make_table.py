"""A table of the catalog (llmbench/outputs/catalog.py) whose function lives in the package: the rule's entry is
found by the rule's name, and its ``make(inputs, params, outputs)`` writes the CSV and Markdown."""

from llmbench.core.logs import script_logging
from llmbench.outputs.catalog import by_rule


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        table = by_rule(snakemake.rule)
        log.info(table.write(dict(snakemake.input.items()), dict(snakemake.params.items()),
                             dict(snakemake.output.items())))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
