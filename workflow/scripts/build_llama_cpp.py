"""Build llama.cpp's tools from the vendored source, prove them on this machine, and record how they were built."""

import json
from pathlib import Path

from llmbench.core.logs import script_logging
from llmbench.toolchain.build import BuildSpec, build_llama_cpp


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        p = snakemake.params
        spec = BuildSpec(version=p.version, cuda=p.cuda, cmake_args=tuple(p.cmake_args), cpu_build=p.cpu_build,
                         exclude_cpu_features=tuple(p.exclude_cpu_features))
        with open(snakemake.log[0], "a") as build_log:
            info = build_llama_cpp(
                Path(snakemake.input.sdist), Path(p.source_dir), Path(p.build_dir), spec, snakemake.threads, build_log
            )
        Path(snakemake.output.info).write_text(json.dumps(info, indent=2) + "\n")
        log.info("built llama.cpp %s (commit %s, CUDA %s), proven here as %s", spec.variant, info["commit"], spec.cuda,
                 info["cpu_target"])
        for off in info["cpu_probe"]["turned_off"]:
            log.warning("turned off %s before the first build: %s (%s)", off["feature"], off["why"], off["upstream"])
        for off in info["cpu_features_turned_off"]:
            log.warning("turned off %s: %s died by %s (%s)", off["feature"], off["why"]["tool"], off["why"]["signal"],
                        off["upstream"] or "no upstream reference")


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
