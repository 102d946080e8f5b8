rule aggregate:
    input:
        runs=all_run_files(),
        code=package_files("render.py", "stats.py", "runs.py"),
    output:
        runs=f"{RESULTS}/summary/runs.parquet",
        stats=f"{RESULTS}/summary/stats.parquet",
        stats_csv=report(
            f"{RESULTS}/summary/stats.csv",
            caption="../report/stats.rst",
            category="Tables",
            subcategory="Statistics",
            labels={"table": "statistics per group and metric", "format": "CSV"},
        ),
    log:
        "logs/aggregate.log",
    conda:
        ENV
    script:
        "../scripts/aggregate.py"
