# The study's tables: the statistics per group, energy and $ per 1M tokens, the framework table (facts beside
# measurements), and the decode roofline (decode speed against the memory-bandwidth bound).


rule aggregate:
    input:
        runs=all_run_files(),
        code=code("aggregate.py"),
    output:
        runs=results("summary/runs.parquet"),
        stats=results("summary/stats.parquet"),
        stats_csv=report(
            results("summary/stats.csv"),
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


rule cost_table:
    input:
        runs=results("summary/runs.parquet"),
        code=code("cost_table.py"),
    output:
        **table_outputs("cost_per_1m_tokens", "Cost", "energy and $ per 1M tokens"),
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


rule serving_table:
    input:
        runs=results("summary/runs.parquet"),
        code=code("serving_table.py"),
    output:
        **table_outputs("serving", "Load", "the served model per load level"),
    log:
        "logs/serving_table.log",
    conda:
        ENV
    params:
        usd_per_kwh=config["costs"]["electricity_usd_per_kwh"],
    script:
        "../scripts/serving_table.py"


rule framework_table:
    input:
        runs=results("summary/runs.parquet"),
        code=code("framework_table.py"),
    output:
        **table_outputs("frameworks", "Frameworks", "frameworks compared"),
    log:
        "logs/framework_table.log",
    conda:
        ENV
    script:
        "../scripts/framework_table.py"


# The study's GGUF files its bench jobs ran, as plain values: [model, quant, path] each.
ROOFLINE_MODELS = [
    [m, q, study.model_path(config, RES, m, q)]
    for m, q in sorted(
        {(j.model, j.quant) for j in JOBS if j.model in study.gguf_models(config)}
    )
]
# [tool, model, quant, split, concurrency, depth, provenance path] of every bench job: which GPUs each job read. Sorted: the jobs come
# in the config's key order, which must not rerun the table (an equal config reruns nothing).
JOB_PROVENANCE = sorted(
    [j.tool, j.model, j.quant, j.split, j.concurrency, j.depth, provenance_file(j)]
    for j in JOBS
)


rule measure_memory_bandwidth:
    input:
        code=code("measure_bandwidth.py"),
    output:
        json=results("hardware/memory_bandwidth.json"),
    log:
        "logs/measure_memory_bandwidth.log",
    conda:
        ENV
    # All cores: locally no other job (a benchmark above all) runs beside the measurement.
    threads: whole_machine_threads
    params:
        threads=bench_job_threads,
        repetitions=10,
    script:
        "../scripts/measure_bandwidth.py"


rule roofline_table:
    input:
        runs=results("summary/runs.parquet"),
        bandwidth=results("hardware/memory_bandwidth.json"),
        models=[path for *_, path in ROOFLINE_MODELS],
        provenance=[path for *_, path in JOB_PROVENANCE],
        code=code("roofline_table.py"),
    output:
        **table_outputs("decode_roofline", "Speed", "decode against bandwidth bound"),
    log:
        "logs/roofline_table.log",
    conda:
        ENV
    params:
        files=ROOFLINE_MODELS,
        provenance=JOB_PROVENANCE,
    script:
        "../scripts/roofline_table.py"
