"""Build llama.cpp's tools from the vendored source and record how they were built."""

import json
from pathlib import Path

from llmbench.build import BuildSpec, build_llama_cpp
from llmbench.logs import script_logging


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        p = snakemake.params
        spec = BuildSpec(version=p.version, cuda=p.cuda, cmake_args=tuple(p.cmake_args))
        with open(snakemake.log[0], "a") as build_log:
            info = build_llama_cpp(
                Path(snakemake.input.sdist), Path(p.source_dir), Path(p.build_dir), spec, snakemake.threads, build_log
            )
        Path(snakemake.output.info).write_text(json.dumps(info, indent=2) + "\n")
        log.info("built llama.cpp %s (commit %s, CUDA %s)", spec.variant, info["commit"], spec.cuda)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
