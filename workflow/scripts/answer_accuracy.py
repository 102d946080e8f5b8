"""One tool × model × quant answering the question set greedily; a tool absent here leaves one 'skipped' row, an
engine that fails one 'failed' row with its diagnosis."""

import signal
import sys

from llmbench.core.logs import script_logging
from llmbench.devices.gpu_slots import hold_gpus
from llmbench.engines.base import EngineError, ToolUnavailable, diagnosis_of
from llmbench.engines.registry import tool
from llmbench.modelfiles.models import CorruptModelError, check_gguf
from llmbench.study.accuracy import ask_all, load_questions, not_asked
from llmbench.study.job import Job
from llmbench.study.provenance import check_model_hashes


def main(snakemake):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    job = Job.from_snakemake(snakemake)
    with script_logging(job.log) as log:
        group = {"tool": job.tool, "model": job.model, "quant": job.quant, "split": job.split}
        questions = load_questions(snakemake.input.questions)
        try:
            if job.model_file is not None:
                log.info("model %s: %s", job.model_file, check_gguf(job.model_file))
                # Answers of another file than the one its record names would be noise: ModelHashMismatch.
                log.info("model sha256: %s", check_model_hashes(job.model_file, job.model_record))
            with (hold_gpus(job.gpus, job=str(snakemake.output[0])),
                  tool(job.tool).make_engine(job.settings, job.engine_log) as engine):
                rows = ask_all(engine, questions, job.settings.seed, group)
        except ToolUnavailable as err:
            log.warning("skipped: %s", err)
            rows = not_asked(group, str(err))
        except (EngineError, CorruptModelError) as err:  # its diagnosis is the row's reason; the study goes on
            found = diagnosis_of(err, job.tool, job.engine_log, job.model_file)
            log.error("failed (%s): %s", found.kind, found.reason)
            rows = not_asked(group, found.reason, "failed")
        rows.write_parquet(snakemake.output[0])
        if rows["correct"].is_not_null().any():
            log.info("%d of %d correct", rows["correct"].sum(), rows.height)


if "snakemake" in globals():
    main(snakemake)  # noqa: F821
