"""One bench job: start llama-server on the model, generate every prompt × repetition, write the rows."""

import signal
import sys
from pathlib import Path

from llmbench.llama_server import LlamaServer, LlamaServerSettings
from llmbench.logs import script_logging
from llmbench.models import check_gguf
from llmbench.runs import Prompt, RunPlan, run_generations


def main(snakemake):
    # Snakemake stops jobs with SIGTERM: turn it into an exception so the server is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with script_logging(snakemake.log[0]) as log:
        w, p = snakemake.wildcards, snakemake.params.plan
        model = Path(snakemake.input.model)
        log.info("model %s: %s", model, check_gguf(model))
        plan = RunPlan(
            tool="llama-server", model=w.model, quant=w.quant, split=w.split,
            prompts=tuple(Prompt(x["id"], x["text"], x["max_tokens"]) for x in p["prompts"]),
            repetitions=p["repetitions"], warmup=p["warmup"], temperature=p["temperature"], seed=p["seed"],
            n_gpu_layers=p["n_gpu_layers"], gpus=snakemake.params.gpus, threads=snakemake.threads,
        )
        settings = LlamaServerSettings(
            binary=Path(snakemake.input.server), model=model, n_gpu_layers=p["n_gpu_layers"], split_mode=w.split,
            threads=snakemake.threads, ctx_size=p["ctx_size"], start_timeout_s=p["start_timeout_s"],
            request_timeout_s=p["request_timeout_s"],
        )
        server_log = Path(snakemake.log[0]).with_suffix(".server.log")
        server_log.unlink(missing_ok=True)
        with LlamaServer(settings, server_log) as server:
            log.info("llama-server on %s: %s", server.url, server.facts())
            rows = run_generations(server, plan)
        rows.write_parquet(snakemake.output[0])
        log.info("wrote %d rows to %s", rows.height, snakemake.output[0])


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
