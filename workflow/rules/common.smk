import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from llmbench.core import runlock

from llmbench.outputs import catalog

from llmbench.study import plan as study
from llmbench.toolchain.build import TOOLS as LLAMA_TOOLS
from llmbench.core.codedeps import code_files
from llmbench.engines.registry import TOOLS, job_options
from llmbench.toolchain.build import BuildSpec
from llmbench.study.configcheck import load_schema, validate_config
from llmbench.core.params import canonical_param
from llmbench.core.quants import KNOWN_QUANTS, REFERENCE_QUANT

validate_config(
    config, load_schema(Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
)
# `--unlock` while a run of the study is alive would let a second run measure beside it (llmbench/core/runlock.py).
try:
    runlock.refuse_unlock()
except runlock.RunLocked as _e:
    raise WorkflowError(str(_e))
for _unpinned in study.unpinned_revisions(config):
    logger.warning(
        f"{_unpinned} is not a commit: the file can change under the study. "
        "Pin the 40-hex commit; the one it resolves to is recorded in the .json beside the file."
    )

RES = config["resources_dir"]
RESULTS = config["results_dir"]
ENV = "../envs/llmbench.yaml"
PKG = Path(workflow.basedir) / "workflow/scripts/llmbench"

BUILD_SPEC = BuildSpec(
    version=config["llama_cpp"]["version"],
    cuda=study.cuda_enabled(config["llama_cpp"]["cuda"]),
    cmake_args=tuple(config["llama_cpp"]["cmake_args"]),
    cpu_build=config["llama_cpp"]["cpu_build"],
    exclude_cpu_features=tuple(config["llama_cpp"]["exclude_cpu_features"]),
)
BUILD_DIR = f"{RES}/llama.cpp/{BUILD_SPEC.variant}"
PYPI_SDIST = f"{RES}/src/llama_cpp_python-{BUILD_SPEC.version}.tar.gz"
# The build's source: the sdist from PyPI, or the local archive llama_cpp.source_archive names.
SOURCE_ARCHIVE = config["llama_cpp"]["source_archive"]
SDIST = (
    f"{RES}/src/{Path(SOURCE_ARCHIVE['path']).name}" if SOURCE_ARCHIVE else PYPI_SDIST
)
JOBS = study.bench_jobs(config)


def code(script, *modules):
    """The package files ``script`` (under workflow/scripts) imports, with ``modules`` and theirs: a rule's code
    inputs, read from the imports so that they cannot fall behind (editing one reruns what it made).
    """
    scripts = Path(workflow.basedir) / "workflow/scripts"
    return [in_checkout(path) for path in code_files(PKG, scripts / script, *modules)]


def in_checkout(path):
    """A file of the workflow by its path relative to the working directory: a checkout moved with its
    .snakemake/ then names the same inputs as before, and nothing reruns (absolute paths would all change).
    """
    return os.path.relpath(Path(workflow.basedir) / path)


def results(path):
    return f"{RESULTS}/{path}"


def resources(path):
    return f"{RES}/{path}"


# The study's figures and tables: each described once in the catalog (llmbench/outputs/catalog.py), which names its files,
# what makes it and its place in the report; the rules (rules/figures.smk, rules/tables.smk), the targets below,
# the report and the archive read it.


def catalog_file(entry, ext):
    """One of a catalog output's files, in the report where the catalog says so: under its category and
    subcategory, listed by its label and format, captioned by workflow/report/<its name>.rst.
    """
    path = results(entry.paths()[ext])
    if ext not in entry.reported:
        return path
    return report(
        path,
        caption=f"../report/{entry.caption_file}",
        category=entry.section,
        subcategory=entry.subcategory,
        labels=entry.report_labels(ext),
    )


def catalog_files(entry):
    """A catalog output's files by format: a figure as PNG and interactive HTML (both in the report) and SVG, a
    table as CSV and Markdown (both in the report)."""
    return {ext: catalog_file(entry, ext) for ext in entry.formats}


def catalog_rule_outputs(entry):
    """What a catalog output's rule writes — its files, the summaries it assembles (the aggregate rule's rows), its extra
    files."""
    assembled = entry.inputs if entry.assembles else {}
    return {
        **catalog_files(entry),
        **{key: results(path) for key, path in {**assembled, **entry.extra}.items()},
    }


def catalog_rule_inputs(entry):
    """A catalog output's rule inputs — the summary files it is made from (none where its rule writes them; an
    optional one only where the study makes it), then what it needs (rules/tables.smk's ``NEEDS``).
    """
    found = (
        {}
        if entry.assembles
        else {k: results(p) for k, p in made_inputs(entry).items()}
    )
    for need in entry.needs:
        found.update(NEEDS[need][0])
    return found


def catalog_rule_params(entry):
    """A catalog output's rule params — its config keys' values (canonical, so that an equal config reruns nothing), then
    what it needs."""
    params = {k: canonical_param(v) for k, v in entry.config_params(config).items()}
    for need in entry.needs:
        params.update(NEEDS[need][1])
    return params


def catalog_script(rule_name):
    """The script of the rule ``rule_name`` (a catalog output's), as a rule names it.

    A rule's script is evaluated twice: where the rule is defined, and again in its job's run function, where a
    loop variable holds its last value; there ``rule`` (the job's rule name) is one of the function's arguments.
    So a rule made in a loop names it ``catalog_script(locals().get("rule", <its own name>))``.
    """
    return f"../scripts/{catalog.by_rule(rule_name).script}"


def gguf_and_record(stem):
    """A model file and the record beside it, under the model's folder."""
    folder = f"{RES}/models/{{model}}"
    return {"gguf": f"{folder}/{stem}.gguf", "record": f"{folder}/{stem}.json"}


def build_dir_of(wildcards, output):
    return str(Path(output.info).parent)


def llama_tool(name):
    return f"{BUILD_DIR}/bin/{name}"


def model_file(wildcards):
    return study.model_path(config, RES, wildcards.model, wildcards.quant)


def model_source(wildcards):
    return config["models"][wildcards.model]["source"]


def hf_quant_source(wildcards):
    src = config["models"][wildcards.model]["source"]
    entry = src["files"][wildcards.quant]
    return {
        "repo": src["repo"],
        "revision": src["revision"],
        "filename": entry["filename"],
        "sha256": entry["sha256"],
    }


def hf_shard_source(wildcards):
    """One shard's repository file, revision and sha256 as plain values (a change refetches that shard)."""
    return study.hf_shard_source(
        config, wildcards.model, wildcards.quant, wildcards.shard
    )


def other_shards(wildcards):
    """The first shard's job takes every other shard and its record (to check the set and record it whole)."""
    names = study.shard_files(config, wildcards.model, wildcards.quant)
    if f"{wildcards.quant}-{wildcards.shard}.gguf" != names[0]:
        return {}
    folder = f"{RES}/models/{wildcards.model}"
    return {
        "shards": [f"{folder}/{name}" for name in names[1:]],
        "shard_records": [
            f"{folder}/{Path(name).with_suffix('.json')}" for name in names[1:]
        ],
    }


def run_path(
    tool,
    suffix,
    model="{model}",
    quant="{quant}",
    split="{split}",
    concurrency="{concurrency}",
    depth="{depth}",
):
    """A bench job's file (its rows: .parquet, how they were measured: .provenance.json); wildcards by default.
    One folder per split mode, one file per load level (c: concurrent requests) and context depth (d: tokens).
    """
    return (
        f"{RESULTS}/runs/{tool}/{model}/{quant}/{split}/c{concurrency}-d{depth}{suffix}"
    )


def job_path(job, suffix):
    return run_path(
        job.tool, suffix, job.model, job.quant, job.split, job.concurrency, job.depth
    )


def run_file(job):
    return job_path(job, ".parquet")


def provenance_file(job):
    return job_path(job, ".provenance.json")


def all_run_files():
    return [run_file(job) for job in JOBS]


def tool_gpus(tool):
    """GPUs a job of this tool holds (0 for a tool the study does not use: its rule then makes no job)."""
    return config["tools"].get(tool, {}).get("gpus", 0)


def engine_params(tool):
    """A job's engine settings as plain values (a change reruns it); threads come from the job itself."""
    record = TOOLS[tool]
    options = job_options(tool, config["tools"].get(tool))

    def params(wildcards):
        bench, model = config["bench"], config["models"][wildcards.model]
        name = record.model_name
        return {
            "n_gpu_layers": gpu_layers(wildcards),
            "tensor_split": model.get("tensor_split"),
            "gpus": tool_gpus(tool),
            "seed": bench["seed"],
            "ctx_size": bench["ctx_size"],
            "start_timeout_s": bench["start_timeout_s"],
            "request_timeout_s": bench["request_timeout_s"],
            "model_name": (
                name(wildcards.model, wildcards.quant, model["source"])
                if name
                else None
            ),
            # A runner (llama-bench, llama-batched-bench) runs a llama.cpp tool under a limit.
            **({} if record.generates else tool_timeout_params()),
            # A generating tool's options set under tools.<tool>, only where any is set: a study that sets
            # none keeps its jobs' params (a runner's come as its tool_settings).
            **({"options": options} if record.generates and options else {}),
        }

    return params


def tool_timeout_params():
    """bench.tool_timeout_s for a job that runs a llama.cpp tool (llama-bench, llama-batched-bench,
    llama-perplexity, llama-quantize), only where the config sets it: left null, each run's limit is derived
    from its work (llmbench/core/logs.py) and no job's params change, so nothing reruns for a key it never used.
    """
    limit = config["bench"].get("tool_timeout_s")
    return {} if limit is None else {"tool_timeout_s": limit}


def tool_settings(tool):
    """A runner's options set under tools.<tool> (its registry record declares them: llama-bench's n_prompt,
    n_gen); a generating tool's come with its engine settings (engine_params), so this is empty for it.
    """
    if TOOLS[tool].generates:
        return {}
    return job_options(tool, config["tools"].get(tool))


def run_plan(wildcards):
    """What a bench job generates and how often, as plain values (a change reruns it)."""
    bench = config["bench"]
    keys = ("prompts", "repetitions", "warmup", "idle_s", "energy_estimate_w")
    return {
        **{key: bench[key] for key in keys},
        # Absent (None) where the config has none, so that a study without it keeps its jobs' params.
        **({"precision": bench["precision"]} if bench.get("precision") else {}),
        "temperature": bench["temperature"],
        "exclusive": bench["exclusive"],
    }


def bench_inputs(tool):
    """A bench job's inputs: its model file (none for an Ollama library tag), and the llama.cpp build it runs."""
    record = TOOLS[tool]

    def inputs(wildcards):
        found = {}
        if wildcards.model in study.gguf_models(config):
            found["model"] = model_file(wildcards)
        if record.generates and int(wildcards.get("depth", 0)) > 0:
            # A server's prompts follow this text, cut to the depth by its tokenizer.
            found["context"] = corpus_file()
        if record.uses_build:
            found["build"] = f"{BUILD_DIR}/build.json"
            found["binaries"] = [
                llama_tool(b) for b in record.llama_cpp if b != "libllama"
            ]
        found["code"] = code("bench.py", *record.module_files())
        return found

    return inputs


def gpu_layers(wildcards):
    """llama.cpp's -ngl from the model; for Ollama its num_gpu option (None lets Ollama decide)."""
    if study.source_kind(config["models"][wildcards.model]) == "ollama":
        return config["tools"].get("ollama", {}).get("num_gpu")
    return config["models"][wildcards.model]["n_gpu_layers"]


def whole_machine_threads(wildcards):
    """All the cores given with --cores, asked when a job is made: `snakemake --unlock` parses the workflow
    without --cores, and reading workflow.cores at parse time would fail it."""
    return workflow.cores


def bench_job_threads(wildcards=None):
    """bench.threads, or all the cores where it is 0 (asked when a job is made, as whole_machine_threads)."""
    return config["bench"]["threads"] or workflow.cores


QUALITY = config["quality"]
ACCURACY_JOBS = study.accuracy_jobs(config)


def corpus_file():
    """The corpus llama-perplexity reads: a file kept with the workflow, or one fetched from the hub."""
    corpus = QUALITY["corpus"]
    if corpus["kind"] == "hf":
        return f"{RES}/corpus/{Path(corpus['filename']).stem}.txt"
    return in_checkout(corpus["path"])


def questions_file():
    return in_checkout(QUALITY["questions"])


def reference_of(wildcards):
    return study.reference_quant(config, wildcards.model)


def reference_model_file(wildcards):
    return study.model_path(config, RES, wildcards.model, reference_of(wildcards))


def quality_model_index():
    """Model files of the quality table as plain values: [model, quant, path] each."""
    names = {*study.kld_models(config), *(j.model for j in ACCURACY_JOBS)}
    return [
        [m, q, study.model_path(config, RES, m, q)]
        for m in sorted(names & set(study.gguf_models(config)))
        for q in study.quants_of(config, m)
    ]


def quality_model_files():
    return [path for _, _, path in quality_model_index()]


def kld_files():
    return [
        f"{RESULTS}/quality/kld/{model}/{quant}.parquet"
        for model in study.kld_models(config)
        for quant in study.quants_of(config, model)
    ]


def accuracy_file(job):
    return f"{RESULTS}/quality/accuracy/{job.tool}/{job.model}/{job.quant}.parquet"


def accuracy_job(wildcards):
    for job in ACCURACY_JOBS:
        if (job.tool, job.model, job.quant) == (
            wildcards.tool,
            wildcards.model,
            wildcards.quant,
        ):
            return job
    raise ValueError(
        f"no accuracy job for {wildcards.tool} {wildcards.model} {wildcards.quant}"
    )


def accuracy_inputs(wildcards):
    """The job's question set, model file and the tool's own build."""
    return {
        **bench_inputs(wildcards.tool)(wildcards),
        "code": code("answer_accuracy.py", *TOOLS[wildcards.tool].module_files()),
        "questions": questions_file(),
    }


def accuracy_gpus(wildcards):
    return accuracy_job(wildcards).gpus


def accuracy_engine(wildcards):
    """The engine's settings as plain values, in the job's split mode (a change reruns the job)."""
    return {
        **engine_params(wildcards.tool)(wildcards),
        "split": accuracy_job(wildcards).split,
    }


# A catalog output with ``when`` is made only in a study that measures that.
WHEN = {"quality": lambda: bool(kld_files() or ACCURACY_JOBS)}


def made(entry):
    """Whether the study makes the catalog output ``entry``."""
    return entry.when is None or WHEN[entry.when]()


def made_inputs(entry):
    """The summary files a catalog output is made from, by name, under results/: an optional one only where the
    study makes it."""
    return {
        name: path
        for name, path in entry.inputs.items()
        if name not in entry.optional or WHEN[entry.optional[name]]()
    }


def catalog_targets(entries):
    """The file of each output the study makes that its targets ask for (the others come with it)."""
    return [results(entry.target) for entry in entries if made(entry)]


def measurement_outputs():
    """The rows (with how each job measured them), statistics and tables: all but the figures (no plotting stack
    needed).

    The provenance files are named here, not only as a bench job's second output: Snakemake (9.27, dag.py
    update_needrun) reruns a job for a missing output only where a job that runs needs that file; `rule all`
    (no output of its own) always runs, a table rule whose output is up to date does not. Without them here a
    deleted provenance file was never made again ("Nothing to be done").
    """
    return [
        *all_run_files(),
        *[provenance_file(job) for job in JOBS],
        *catalog_targets(catalog.tables()),
    ]


def final_outputs():
    return [*measurement_outputs(), *catalog_targets(catalog.figures())]


# The archive's top folder inside is named <study>-<day measured>, read from the rows when it is made.
ARCHIVE = f"{RESULTS}/archive/{config['study']}.tar.gz"


def archive_members():
    """[name in the archive, path] of everything the study made from its measurements, and how."""
    results = [
        *all_run_files(),
        *[provenance_file(job) for job in JOBS],
        *kld_files(),
        *[
            f"{RESULTS}/quality/kld/{m}/reference.json"
            for m in study.kld_models(config)
        ],
        *[accuracy_file(job) for job in ACCURACY_JOBS],
        # Every output the study makes, with the summaries it is made from (what rerender reads).
        *dict.fromkeys(
            f"{RESULTS}/{path}"
            for entry in catalog.OUTPUTS.values()
            if made(entry)
            for path in [*made_inputs(entry).values(), *entry.paths().values()]
        ),
        f"{RESULTS}/config/study.yaml",
    ]
    members = [[f"results/{Path(p).relative_to(RESULTS)}", p] for p in results]
    records = [f"{BUILD_DIR}/build.json"] + [
        study.model_record_path(config, RES, m, q)
        for m in study.gguf_models(config)
        for q in study.quants_of(config, m)
    ]
    members += [[f"resources/{Path(p).relative_to(RES)}", p] for p in records]
    return members


REPORT = f"{RESULTS}/report.html"


def hold_run_lock():
    """Hold the study's run lock for this run's life (llmbench.core.runlock): a second run in this checkout, or a run
    after `--unlock` beside a live one, is refused naming the live run."""
    try:
        runlock.take()
    except runlock.RunLocked as e:
        raise WorkflowError(str(e))


def make_report():
    """The study's Snakemake report after a run that made something, with the run's own config arguments.

    A profile's --report-after-run would also fire on dry runs and fail on a fresh clone (nothing to report yet),
    so the report is made here instead. It is written under a temporary name and moved into place whole: a full
    disk leaves no truncated report.html behind. A report that could not be made fails the run (WorkflowError:
    a non-zero exit), naming the cause (the disk, where it is full) and the command that makes it once fixed;
    a run with nothing to do runs no hook, so the report is not retried by itself.
    """
    import os
    import subprocess
    import sys

    from llmbench.core.files import FILESYSTEM_ERRORS, write_failure

    # A run of one target (the build, `measurements`): the report would miss what it reports.
    unmade = [path for path in final_outputs() if not Path(path).exists()]
    if unmade:
        logger.info(
            f"No report yet: {len(unmade)} of the study's outputs are not made (e.g. {unmade[0]})"
        )
        return
    settings = workflow.config_settings
    # Snakemake writes a report only under a name ending in .html (or .zip).
    part = Path(REPORT).with_name(f".{Path(REPORT).stem}.{os.getpid()}.part.html")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", workflow.main_snakefile]
    cmd += ["--cores", "1", "--nolock", "--report", str(part)]
    for configfile in settings.configfiles:
        cmd += ["--configfile", str(configfile)]
    if settings.config_args:
        cmd += ["--config", *settings.config_args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip()[-2000:])
        os.replace(part, REPORT)
    except Exception as e:
        # The cause as the report's writer met it: "no space left on device writing results/report.html ...".
        found = write_failure(e, REPORT, only=FILESYSTEM_ERRORS)
        said = str(found) if found is not None else f"the report was not made: {e}"
        logger.error(
            f"{said}\nOnce fixed, make it with: snakemake --report {REPORT} "
            "(add the --configfile/--config of this run)"
        )
        raise WorkflowError(f"{REPORT} was not made: {said}")
    finally:
        part.unlink(missing_ok=True)
    logger.info(f"Report of the study: {REPORT}")


def failed_run_file(row):
    """The bench file of a failed row of the study's table (its group's job)."""
    keys = ("model", "quant", "split", "concurrency", "depth")
    return run_path(row["tool"], ".parquet", *(row[k] for k in keys))


def rerun_command():
    """The command of this run, as a user would type it again: snakemake, --cores all, its config arguments."""
    import shlex

    settings = workflow.config_settings
    cmd = ["snakemake", "--cores", "all"]
    for configfile in settings.configfiles:
        cmd += ["--configfile", str(configfile)]
    if settings.config_args:
        cmd += ["--config", *settings.config_args]
    return shlex.join(cmd)


def fail_on_failed_measurements():
    """End a run that made something with the summary of its failed measurements and a non-zero exit status (so
    that a script can tell); the failed jobs' rows, every table, figure and the report are made by then.
    """
    from llmbench.study.failures import failed_measurements, summary

    failed = failed_measurements(
        f"{RESULTS}/summary/runs.parquet",
        kld_files(),
        [accuracy_file(job) for job in ACCURACY_JOBS],
        run_file=failed_run_file,
    )
    if failed.height:
        logger.error(summary(failed, rerun_command()))
        raise WorkflowError(
            f"{failed.height} measurement(s) failed (listed above, and in the tables and report)"
        )
