# One job per tool × model × quant × split mode, each writing its own parquet, so only changed inputs rerun.
# One rule per tool of the registry (llmbench/engines/registry.py), named bench_<tool>. Every job declares the
# GPUs it holds as the gpu resource; a tool that is not installed here ends its jobs with a 'skipped' row that
# says why, and an engine that fails with a 'failed' row quoting its own line and the fix (the job succeeds, so
# the study goes on).


for _tool in TOOLS.values():

    rule:
        name:
            _tool.rule
        input:
            unpack(bench_inputs(_tool.name)),
        output:
            run=run_path(_tool.name, ".parquet"),
            provenance=run_path(_tool.name, ".provenance.json"),
        log:
            results(
                f"logs/bench/{_tool.name}/{{model}}/{{quant}}/{{split}}/c{{concurrency}}-d{{depth}}.log"
            ),
        wildcard_constraints:
            model=study.alternation(study.tool_models(config, _tool.name)),
            quant=study.alternation(KNOWN_QUANTS),
            concurrency="[1-9][0-9]*",
            depth="0|[1-9][0-9]*",
        conda:
            ENV
        threads: bench_job_threads
        resources:
            gpu=tool_gpus(_tool.name),
        params:
            tool=_tool.name,
            engine=canonical_param(engine_params(_tool.name)),
            plan=canonical_param(run_plan),
            tool_settings=tool_settings(_tool.name),
        script:
            "../scripts/bench.py"
