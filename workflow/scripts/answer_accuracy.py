"""One tool × model × quant answering the question set greedily; a tool absent here leaves one 'skipped' row, an
engine that fails one 'failed' row with its diagnosis."""

import signal
import sys
from pathlib import Path

from llmbench.accuracy import ask_all, load_questions, not_asked
from llmbench.backend import BackendError, ToolUnavailable, diagnosis_of
from llmbench.engines import EngineSettings, make_engine
from llmbench.gpu_slots import hold_gpus
from llmbench.logs import script_logging
from llmbench.models import CorruptModelError, check_gguf


def main(snakemake):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with script_logging(snakemake.log[0]) as log:
        w, e, inp = snakemake.wildcards, snakemake.params.engine, snakemake.input
        model = Path(inp.model) if "model" in inp.keys() else None
        settings = EngineSettings(
            tool=w.tool, model=model, server=Path(inp.server) if "server" in inp.keys() else None,
            lib_dir=Path(e["lib_dir"]) if e["lib_dir"] else None, threads=snakemake.threads,
            **{k: v for k, v in e.items() if k != "lib_dir"},
        )
        group = {"tool": w.tool, "model": w.model, "quant": w.quant, "split": settings.split}
        questions = load_questions(inp.questions)
        engine_log = Path(snakemake.log[0]).with_suffix(".engine.log")
        try:
            if model is not None:
                log.info("model %s: %s", model, check_gguf(model))
            with hold_gpus(settings.gpus, job=str(snakemake.output[0])), make_engine(settings, engine_log) as engine:
                rows = ask_all(engine, questions, settings.seed, group)
        except ToolUnavailable as err:
            log.warning("skipped: %s", err)
            rows = not_asked(group, str(err))
        except (BackendError, CorruptModelError) as err:  # its diagnosis is the row's reason; the study goes on
            found = diagnosis_of(err, w.tool, engine_log, model)
            log.error("failed (%s): %s", found.kind, found.reason)
            rows = not_asked(group, found.reason, "failed")
        rows.write_parquet(snakemake.output[0])
        if rows["correct"].is_not_null().any():
            log.info("%d of %d correct", rows["correct"].sum(), rows.height)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
