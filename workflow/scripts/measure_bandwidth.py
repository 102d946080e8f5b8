"""The machine's memory bandwidth for the decode roofline: the CPU measured with numpy, each GPU from its
specification via NVML."""

import json
from pathlib import Path

from llmbench.core.logs import script_logging
from llmbench.study.bandwidth import machine_bandwidth


def main(snakemake):
    with script_logging(snakemake.log[0]) as log:
        p = snakemake.params
        record = machine_bandwidth(threads=p.threads, repetitions=p.repetitions)
        out = Path(snakemake.output.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        log.info("CPU: %.1f GB/s, %s", record["cpu"]["bytes_per_s"] / 1e9, record["cpu"]["label"])
        for index, gpu in record["gpus"].items():
            log.info("GPU %s: %s", index, gpu if isinstance(gpu, str) else gpu.get("label", gpu))


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
