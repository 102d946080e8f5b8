rule aggregate:
    input:
        runs=all_run_files(),
        code=package_files("render.py", "stats.py", "runs.py"),
    output:
        runs=f"{RESULTS}/summary/runs.parquet",
        stats=f"{RESULTS}/summary/stats.parquet",
        stats_csv=f"{RESULTS}/summary/stats.csv",
    log:
        "logs/aggregate.log",
    conda:
        ENV
    script:
        "../scripts/aggregate.py"
