# Loss of quality per quant: KL divergence and perplexity against the model's reference, answer accuracy per
# tool, and the table and Pareto figure that put them beside speed and cost.


rule fetch_corpus:
    output:
        text=f"{RES}/corpus/{{name}}.txt",
        record=f"{RES}/corpus/{{name}}.json",
    log:
        "logs/fetch_corpus/{name}.log",
    retries: 2
    conda:
        ENV
    params:
        source=canonical_param(QUALITY["corpus"]),
    script:
        "../scripts/fetch_corpus.py"


rule kld_base:
    input:
        model=reference_model_file,
        corpus=corpus_file(),
        perplexity=llama_tool("llama-perplexity"),
        code=code("kld_base.py"),
    output:
        base=f"{RES}/quality/{{model}}/kld-base.bin",
        summary=f"{RESULTS}/quality/kld/{{model}}/reference.json",
    log:
        f"{RESULTS}/logs/quality/kld/{{model}}/reference.log",
    wildcard_constraints:
        model=study.alternation(study.kld_models(config)),
    conda:
        ENV
    threads: whole_machine_threads
    params:
        **tool_timeout_params(),
        reference=reference_of,
        ctx_size=QUALITY["ctx_size"],
        chunks=QUALITY["chunks"],
        corpus_sha256=QUALITY["corpus"].get("sha256"),
    script:
        "../scripts/kld_base.py"


rule kld:
    input:
        model=model_file,
        base=f"{RES}/quality/{{model}}/kld-base.bin",
        reference=f"{RESULTS}/quality/kld/{{model}}/reference.json",
        perplexity=llama_tool("llama-perplexity"),
        code=code("kld.py"),
    output:
        f"{RESULTS}/quality/kld/{{model}}/{{quant}}.parquet",
    log:
        f"{RESULTS}/logs/quality/kld/{{model}}/{{quant}}.log",
    wildcard_constraints:
        model=study.alternation(study.kld_models(config)),
        quant=study.alternation(KNOWN_QUANTS),
    conda:
        ENV
    threads: whole_machine_threads
    params:
        **tool_timeout_params(),
        ctx_size=QUALITY["ctx_size"],
        chunks=QUALITY["chunks"],
    script:
        "../scripts/kld.py"


rule answer_accuracy:
    input:
        unpack(accuracy_inputs),
    output:
        f"{RESULTS}/quality/accuracy/{{tool}}/{{model}}/{{quant}}.parquet",
    log:
        f"{RESULTS}/logs/quality/accuracy/{{tool}}/{{model}}/{{quant}}.log",
    wildcard_constraints:
        tool=study.alternation(job.tool for job in ACCURACY_JOBS),
        quant=study.alternation(KNOWN_QUANTS),
    conda:
        ENV
    threads: bench_job_threads
    resources:
        gpu=accuracy_gpus,
    params:
        engine=canonical_param(accuracy_engine),
    script:
        "../scripts/answer_accuracy.py"
