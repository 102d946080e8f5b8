rule plot_decode_speed:
    input:
        runs=f"{RESULTS}/summary/runs.parquet",
        code=package_files("plots.py", "quants.py", "render.py"),
    output:
        png=f"{RESULTS}/figures/decode_tokens_per_s.png",
        svg=f"{RESULTS}/figures/decode_tokens_per_s.svg",
        html=f"{RESULTS}/figures/decode_tokens_per_s.html",
    log:
        "logs/plot_decode_speed.log",
    conda:
        ENV
    params:
        study=config["study"],
    script:
        "../scripts/plot_decode_speed.py"


rule cost_table:
    input:
        runs=f"{RESULTS}/summary/runs.parquet",
        code=package_files("costs.py", "render.py", "stats.py"),
    output:
        csv=f"{RESULTS}/tables/cost_per_1m_tokens.csv",
        md=f"{RESULTS}/tables/cost_per_1m_tokens.md",
    log:
        "logs/cost_table.log",
    conda:
        ENV
    params:
        usd_per_kwh=config["costs"]["electricity_usd_per_kwh"],
        electricity_note=config["costs"]["electricity_note"],
        cloud=config["costs"]["cloud"],
    script:
        "../scripts/cost_table.py"
