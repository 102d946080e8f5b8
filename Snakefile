from snakemake.utils import min_version

min_version("9.0")


# A --configfile names a whole study: it replaces the default one instead of being merged into it.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# The landing page of `snakemake --report`: what ran and how it was measured (captions beside each result).
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    split="none|layer|row|tensor",


include: "workflow/rules/build.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/quality.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/archive.smk"


rule all:
    default_target: True
    input:
        final_outputs(),


# All the study measures and tabulates, without the figures: for a machine without the plotting stack (a GPU box
# that only measures); `python workflow/scripts/rerender.py` draws the figures elsewhere from the returned results/
# (it reads the study's config as run, results/config/study.yaml).
rule measurements:
    input:
        measurement_outputs(),
        f"{RESULTS}/config/study.yaml",
