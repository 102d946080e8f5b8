# The study's tables, one rule each, from the catalog (llmbench/outputs/catalog.py: every figure and table described
# once, as rules/bench.smk loops over the engine registry): the statistics per group, energy and $ per 1M tokens,
# the served model per load level, the framework table (facts beside measurements), the decode roofline (decode
# speed against the memory-bandwidth bound), and quality per quant.


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

# What a catalog output needs beside the study's summary files, by the name its entry gives: (rule inputs, rule
# params) that only the workflow knows.
NEEDS = {
    "bench_files": ({"runs": all_run_files()}, {}),
    "roofline_files": (
        {
            "models": [path for *_, path in ROOFLINE_MODELS],
            "provenance": [path for *_, path in JOB_PROVENANCE],
        },
        {"files": ROOFLINE_MODELS, "provenance": JOB_PROVENANCE},
    ),
    "quality_files": (
        {
            "kld": kld_files(),
            "accuracy": [accuracy_file(job) for job in ACCURACY_JOBS],
            "runs": results("summary/runs.parquet"),
            "models": quality_model_files(),
        },
        {
            "files": quality_model_index(),
            "tools": sorted({job.tool for job in ACCURACY_JOBS}),
        },
    ),
}


# A table whose rule a file included before this one still writes by hand (rules/quality.smk: quality_table) is
# left to that rule.
for _table in catalog.tables():
    if workflow.is_rule(_table.rule):
        continue

    rule:
        name:
            _table.rule
        input:
            **catalog_rule_inputs(_table),
            code=code(_table.script, *_table.module_files()),
        output:
            **catalog_rule_outputs(_table),
        log:
            f"logs/{_table.rule}.log",
        conda:
            ENV
        params:
            **catalog_rule_params(_table),
        script:
            catalog_script(locals().get("rule", _table.rule))


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
