# The study's figures, one rule each, from the catalog (llmbench/outputs/catalog.py names each figure's drawing function in
# llmbench/outputs/figures, the summary file it is drawn from, its caption and place in the report): box plots per quant,
# the frameworks side by side, lines over load and context depth, quality against speed or cost. Where something
# was not measured the figure says so, with the recorded reasons.


# A figure whose rule a file included before this one still writes by hand (rules/quality.smk: plot_pareto) is left
# to that rule.
for _figure in catalog.figures():
    if workflow.is_rule(_figure.rule):
        continue

    rule:
        name:
            _figure.rule
        input:
            **catalog_rule_inputs(_figure),
            code=code(_figure.script, *_figure.module_files()),
        output:
            **catalog_rule_outputs(_figure),
        log:
            f"logs/{_figure.rule}.log",
        conda:
            ENV
        params:
            **catalog_rule_params(_figure),
            study=config["study"],
            figure=_figure.name,
        script:
            catalog_script(locals().get("rule", _figure.rule))


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
