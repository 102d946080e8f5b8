"""Every figure and table the study makes, described once, as engines/registry.py describes every tool.

An entry says what the output is called (its files under ``results/<folder>/<name>.<format>`` and its caption,
``workflow/report/<name>.rst``), which rule makes it, which function makes it (named by string, imported only when
it runs: planning needs no plotting stack), which of the study's summary files it is made from, which config keys
it takes, and where the report shows it. The workflow reads the catalog for everything else: the rules
(rules/figures.smk and rules/tables.smk loop over it, as rules/bench.smk over the registry), the study's targets
and the report's results (rules/common.smk), the archive's members, and ``rerender`` (llmbench/outputs/render.py), which
makes every output again from an unpacked archive.

A new figure is its drawing function (in a module of llmbench/outputs/figures), one ``register(Figure(...))`` here and
its caption. A new table the same: its function ``make(inputs, params, outputs)`` in a module of the package (its rule
runs workflow/scripts/make_table.py), one ``register(Table(...))`` and its caption; the older tables keep theirs in
their own rule scripts.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # workflow/scripts/llmbench
SCRIPTS = PACKAGE.parent  # workflow/scripts: the rules' scripts

# The study's rows, one per generation: what most outputs are made from.
RUNS = {"runs": "summary/runs.parquet"}
# One row per model × quant: quality beside speed and cost (rule quality_table).
QUALITY = {"table": "summary/quality.parquet"}

# The report's name of each format (its "format" label).
FORMAT_LABELS = {"png": "PNG", "html": "interactive", "csv": "CSV", "md": "Markdown"}


def _load(ref: str):
    """What "module:name" names: a module of the package (llmbench.…), or a rule's script (workflow/scripts/<module>.py,
    which runs its rule's work only under Snakemake)."""
    module, name = ref.split(":")
    if module.startswith("llmbench."):
        return getattr(importlib.import_module(module), name)
    key = f"llmbench_script_{module}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, SCRIPTS / f"{module}.py")
        sys.modules[key] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[key])
    return getattr(sys.modules[key], name)


def _module_file(ref: str) -> Path:
    module = ref.split(":")[0]
    if module.startswith("llmbench."):
        return PACKAGE / (module.removeprefix("llmbench.").replace(".", "/") + ".py")
    return SCRIPTS / f"{module}.py"


@dataclass(frozen=True)
class Output:
    """One figure or table of the study.

    ``make``: "module:function", in a module of llmbench or in a rule's script. ``inputs``: the summary files it is
    made from, by name, under results/ (rerender reads them from an unpacked archive, which holds them).
    ``params``: the config keys it takes (dotted), by param name. ``needs``: rule inputs and params only the
    workflow knows (its bench files, model files, quality files), by their name in rules/tables.smk's ``NEEDS``.
    ``assembles``: its rule writes ``inputs`` itself, from ``needs`` (the aggregate rule writes the rows it makes
    the statistics from). ``extra``: further files its rule writes, not in the report. ``when``: made only in a
    study that measures it ("quality": KL divergence or answer accuracy). ``kept``: why ``rerender`` cannot make
    it again (it stays as archived). The report shows it under its category (Figures, Tables) and
    ``subcategory``, listed by ``label``, captioned by workflow/report/<name>.rst.
    """

    name: str
    rule: str
    make: str
    subcategory: str
    label: str
    inputs: Mapping[str, str] = field(default_factory=lambda: dict(RUNS))
    params: Mapping[str, str] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    assembles: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)
    when: str | None = None
    kept: str | None = None
    optional: Mapping[str, str] = field(default_factory=dict)
    report_section: str = ""
    caption: str = ""
    folder: str = ""
    formats: tuple[str, ...] = ()
    reported: tuple[str, ...] = ()

    category = ""  # the report's category: "Figures" or "Tables"

    @property
    def caption_file(self) -> str:
        """Its caption under workflow/report."""
        return self.caption or f"{self.name}.rst"

    @property
    def section(self) -> str:
        """The report's category it is listed under."""
        return self.report_section or self.category

    @property
    def labels_key(self) -> str:
        return self.category.lower()[:-1]  # "figure", "table"

    def paths(self) -> dict[str, str]:
        """Its files under results/, by format."""
        return {ext: f"{self.folder}/{self.name}.{ext}" for ext in self.formats}

    @property
    def target(self) -> str:
        """The file under results/ the study's targets ask for (the others come with it)."""
        return self.paths()["png" if "png" in self.formats else "md" if "md" in self.formats else self.formats[0]]

    def report_labels(self, ext: str) -> dict[str, str]:
        return {self.labels_key: self.label, "format": FORMAT_LABELS[ext]}

    def function(self):
        """What ``make`` names, imported now."""
        return _load(self.make)

    def module_files(self) -> list[Path]:
        """The file of its function (a change remakes it, and only the outputs that file makes)."""
        return [_module_file(self.make)]

    def config_params(self, config: Mapping) -> dict:
        """Its ``params`` read from ``config`` (a key the config lacks reads as None)."""
        found = {}
        for name, key in self.params.items():
            value = config
            for part in key.split("."):
                value = value.get(part) if isinstance(value, Mapping) else None
            found[name] = value
        return found


@dataclass(frozen=True)
class Figure(Output):
    """A figure: ``make`` draws it, ``make(frame, study) -> chart``, from its one input; written as PNG and SVG and
    an interactive HTML page (the PNG and HTML in the report)."""

    folder: str = "figures"
    formats: tuple[str, ...] = ("png", "svg", "html")
    reported: tuple[str, ...] = ("png", "html")

    category = "Figures"
    script = "plot_figure.py"  # its rule's script: every figure's

    def __post_init__(self):
        if len(self.inputs) != 1:
            raise ValueError(f"figure {self.name!r} is drawn from one summary file; it names {dict(self.inputs)}")

    def draw(self, frame, study: str, png: str | Path) -> list[Path]:
        """Draw it from ``frame`` (its input, read) and write it as PNG, SVG and HTML beside ``png``."""
        save_all = _load("llmbench.outputs.figures.common:save_all")
        return save_all(self.function()(frame, study), png)


@dataclass(frozen=True)
class Table(Output):
    """A table: ``make(inputs, params, outputs) -> str`` (paths and params by name; what it made, for the log)
    writes its files, as CSV and Markdown, both in the report. ``make`` is in its rule's script, which calls it
    (after writing its ``inputs`` where it ``assembles`` them)."""

    folder: str = "tables"
    formats: tuple[str, ...] = ("csv", "md")
    reported: tuple[str, ...] = ("csv", "md")

    category = "Tables"

    @property
    def script(self) -> str:
        """Its rule's script, under workflow/scripts: make_table.py where ``make`` is in the package (a new table
        is its function, its entry and its caption), else the script ``make`` is in."""
        return "make_table.py" if self.make.startswith("llmbench.") else _module_file(self.make).name

    def write(self, inputs: Mapping, params: Mapping, outputs: Mapping) -> str:
        return self.function()(dict(inputs), dict(params), dict(outputs))


OUTPUTS: dict[str, Output] = {}


def register(entry: Output) -> Output:
    """Add an output (a name or rule registered twice is refused: two entries would write the same files)."""
    if entry.name in OUTPUTS:
        raise ValueError(f"output {entry.name!r} is registered already")
    if entry.rule in {o.rule for o in OUTPUTS.values()}:
        raise ValueError(f"rule {entry.rule!r} makes another output already")
    OUTPUTS[entry.name] = entry
    return entry


def output(name: str) -> Output:
    try:
        return OUTPUTS[name]
    except KeyError:
        raise ValueError(f"unknown output {name!r}; known outputs: {', '.join(OUTPUTS)}") from None


def by_rule(rule: str) -> Output:
    for entry in OUTPUTS.values():
        if entry.rule == rule:
            return entry
    raise ValueError(f"no output of the catalog is made by rule {rule!r}")


def figures() -> list[Figure]:
    return [o for o in OUTPUTS.values() if isinstance(o, Figure)]


def tables() -> list[Table]:
    return [o for o in OUTPUTS.values() if isinstance(o, Table)]


# --- the tables -------------------------------------------------------------------------------------------------

register(Table(
    "stats", "aggregate", "aggregate:make", "Statistics", "statistics per group and metric",
    folder="summary", formats=("csv",), reported=("csv",), needs=("bench_files",), assembles=True,
    extra={"stats": "summary/stats.parquet"},
))
register(Table(
    "cost_per_1m_tokens", "cost_table", "cost_table:make", "Cost", "energy and $ per 1M tokens",
    params={"usd_per_kwh": "costs.electricity_usd_per_kwh", "electricity_note": "costs.electricity_note",
            "cloud": "costs.cloud", "hardware": "costs.hardware"},
))
register(Table(
    "serving", "serving_table", "serving_table:make", "Load", "the served model per load level",
    params={"usd_per_kwh": "costs.electricity_usd_per_kwh"},
))
register(Table(
    "frameworks", "framework_table", "framework_table:make", "Frameworks", "frameworks compared",
))
register(Table(
    "decode_roofline", "roofline_table", "roofline_table:make", "Speed", "decode against bandwidth bound",
    inputs={**RUNS, "bandwidth": "hardware/memory_bandwidth.json"}, needs=("roofline_files",),
    kept="it reads the bytes per token from each GGUF's tensor table, and an archive holds no model file",
))
register(Table(
    "quality_by_quant", "quality_table", "quality_table:make", "Quality", "quality per quant",
    inputs=QUALITY, params={"usd_per_kwh": "costs.electricity_usd_per_kwh"}, needs=("quality_files",),
    assembles=True, when="quality",
))

# The answer: every serving configuration judged against config ``decision`` and ranked by cost (made from the
# serving, cost and quality tables above; the quality table where the study measures quality). Its Parquet is the
# decision figure's input. "Decision" sorts first in the report's menu: the report opens with it.
DECISION = {"table": "summary/decision.parquet"}
register(Table(
    "decision", "decision_table", "llmbench.outputs.decision:make", "Which setup", "decision: service levels, "
    "quality floor, cost", inputs={**RUNS, "serving": "tables/serving.csv", "costs": "tables/cost_per_1m_tokens.csv",
                                    "quality": "tables/quality_by_quant.csv"},
    optional={"quality": "quality"}, params={"decision": "decision", "cloud": "costs.cloud"}, extra=DECISION,
    report_section="Decision",
))

# --- the figures ------------------------------------------------------------------------------------------------

register(Figure("decode_tokens_per_s", "plot_decode_speed", "llmbench.outputs.figures.boxes:decode_chart", "Speed",
                "decode tokens/s per quant"))
register(Figure("prefill_tokens_per_s", "plot_prefill_speed", "llmbench.outputs.figures.boxes:prefill_chart", "Speed",
                "prefill tokens/s per quant"))
register(Figure("ttft_ms", "plot_ttft", "llmbench.outputs.figures.boxes:ttft_chart", "Speed", "time to first token"))
register(Figure("energy_per_token", "plot_energy_per_token", "llmbench.outputs.figures.boxes:energy_chart", "Energy",
                "J per generated token"))
register(Figure("frameworks_decode_tokens_per_s", "plot_frameworks", "llmbench.outputs.figures.frameworks:framework_chart",
                "Frameworks", "decode tokens/s by framework"))
register(Figure("serving_throughput", "plot_serving_throughput", "llmbench.outputs.figures.levels:serving_chart", "Load",
                "server vs per-user tokens/s per load level"))
register(Figure("energy_per_token_by_load", "plot_energy_by_load", "llmbench.outputs.figures.levels:load_energy_chart",
                "Load", "J per output token against load"))
register(Figure("latency_by_load", "plot_latency_by_load", "llmbench.outputs.figures.levels:load_latency_chart", "Load",
                "TTFT and ITL against load"))
register(Figure("decode_by_depth", "plot_decode_by_depth", "llmbench.outputs.figures.levels:depth_chart", "Speed",
                "decode tokens/s against context depth"))
register(Figure("pareto_speed_vs_kld", "plot_pareto", "llmbench.outputs.figures.quality:pareto_figure", "Quality",
                "speed or cost vs KLD", inputs=QUALITY, when="quality"))
register(Figure("decision_cost_vs_kld", "plot_decision", "llmbench.outputs.figures.decision:decision_figure",
                "Which setup", "decision: cost vs KLD, service levels marked", inputs=DECISION,
                report_section="Decision"))
