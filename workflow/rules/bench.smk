# One job per tool × model × quant × split mode, each writing its own parquet, so only changed inputs rerun.
# Every job declares the GPUs it holds as the gpu resource; a tool that is not installed here ends its jobs
# with a 'skipped' row that says why, and an engine that runs out of memory with a 'failed' row quoting
# llama.cpp's line and the fix (the job succeeds, so the study goes on); any other error fails the job.


rule bench_llama_server:
    input:
        model=model_file,
        server=llama_tool("llama-server"),
        build=f"{BUILD_DIR}/build.json",
        code=bench_code("llama_server.py"),
    output:
        run=run_file_pattern("llama-server"),
        provenance=provenance_pattern("llama-server"),
    log:
        run_log_pattern("llama-server"),
    wildcard_constraints:
        model=study.alternation(study.gguf_models(config)),
        quant=study.alternation(KNOWN_QUANTS),
    conda:
        ENV
    threads: bench_job_threads
    resources:
        gpu=tool_gpus("llama-server"),
    params:
        tool="llama-server",
        plan=canonical_param(bench_plan),
        gpus=tool_gpus("llama-server"),
    script:
        "../scripts/bench.py"


rule bench_llama_bench:
    input:
        model=model_file,
        bench=llama_tool("llama-bench"),
        build=f"{BUILD_DIR}/build.json",
        code=bench_code("llama_bench.py"),
    output:
        run=run_file_pattern("llama-bench"),
        provenance=provenance_pattern("llama-bench"),
    log:
        run_log_pattern("llama-bench"),
    wildcard_constraints:
        model=study.alternation(study.gguf_models(config)),
        quant=study.alternation(KNOWN_QUANTS),
    conda:
        ENV
    threads: bench_job_threads
    resources:
        gpu=tool_gpus("llama-bench"),
    params:
        tool="llama-bench",
        plan=canonical_param(bench_plan),
        gpus=tool_gpus("llama-bench"),
        n_prompt=tool_setting("llama-bench", "n_prompt"),
        n_gen=tool_setting("llama-bench", "n_gen"),
    script:
        "../scripts/bench.py"


rule bench_llama_cpp_python:
    input:
        model=model_file,
        build=f"{BUILD_DIR}/build.json",
        code=bench_code("llama_cpp_python_backend.py"),
    output:
        run=run_file_pattern("llama-cpp-python"),
        provenance=provenance_pattern("llama-cpp-python"),
    log:
        run_log_pattern("llama-cpp-python"),
    wildcard_constraints:
        model=study.alternation(study.gguf_models(config)),
        quant=study.alternation(KNOWN_QUANTS),
    conda:
        ENV
    threads: bench_job_threads
    resources:
        gpu=tool_gpus("llama-cpp-python"),
    params:
        tool="llama-cpp-python",
        plan=canonical_param(bench_plan),
        gpus=tool_gpus("llama-cpp-python"),
        lib_dir=f"{BUILD_DIR}/bin",
    script:
        "../scripts/bench.py"


rule bench_transformers:
    input:
        model=model_file,
        code=bench_code("transformers_backend.py"),
    output:
        run=run_file_pattern("transformers"),
        provenance=provenance_pattern("transformers"),
    log:
        run_log_pattern("transformers"),
    wildcard_constraints:
        model=study.alternation(study.gguf_models(config)),
        quant=study.alternation(KNOWN_QUANTS),
    conda:
        ENV
    threads: bench_job_threads
    resources:
        gpu=tool_gpus("transformers"),
    params:
        tool="transformers",
        plan=canonical_param(bench_plan),
        gpus=tool_gpus("transformers"),
    script:
        "../scripts/bench.py"


rule bench_vllm:
    input:
        model=model_file,
        code=bench_code("vllm_backend.py"),
    output:
        run=run_file_pattern("vllm"),
        provenance=provenance_pattern("vllm"),
    log:
        run_log_pattern("vllm"),
    wildcard_constraints:
        model=study.alternation(study.gguf_models(config)),
        quant=study.alternation(KNOWN_QUANTS),
    conda:
        ENV
    threads: bench_job_threads
    resources:
        gpu=tool_gpus("vllm"),
    params:
        tool="vllm",
        plan=canonical_param(bench_plan),
        gpus=tool_gpus("vllm"),
    script:
        "../scripts/bench.py"


rule bench_ollama:
    input:
        code=bench_code("ollama_backend.py"),
    output:
        run=run_file_pattern("ollama"),
        provenance=provenance_pattern("ollama"),
    log:
        run_log_pattern("ollama"),
    wildcard_constraints:
        model=study.alternation(study.ollama_models(config)),
        quant=study.alternation(KNOWN_QUANTS),
    conda:
        ENV
    threads: bench_job_threads
    resources:
        gpu=tool_gpus("ollama"),
    params:
        tool="ollama",
        plan=canonical_param(bench_plan),
        gpus=tool_gpus("ollama"),
        tag=ollama_tag,
    script:
        "../scripts/bench.py"


# The study's own GGUF files through Ollama, imported as they are, so llama.cpp and Ollama run the same file.
use rule bench_ollama as bench_ollama_gguf with:
    input:
        model=model_file,
        code=bench_code("ollama_backend.py"),
    wildcard_constraints:
        model=study.alternation(study.gguf_models(config)),
        quant=study.alternation(KNOWN_QUANTS),
