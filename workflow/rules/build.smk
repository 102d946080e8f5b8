# llama_cpp.source_archive: a local source archive (e.g. the trimmed one benchmarks/gpu/prepare.py makes for a
# machine without a package registry) stands in the sdist's place, checked by its own sha256.
if SOURCE_ARCHIVE:

    rule take_llama_cpp_source_archive:
        input:
            SOURCE_ARCHIVE["path"],
        output:
            SDIST,
        log:
            f"logs/take_llama_cpp_source_archive/{BUILD_SPEC.version}.log",
        conda:
            ENV
        params:
            sha256=SOURCE_ARCHIVE["sha256"],
        script:
            "../scripts/take_source_archive.py"


rule fetch_llama_cpp_sdist:
    output:
        PYPI_SDIST,
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
