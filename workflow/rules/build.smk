rule fetch_llama_cpp_sdist:
    output:
        SDIST,
    log:
        f"logs/fetch_llama_cpp_sdist/{BUILD_SPEC.version}.log",
    retries: 2
    conda:
        ENV
    params:
        version=BUILD_SPEC.version,
        sha256=config["llama_cpp"]["sdist_sha256"],
    script:
        "../scripts/fetch_sdist.py"


rule build_llama_cpp:
    input:
        sdist=SDIST,
        code=code("build_llama_cpp.py"),
    output:
        tools=[llama_tool(t) for t in LLAMA_TOOLS],
        info=f"{BUILD_DIR}/build.json",
    log:
        f"logs/build_llama_cpp/{BUILD_SPEC.variant}.log",
    conda:
        ENV
    threads: whole_machine_threads
    params:
        version=BUILD_SPEC.version,
        cuda=BUILD_SPEC.cuda,
        cmake_args=list(BUILD_SPEC.cmake_args),
        cpu_build=BUILD_SPEC.cpu_build,
        exclude_cpu_features=sorted(BUILD_SPEC.exclude_cpu_features),
        source_dir=f"{RES}/llama.cpp/src-{BUILD_SPEC.version}",
        build_dir=build_dir_of,
    script:
        "../scripts/build_llama_cpp.py"
