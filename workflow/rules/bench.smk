rule bench_llama_server:
    input:
        model=model_file,
        server=llama_tool("llama-server"),
        build=f"{BUILD_DIR}/build.json",
        code=package_files(
            "backend.py", "llama_server.py", "meters.py", "models.py", "runs.py"
        ),
    output:
        f"{RESULTS}/runs/llama-server/{{model}}/{{quant}}/{{split}}.parquet",
    log:
        f"{RESULTS}/logs/bench/llama-server/{{model}}/{{quant}}/{{split}}.log",
    wildcard_constraints:
        model=study.alternation(study.gguf_models(config)),
        quant=study.alternation(KNOWN_QUANTS),
    conda:
        ENV
    threads: bench_job_threads()
    resources:
        gpu=tool_gpus("llama-server"),
    params:
        tool="llama-server",
        plan=bench_plan,
        gpus=tool_gpus("llama-server"),
    script:
        "../scripts/bench.py"


rule bench_ollama:
    input:
        code=package_files("backend.py", "meters.py", "ollama_backend.py", "runs.py"),
    output:
        f"{RESULTS}/runs/ollama/{{model}}/{{quant}}/{{split}}.parquet",
    log:
        f"{RESULTS}/logs/bench/ollama/{{model}}/{{quant}}/{{split}}.log",
    wildcard_constraints:
        model=study.alternation(study.ollama_models(config)),
        quant=study.alternation(KNOWN_QUANTS),
    conda:
        ENV
    threads: bench_job_threads()
    resources:
        gpu=tool_gpus("ollama"),
    params:
        tool="ollama",
        plan=bench_plan,
        gpus=tool_gpus("ollama"),
        tag=ollama_tag,
    script:
        "../scripts/bench.py"


rule bench_llama_bench:
    input:
        model=model_file,
        bench=llama_tool("llama-bench"),
        build=f"{BUILD_DIR}/build.json",
        code=package_files("llama_bench.py", "models.py", "runs.py"),
    output:
        f"{RESULTS}/runs/llama-bench/{{model}}/{{quant}}/{{split}}.parquet",
    log:
        f"{RESULTS}/logs/bench/llama-bench/{{model}}/{{quant}}/{{split}}.log",
    wildcard_constraints:
        model=study.alternation(study.gguf_models(config)),
        quant=study.alternation(KNOWN_QUANTS),
    conda:
        ENV
    threads: bench_job_threads()
    resources:
        gpu=tool_gpus("llama-bench"),
    params:
        tool="llama-bench",
        plan=bench_plan,
        gpus=tool_gpus("llama-bench"),
        n_prompt=tool_setting("llama-bench", "n_prompt"),
        n_gen=tool_setting("llama-bench", "n_gen"),
    script:
        "../scripts/bench.py"
