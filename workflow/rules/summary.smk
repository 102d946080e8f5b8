# The study summarised across tools: the framework table (facts beside measurements) and the decode roofline
# (decode speed against the memory-bandwidth bound).


# The study's GGUF files its bench jobs ran, as plain values: [model, quant, path] each.
ROOFLINE_MODELS = [
    [m, q, study.model_path(config, RES, m, q)]
    for m, q in sorted(
        {(j.model, j.quant) for j in JOBS if j.model in study.gguf_models(config)}
    )
]
# [tool, model, quant, split, provenance path] of every bench job: which GPUs each job read. Sorted: the jobs come
# in the config's key order, which must not rerun the table (an equal config reruns nothing).
JOB_PROVENANCE = sorted(
    [j.tool, j.model, j.quant, j.split, provenance_file(j)] for j in JOBS
)


rule measure_memory_bandwidth:
    input:
        code=package_files("bandwidth.py"),
    output:
        json=f"{RESULTS}/hardware/memory_bandwidth.json",
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


rule framework_table:
    input:
        runs=f"{RESULTS}/summary/runs.parquet",
        facts=str(Path(workflow.basedir) / "workflow/data/frameworks.yaml"),
        code=package_files(
            "frameworks.py", "render.py", "costs.py", "quants.py", "stats.py"
        ),
    output:
        csv=report(
            f"{RESULTS}/tables/frameworks.csv",
            caption="../report/framework_table.rst",
            category="Tables",
            subcategory="Frameworks",
            labels={"table": "frameworks compared", "format": "CSV"},
        ),
        md=report(
            f"{RESULTS}/tables/frameworks.md",
            caption="../report/framework_table.rst",
            category="Tables",
            subcategory="Frameworks",
            labels={"table": "frameworks compared", "format": "Markdown"},
        ),
    log:
        "logs/framework_table.log",
    conda:
        ENV
    script:
        "../scripts/framework_table.py"


rule roofline_table:
    input:
        runs=f"{RESULTS}/summary/runs.parquet",
        bandwidth=f"{RESULTS}/hardware/memory_bandwidth.json",
        models=[path for *_, path in ROOFLINE_MODELS],
        provenance=[path for *_, path in JOB_PROVENANCE],
        code=package_files(
            "roofline.py",
            "bandwidth.py",
            "models.py",
            "costs.py",
            "quants.py",
            "stats.py",
        ),
    output:
        csv=report(
            f"{RESULTS}/tables/decode_roofline.csv",
            caption="../report/roofline.rst",
            category="Tables",
            subcategory="Speed",
            labels={"table": "decode against bandwidth bound", "format": "CSV"},
        ),
        md=report(
            f"{RESULTS}/tables/decode_roofline.md",
            caption="../report/roofline.rst",
            category="Tables",
            subcategory="Speed",
            labels={"table": "decode against bandwidth bound", "format": "Markdown"},
        ),
    log:
        "logs/roofline_table.log",
    conda:
        ENV
    params:
        files=ROOFLINE_MODELS,
        provenance=JOB_PROVENANCE,
    script:
        "../scripts/roofline_table.py"
