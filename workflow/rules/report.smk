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
        figure="decode_tokens_per_s",
    script:
        "../scripts/plot_figure.py"


# Box plots of prefill tokens/s per quant (tool × model panels, split modes side by side) from the rows.
rule plot_prefill_speed:
    input:
        runs=f"{RESULTS}/summary/runs.parquet",
        code=package_files("plots.py", "quants.py"),
    output:
        png=report(
            f"{RESULTS}/figures/prefill_tokens_per_s.png",
            caption="../report/prefill.rst",
            category="Figures",
            subcategory="Speed",
            labels={"figure": "prefill tokens/s per quant", "format": "PNG"},
        ),
        svg=f"{RESULTS}/figures/prefill_tokens_per_s.svg",
        html=report(
            f"{RESULTS}/figures/prefill_tokens_per_s.html",
            caption="../report/prefill.rst",
            category="Figures",
            subcategory="Speed",
            labels={"figure": "prefill tokens/s per quant", "format": "interactive"},
        ),
    log:
        "logs/plot_prefill_speed.log",
    conda:
        ENV
    params:
        study=config["study"],
        figure="prefill_tokens_per_s",
    script:
        "../scripts/plot_figure.py"


# Box plots of time to first token [ms] per quant (tool × model panels, split modes side by side) from the rows.
rule plot_ttft:
    input:
        runs=f"{RESULTS}/summary/runs.parquet",
        code=package_files("plots.py", "quants.py"),
    output:
        png=report(
            f"{RESULTS}/figures/ttft_ms.png",
            caption="../report/ttft.rst",
            category="Figures",
            subcategory="Speed",
            labels={"figure": "time to first token", "format": "PNG"},
        ),
        svg=f"{RESULTS}/figures/ttft_ms.svg",
        html=report(
            f"{RESULTS}/figures/ttft_ms.html",
            caption="../report/ttft.rst",
            category="Figures",
            subcategory="Speed",
            labels={"figure": "time to first token", "format": "interactive"},
        ),
    log:
        "logs/plot_ttft.log",
    conda:
        ENV
    params:
        study=config["study"],
        figure="ttft_ms",
    script:
        "../scripts/plot_figure.py"


# Box plots of J per generated token per quant, split modes side by side; where no energy was measured the
# figure says so, with the recorded reasons.
rule plot_energy_per_token:
    input:
        runs=f"{RESULTS}/summary/runs.parquet",
        code=package_files("plots.py", "quants.py"),
    output:
        png=report(
            f"{RESULTS}/figures/energy_per_token.png",
            caption="../report/energy_per_token.rst",
            category="Figures",
            subcategory="Energy",
            labels={"figure": "J per generated token", "format": "PNG"},
        ),
        svg=f"{RESULTS}/figures/energy_per_token.svg",
        html=report(
            f"{RESULTS}/figures/energy_per_token.html",
            caption="../report/energy_per_token.rst",
            category="Figures",
            subcategory="Energy",
            labels={"figure": "J per generated token", "format": "interactive"},
        ),
    log:
        "logs/plot_energy_per_token.log",
    conda:
        ENV
    params:
        study=config["study"],
        figure="energy_per_token",
    script:
        "../scripts/plot_figure.py"


# Decode tokens/s of every framework side by side on the same model file and quant, from the rows.
rule plot_frameworks:
    input:
        runs=f"{RESULTS}/summary/runs.parquet",
        code=package_files("plots.py", "quants.py"),
    output:
        png=report(
            f"{RESULTS}/figures/frameworks_decode_tokens_per_s.png",
            caption="../report/frameworks_compare.rst",
            category="Figures",
            subcategory="Frameworks",
            labels={"figure": "decode tokens/s by framework", "format": "PNG"},
        ),
        svg=f"{RESULTS}/figures/frameworks_decode_tokens_per_s.svg",
        html=report(
            f"{RESULTS}/figures/frameworks_decode_tokens_per_s.html",
            caption="../report/frameworks_compare.rst",
            category="Figures",
            subcategory="Frameworks",
            labels={"figure": "decode tokens/s by framework", "format": "interactive"},
        ),
    log:
        "logs/plot_frameworks.log",
    conda:
        ENV
    params:
        study=config["study"],
        figure="frameworks_decode_tokens_per_s",
    script:
        "../scripts/plot_figure.py"


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
        cloud=canonical_param(config["costs"]["cloud"]),
        hardware=canonical_param(config["costs"]["hardware"]),
    script:
        "../scripts/cost_table.py"


# After a run that made something: the study's report, then what failed (make_report and
# fail_on_failed_measurements, in common.smk).
onsuccess:
    make_report()
    fail_on_failed_measurements()
