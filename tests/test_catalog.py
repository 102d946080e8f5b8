"""Every figure and table described once (llmbench/outputs/catalog.py): the rules, the study's targets, the report, the
archive and rerender read the catalog, so a new figure is its drawing function, one entry and its caption.

The figure added here is a stand-in (``standin_figure``, named as one): a bar per tool of the rows it is given,
added to a copy of the workflow in its one place, as tests/engines/test_registry.py adds a stand-in framework.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
import yaml
from test_plots import stand_in_runs, stand_in_sweep

from conftest import REPO, copy_workflow, run_snakemake
from llmbench.outputs import catalog
from llmbench.outputs.catalog import Figure, Table
from llmbench.outputs.render import rerender

STANDIN_MODULE = '''
"""A stand-in figure, for a test only: the generations per tool, one bar each."""

import altair as alt
import polars as pl


def standin_chart(runs: pl.DataFrame, study: str) -> alt.Chart:
    counts = runs.group_by("tool").len().sort("tool")
    return alt.Chart(counts).mark_bar().encode(x="tool:N", y="len:Q").properties(title=f"{study}: stand-in")
'''

STANDIN_ENTRY = '''
register(Figure("standin_figure", "plot_standin_figure", "llmbench.outputs.figures.standin:standin_chart", "Speed",
                "a stand-in figure"))
'''

STANDIN_CAPTION = "A stand-in figure, for a test only: how it was measured is not said, nothing was.\n"

# Every rule of a workflow (run in its folder): its outputs with their report() settings, its inputs (but the code
# files), params and script; parsed by Snakemake itself, in a process of its own so that the workflow's own copy
# of llmbench is the one imported.
DUMP_RULES = '''
import json, sys
from pathlib import Path
from snakemake.api import ConfigSettings, OutputSettings, ResourceSettings, SnakemakeApi, StorageSettings
from snakemake.io import get_flag_value, is_flagged

work = Path.cwd()
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(cores=1), storage_settings=StorageSettings(),
                            config_settings=ConfigSettings(configfiles=[work / "config/config.yaml"]),
                            snakefile=work / "Snakefile", workdir=work)._workflow
    rules = {}
    for rule in workflow.rules:
        outputs = {}
        for f in rule.output:
            r = get_flag_value(f, "report") if is_flagged(f, "report") else None
            outputs[str(f)] = r and {"caption": str(Path(str(r.caption)).resolve().relative_to(work)),
                                     "category": r.category, "subcategory": r.subcategory, "labels": r.labels}
        rules[rule.name] = {
            "outputs": outputs, "output_names": sorted(rule.output._names),
            "inputs": {name: sorted(map(str, v)) if isinstance(v, list) else str(v)
                       for name, v in rule.input.items() if name != "code" and not callable(v)},
            "params": {name: repr(v) for name, v in rule.params.items()},
            "script": rule.script, "log": [str(f) for f in rule.log],
        }
    json.dump(rules, sys.stdout)
'''


def standin_workflow(tmp_path: Path) -> Path:
    """A copy of the workflow where the stand-in figure is added in its one place: its function, its catalog entry
    and its caption."""
    work = copy_workflow(tmp_path)
    (work / "workflow/scripts/llmbench/outputs/figures/standin.py").write_text(textwrap.dedent(STANDIN_MODULE))
    with open(work / "workflow/scripts/llmbench/outputs/catalog.py", "a") as fh:
        fh.write(STANDIN_ENTRY)
    (work / "workflow/report/standin_figure.rst").write_text(STANDIN_CAPTION)
    return work


def workflow_rules(work: Path) -> dict[str, dict]:
    proc = subprocess.run([sys.executable, "-c", DUMP_RULES], cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> dict[str, dict]:
    """The rules of the workflow as it is, on the default config."""
    return workflow_rules(copy_workflow(tmp_path_factory.mktemp("as-is")))


def test_a_figure_added_in_one_place_is_planned_drawn_and_reported(tmp_path):
    work = standin_workflow(tmp_path)
    plan = run_snakemake(work, "-n")
    assert "rule plot_standin_figure:" in plan and re.search(r"^plot_standin_figure\s+1$", plan, re.M)
    assert "output: results/figures/standin_figure.png, results/figures/standin_figure.svg, " \
           "results/figures/standin_figure.html" in plan
    # In the report, with its caption, where its entry puts it.
    outputs = workflow_rules(work)["plot_standin_figure"]["outputs"]
    for ext, fmt in (("png", "PNG"), ("html", "interactive")):
        assert outputs[f"results/figures/standin_figure.{ext}"] == {
            "caption": "workflow/report/standin_figure.rst", "category": "Figures", "subcategory": "Speed",
            "labels": {"figure": "a stand-in figure", "format": fmt}}
    assert outputs["results/figures/standin_figure.svg"] is None
    # Drawn by its rule from the study's rows (given here: no benchmark runs).
    (work / "results/summary").mkdir(parents=True)
    stand_in_runs().write_parquet(work / "results/summary/runs.parquet")
    run_snakemake(work, "results/figures/standin_figure.png", "--allowed-rules", "plot_standin_figure")
    figures = work / "results/figures"
    assert (figures / "standin_figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (figures / "standin_figure.svg").read_text()[:500]
    assert "smollm2-135m-cpu: stand-in" in (figures / "standin_figure.html").read_text()
    # And rerender draws it again, from an archive of the study.
    (figures / "standin_figure.png").unlink()
    (work / "results/config").mkdir()
    (work / "results/config/study.yaml").write_text((work / "config/config.yaml").read_text())
    subprocess.run([sys.executable, str(work / "workflow/scripts/rerender.py"), str(work)], check=True,
                   capture_output=True)
    assert (figures / "standin_figure.png").stat().st_size > 0


def test_the_catalogs_outputs_are_the_workflows_rules_with_their_files_and_captions(rules):
    made_by = {path: name for name, rule in rules.items() for path in rule["outputs"]
               if path.startswith(("results/figures/", "results/tables/")) or rule["outputs"][path]}
    assert {rule for rule in made_by.values()} == {entry.rule for entry in catalog.OUTPUTS.values()}
    for entry in catalog.OUTPUTS.values():
        outputs = rules[entry.rule]["outputs"]
        assert {f"results/{path}" for path in entry.paths().values()} <= set(outputs), entry.name
        for ext, path in entry.paths().items():
            report = outputs[f"results/{path}"]
            if ext not in entry.reported:
                assert report is None, path
                continue
            assert report == {"caption": f"workflow/report/{entry.name}.rst", "category": entry.section,
                              "subcategory": entry.subcategory, "labels": entry.report_labels(ext)}, path
        assert rules[entry.rule]["log"] == [f"logs/{entry.rule}.log"]
        assert rules[entry.rule]["script"] == f"../scripts/{entry.script}", entry.rule
    # Every caption is an output's (the landing page aside), and every output has its caption.
    captions = {p.name for p in (REPO / "workflow/report").glob("*.rst")} - {"workflow.rst"}
    assert captions == {entry.caption_file for entry in catalog.OUTPUTS.values()}


def test_the_rules_keep_their_names_and_files():
    names = {entry.name: entry.rule for entry in catalog.OUTPUTS.values()}
    assert names == {
        "stats": "aggregate", "cost_per_1m_tokens": "cost_table", "serving": "serving_table",
        "frameworks": "framework_table", "decode_roofline": "roofline_table", "quality_by_quant": "quality_table",
        "decode_tokens_per_s": "plot_decode_speed", "prefill_tokens_per_s": "plot_prefill_speed",
        "ttft_ms": "plot_ttft", "energy_per_token": "plot_energy_per_token",
        "frameworks_decode_tokens_per_s": "plot_frameworks", "serving_throughput": "plot_serving_throughput",
        "energy_per_token_by_load": "plot_energy_by_load", "latency_by_load": "plot_latency_by_load",
        "decode_by_depth": "plot_decode_by_depth", "pareto_speed_vs_kld": "plot_pareto",
        "decision": "decision_table", "decision_cost_vs_kld": "plot_decision",
    }
    assert catalog.output("stats").paths() == {"csv": "summary/stats.csv"}
    assert catalog.output("serving").paths() == {"csv": "tables/serving.csv", "md": "tables/serving.md"}
    for entry in catalog.OUTPUTS.values():
        assert all(path.exists() for path in entry.module_files()), entry.name
        assert callable(entry.function()), entry.name


def test_the_quality_table_and_pareto_rules_come_from_the_catalog(rules):
    """Nothing writes them by hand any more: the loops make both, the figure drawn by plot_figure.py."""
    assert rules["quality_table"]["script"] == "../scripts/quality_table.py"
    assert rules["plot_pareto"]["script"] == "../scripts/plot_figure.py"
    assert rules["plot_pareto"]["params"]["figure"] == repr("pareto_speed_vs_kld")
    assert "rule quality_table" not in (REPO / "workflow/rules/quality.smk").read_text()


def rendered_study(tmp_path: Path) -> Path:
    """An unpacked archive's results/: the rows of a stand-in study with a load sweep, its quality table and its
    config as run."""
    from test_quality import ACCURACY, FILES, KLD, RUNS, quality_table

    results = tmp_path / "results"
    (results / "summary").mkdir(parents=True)
    (results / "config").mkdir()
    pl.concat([stand_in_runs(), stand_in_sweep()]).write_parquet(results / "summary/runs.parquet")
    quality_table(FILES, KLD, ACCURACY, RUNS, usd_per_kwh=0.14).write_parquet(results / "summary/quality.parquet")
    (results / "config/study.yaml").write_text((REPO / "config/config.yaml").read_text())
    return results


def test_rerender_makes_every_catalog_output_again_the_serving_table_included(tmp_path):
    results = rendered_study(tmp_path)
    config = yaml.safe_load((results / "config/study.yaml").read_text())
    written = set(rerender(results, config))
    kept = {entry.name for entry in catalog.OUTPUTS.values() if entry.kept}
    assert kept == {"decode_roofline"}  # it reads the model files, which an archive does not hold
    for entry in catalog.OUTPUTS.values():
        files = {results / path for path in [*entry.paths().values(), *entry.extra.values()]}
        if entry.name in kept:
            assert not files & written
        else:
            assert files <= written, entry.name
            assert all(path.stat().st_size > 0 for path in files), entry.name
    serving = (results / "tables/serving.md").read_text()
    assert "llama-server" in serving
    assert pl.read_csv(results / "tables/serving.csv").filter(pl.col("concurrency") == 4).height == 2  # Q4_0, Q8_0
    assert (results / "tables/quality_by_quant.md").read_text().startswith("Speed and energy: as archived.")


def test_rerender_leaves_what_the_study_did_not_measure(tmp_path):
    results = rendered_study(tmp_path)
    (results / "summary/quality.parquet").unlink()
    written = rerender(results, yaml.safe_load((results / "config/study.yaml").read_text()))
    assert not any("quality" in path.name or "pareto" in path.name for path in written)
    assert results / "tables/serving.md" in written


def test_an_output_registered_twice_or_drawn_from_two_files_is_refused():
    figure = catalog.output("ttft_ms")
    with pytest.raises(ValueError, match="'ttft_ms' is registered already"):
        catalog.register(figure)
    with pytest.raises(ValueError, match="rule 'plot_ttft' makes another output already"):
        catalog.register(Figure("ttft_again", "plot_ttft", figure.make, "Speed", "again"))
    with pytest.raises(ValueError, match="drawn from one summary file"):
        Figure("x", "plot_x", figure.make, "Speed", "x", inputs={**catalog.RUNS, **catalog.QUALITY})
    with pytest.raises(ValueError, match="unknown output 'mlx'; known outputs: stats"):
        catalog.output("mlx")
    assert isinstance(catalog.output("serving"), Table) and catalog.output("serving").script == "serving_table.py"


STANDIN_TABLE_MODULE = '''
"""A stand-in table, for a test only: the generations per tool."""

import polars as pl


def make(inputs: dict, params: dict, outputs: dict) -> str:
    counts = pl.read_parquet(inputs["runs"]).group_by("tool").len().sort("tool")
    counts.write_csv(outputs["csv"])
    with open(outputs["md"], "w") as fh:
        fh.write("| tool | generations |\\n| --- | ---: |\\n")
        fh.writelines(f"| {t} | {n} |\\n" for t, n in counts.iter_rows())
    return f"stand-in table: {counts.height} tools"
'''

STANDIN_TABLE_ENTRY = '''
register(Table("standin_table", "standin_table", "llmbench.outputs.standin_table:make", "Speed", "a stand-in table"))
'''


def test_a_table_added_in_one_place_is_planned_made_and_reported(tmp_path):
    """Its function in the package, one catalog entry and its caption: the rule runs make_table.py."""
    work = copy_workflow(tmp_path)
    (work / "workflow/scripts/llmbench/outputs/standin_table.py").write_text(textwrap.dedent(STANDIN_TABLE_MODULE))
    with open(work / "workflow/scripts/llmbench/outputs/catalog.py", "a") as fh:
        fh.write(STANDIN_TABLE_ENTRY)
    (work / "workflow/report/standin_table.rst").write_text("A stand-in table, for a test only.\n")
    plan = run_snakemake(work, "-n")
    assert "rule standin_table:" in plan and re.search(r"^standin_table\s+1$", plan, re.M)
    rule = workflow_rules(work)["standin_table"]
    assert rule["script"] == "../scripts/make_table.py"
    assert rule["outputs"]["results/tables/standin_table.md"] == {
        "caption": "workflow/report/standin_table.rst", "category": "Tables", "subcategory": "Speed",
        "labels": {"table": "a stand-in table", "format": "Markdown"}}
    (work / "results/summary").mkdir(parents=True)
    stand_in_runs().write_parquet(work / "results/summary/runs.parquet")
    run_snakemake(work, "results/tables/standin_table.md", "--allowed-rules", "standin_table")
    assert (work / "results/tables/standin_table.md").read_text().startswith("| tool | generations |")
    assert pl.read_csv(work / "results/tables/standin_table.csv").height == stand_in_runs()["tool"].n_unique()
