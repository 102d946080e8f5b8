# The figures drawn from the study's rows (llmbench/study.py FIGURES names them, llmbench/plots.py draws them):
# box plots per quant, one panel per tool × model, split modes side by side; where something was not measured the
# figure says so, with the recorded reasons. One rule each, with the figure's own caption.


for _figure in study.FIGURES:

    rule:
        name:
            _figure.rule
        input:
            runs=results("summary/runs.parquet"),
            code=code("plot_figure.py"),
        output:
            **figure_outputs(_figure.name, _figure.subcategory, _figure.label),
        log:
            f"logs/{_figure.rule}.log",
        conda:
            ENV
        params:
            study=config["study"],
            figure=_figure.name,
        script:
            "../scripts/plot_figure.py"


# Before a run's first job: the study's run lock (hold_run_lock, in common.smk), held until the run ends.
onstart:
    hold_run_lock()


# After a run that made something: the study's report, then what failed (make_report and
# fail_on_failed_measurements, in common.smk).
onsuccess:
    try:
        make_report()
    finally:  # a report that failed still lists the failed measurements; either fails the run
        fail_on_failed_measurements()
