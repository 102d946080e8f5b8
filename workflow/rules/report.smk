rule plot_decode_speed:
    input:
        runs=f"{RESULTS}/summary/runs.parquet",
        code=package_files("plots.py", "quants.py"),
    output:
        png=report(
            f"{RESULTS}/figures/decode_tokens_per_s.png",
            caption="../report/decode_speed.rst",
            category="Figures",
            subcategory="Speed",
            labels={"figure": "decode tokens/s per quant", "format": "PNG"},
        ),
        svg=f"{RESULTS}/figures/decode_tokens_per_s.svg",
        html=report(
            f"{RESULTS}/figures/decode_tokens_per_s.html",
            caption="../report/decode_speed.rst",
            category="Figures",
            subcategory="Speed",
            labels={"figure": "decode tokens/s per quant", "format": "interactive"},
        ),
    log:
        "logs/plot_decode_speed.log",
    conda:
        ENV
    params:
        study=config["study"],
    script:
        "../scripts/plot_decode_speed.py"


# Box plots of prefill tokens/s per quant (tool × model panels, split modes side by side) from the rows.
rule plot_prefill_speed:
    input:
        runs=f"{RESULTS}/summary/runs.parquet",
        code=package_files("plots.py", "quants.py"),
    output:
        png=f"{RESULTS}/figures/prefill_tokens_per_s.png",
        svg=f"{RESULTS}/figures/prefill_tokens_per_s.svg",
        html=f"{RESULTS}/figures/prefill_tokens_per_s.html",
    log:
        "logs/plot_prefill_speed.log",
    conda:
        ENV
    params:
        study=config["study"],
    script:
        "../scripts/plot_prefill_speed.py"


# Box plots of time to first token [ms] per quant (tool × model panels, split modes side by side) from the rows.
rule plot_ttft:
    input:
        runs=f"{RESULTS}/summary/runs.parquet",
        code=package_files("plots.py", "quants.py"),
    output:
        png=f"{RESULTS}/figures/ttft_ms.png",
        svg=f"{RESULTS}/figures/ttft_ms.svg",
        html=f"{RESULTS}/figures/ttft_ms.html",
    log:
        "logs/plot_ttft.log",
    conda:
        ENV
    params:
        study=config["study"],
    script:
        "../scripts/plot_ttft.py"


# Box plots of J per generated token per quant, split modes side by side; where no energy was measured the
# figure says so, with the recorded reasons.
rule plot_energy_per_token:
    input:
        runs=f"{RESULTS}/summary/runs.parquet",
        code=package_files("plots.py", "quants.py"),
    output:
        png=f"{RESULTS}/figures/energy_per_token.png",
        svg=f"{RESULTS}/figures/energy_per_token.svg",
        html=f"{RESULTS}/figures/energy_per_token.html",
    log:
        "logs/plot_energy_per_token.log",
    conda:
        ENV
    params:
        study=config["study"],
    script:
        "../scripts/plot_energy_per_token.py"


# Decode tokens/s of every framework side by side on the same model file and quant, from the rows.
rule plot_frameworks:
    input:
        runs=f"{RESULTS}/summary/runs.parquet",
        code=package_files("plots.py", "quants.py"),
    output:
        png=f"{RESULTS}/figures/frameworks_decode_tokens_per_s.png",
        svg=f"{RESULTS}/figures/frameworks_decode_tokens_per_s.svg",
        html=f"{RESULTS}/figures/frameworks_decode_tokens_per_s.html",
    log:
        "logs/plot_frameworks.log",
    conda:
        ENV
    params:
        study=config["study"],
    script:
        "../scripts/plot_frameworks.py"


rule cost_table:
    input:
        runs=f"{RESULTS}/summary/runs.parquet",
        code=package_files("costs.py", "quants.py", "stats.py"),
    output:
        csv=report(
            f"{RESULTS}/tables/cost_per_1m_tokens.csv",
            caption="../report/cost_table.rst",
            category="Tables",
            subcategory="Cost",
            labels={"table": "energy and $ per 1M tokens", "format": "CSV"},
        ),
        md=report(
            f"{RESULTS}/tables/cost_per_1m_tokens.md",
            caption="../report/cost_table.rst",
            category="Tables",
            subcategory="Cost",
            labels={"table": "energy and $ per 1M tokens", "format": "Markdown"},
        ),
    log:
        "logs/cost_table.log",
    conda:
        ENV
    params:
        usd_per_kwh=config["costs"]["electricity_usd_per_kwh"],
        electricity_note=config["costs"]["electricity_note"],
        cloud=config["costs"]["cloud"],
        hardware=config["costs"]["hardware"],
    script:
        "../scripts/cost_table.py"


REPORT = f"{RESULTS}/report.html"


def make_report():
    """The study's Snakemake report after a run that made something, with the run's own config arguments.

    A profile's --report-after-run would also fire on dry runs and fail on a fresh clone (nothing to report yet),
    so the report is made here instead; a failure is logged with the command to run, never failing the study.
    """
    import subprocess
    import sys

    settings = workflow.config_settings
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", workflow.main_snakefile]
    cmd += ["--cores", "1", "--nolock", "--report", REPORT]
    for configfile in settings.configfiles:
        cmd += ["--configfile", str(configfile)]
    if settings.config_args:
        cmd += ["--config", *settings.config_args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 0:
        logger.info(f"Report of the study: {REPORT}")
    else:
        logger.warning(
            f"The report was not made ({proc.stderr.strip()[-2000:]}). "
            f"Make it with: snakemake --report {REPORT}"
        )


onsuccess:
    make_report()
