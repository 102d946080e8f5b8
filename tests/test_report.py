"""The Snakemake report: every figure and table goes into it with a caption that says how it was measured, and
the report renders in a real headless Chromium (Debian's `chromium` package) with its figures there.

The browser helpers here are shared with tests/test_workflow.py, which checks the report of a real small study.
Run as a script to (re)make the README's screenshot from a finished study's report:

    PYTHONPATH=workflow/scripts .venv/bin/python tests/test_report.py results/report.html docs/report.png
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml
from docutils.core import publish_parts
from jinja2 import Environment, StrictUndefined

from conftest import REPO, load_config
from llmbench.study.configcheck import fill_defaults, load_schema

REPORT_DIR = REPO / "workflow/report"
CHECK_ID = "llmbench-report-check"
# Figures and tables are what a study's readers look at: each must be in the report with its caption.
REPORTED_FOLDERS = ("figures", "tables")
REPORTED_EXTS = (".png", ".html", ".csv", ".md")

# Appended to a copy of the report: it clicks through the app the way a reader would (each category, each
# subcategory's results list), decodes every embedded image, and leaves a figure open for the screenshot.
# What it saw goes into <pre id=CHECK_ID> as JSON, read back from Chromium's --dump-dom.
DRIVER_JS = r"""
<script>
(async function () {
  const tick = () => new Promise((done) => setTimeout(done, 50));
  const seen = { ready: typeof app !== "undefined", categories: {}, results: {}, errors: [] };
  window.addEventListener("error", (ev) => seen.errors.push(String(ev.message)));
  try {
    for (let i = 0; i < 100 && typeof app === "undefined"; i++) { await tick(); }
    seen.ready = typeof app !== "undefined";
    const nav = () => document.querySelector("nav").innerText;
    // A results list keeps the entries it was built with: leave it (back to the menu) before opening another.
    const open = async (view) => { app.setView({ navbarMode: "menu" }); await tick(); app.setView(view); await tick(); };
    for (const category of Object.keys(categories)) {
      seen.categories[category] = {};
      for (const subcategory of Object.keys(categories[category])) {
        await open({ navbarMode: "subcategory", category: category, subcategory: subcategory });
        seen.categories[category][subcategory] = nav();
      }
    }
    for (const [path, entry] of Object.entries(results)) {
      const out = { name: entry.name, mime: entry.mime_type, labels: entry.labels, caption: entry.caption };
      if (entry.mime_type.startsWith("image/")) {
        // Waiting on the load event, not img.decode(): a pending load holds Chromium's virtual time, a decode
        // promise does not (the page would be dumped before it settles).
        const img = new Image();
        const loaded = new Promise((done) => { img.onload = () => done(true); img.onerror = () => done(false); });
        img.src = entry.data_uri;
        if (await loaded) { out.width = img.naturalWidth; out.height = img.naturalHeight; }
        else { out.error = "the browser could not load the image"; }
      } else {
        const text = new TextDecoder().decode(Uint8Array.from(atob(entry.data_uri.split(",")[1]), (c) => c.charCodeAt(0)));
        out.chars = text.length;
        out.vega = entry.mime_type === "text/html" && text.includes("vegaEmbed");
      }
      seen.results[path] = out;
    }
    const show = __SHOW__;
    if (show && results[show]) {
      const category = Object.keys(categories).find((c) => Object.values(categories[c]).some((r) => r.includes(show)));
      const subcategory = Object.keys(categories[category]).find((s) => categories[category][s].includes(show));
      await open({ navbarMode: "subcategory", category: category, subcategory: subcategory,
                   content: "img", contentPath: results[show].data_uri, resultPath: show });
      const shown = Array.from(document.images).find((img) => img.src === results[show].data_uri);
      if (shown && !shown.complete) { await new Promise((done) => { shown.onload = shown.onerror = done; }); }
      seen.shown = shown ? { path: show, width: shown.naturalWidth } : null;
    }
  } catch (err) {
    seen.errors.push(String(err && err.stack || err));
  }
  const pre = document.createElement("pre");
  pre.id = "__CHECK_ID__";
  pre.style.display = "none";
  pre.textContent = JSON.stringify(seen);
  document.body.appendChild(pre);
})();
</script>
""".replace("__CHECK_ID__", CHECK_ID)


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


def require_chromium() -> str:
    """The browser, or a skip here and a failure in CI (CI=true), where the report must be checked."""
    found = chromium()
    if found:
        return found
    why = "no chromium on PATH: install Debian's package with `apt-get install -y chromium` to check the report"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(why)
    pytest.skip(why)


def _driven_copy(report: Path, show: str | None, folder: Path) -> Path:
    text = report.read_text(encoding="utf-8")
    if "</body>" not in text:
        raise ValueError(f"{report} is not a Snakemake HTML report (no </body>); make one with --report FILE.html")
    driver = DRIVER_JS.replace("__SHOW__", json.dumps(show))
    copy = folder / "driven-report.html"
    # The last </body>: the report's inlined libraries hold the string too (vega-embed's source view).
    head, _, tail = text.rpartition("</body>")
    copy.write_text(head + driver + "</body>" + tail, encoding="utf-8")
    return copy


def _run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    # Root in a container needs --no-sandbox; a fresh profile per run keeps runs independent. Virtual time lets the
    # page's scripts and image decoding finish before the DOM is dumped or the screenshot taken.
    cmd = [require_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={profile}", "--virtual-time-budget=30000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def render_report(report: Path, show: str | None = None, screenshot: Path | None = None,
                  window: tuple[int, int] = (1600, 1000)) -> dict:
    """Open ``report`` in headless Chromium, click through it, and return what the page showed (see DRIVER_JS).

    With ``screenshot``, also save a PNG of the page left showing the result ``show`` (a results path).
    """
    with tempfile.TemporaryDirectory(prefix="llmbench-report-") as tmp:
        tmp = Path(tmp)
        page = _driven_copy(Path(report), show, tmp).as_uri()
        proc = _run_chromium(["--dump-dom", page], tmp / "profile")
        found = re.search(rf'<pre id="{CHECK_ID}"[^>]*>(.*?)</pre>', proc.stdout, re.S)
        if not found:
            raise AssertionError(f"the report's page did not finish in Chromium (rc {proc.returncode}):\n"
                                 f"{proc.stderr[-3000:]}")
        seen = json.loads(html.unescape(found.group(1)))
        if screenshot is not None:
            shot = _run_chromium([f"--screenshot={Path(screenshot).resolve()}", f"--window-size={window[0]},{window[1]}",
                                  page], tmp / "profile-shot")
            if not Path(screenshot).exists():
                raise AssertionError(f"Chromium wrote no screenshot (rc {shot.returncode}):\n{shot.stderr[-3000:]}")
    return seen


def assert_report_shows(seen: dict, expected: dict[str, str]) -> None:
    """Every result the report holds is intact in the browser, with a caption saying how it was measured; and each
    of ``expected`` (results path → its label) is there and listed in its category's results."""
    assert seen["ready"] and not seen["errors"], seen["errors"]
    listed = "\n".join(text for subcats in seen["categories"].values() for text in subcats.values())
    for path, label in expected.items():
        assert path in seen["results"], f"{path} is not in the report"
        assert label in listed, f"{label!r} ({path}) is not listed in the report's menu"
    for path, result in seen["results"].items():
        assert "measured" in result["caption"], f"{path}'s caption does not say how it was measured"
        if result["mime"].startswith("image/"):
            assert result.get("width", 0) > 100 and result.get("height", 0) > 100, (path, result)
        elif result["mime"] == "text/html":
            assert result["vega"], f"{path} holds no Vega chart"
        else:
            assert result["chars"] > 0, f"{path} is empty in the report"


# --- what needs no study run ---------------------------------------------------------------------------------


def study_config(name: str) -> dict:
    cfg = load_config(name)
    schema = load_schema(REPO / "workflow/schemas/config.schema.yaml")
    fill_defaults(cfg, schema, schema)
    return cfg


def render_caption(path: Path, config: dict) -> str:
    """A caption as Snakemake renders it: Jinja with ``snakemake.config``, then reStructuredText to HTML."""

    class Snakemake:
        pass

    snakemake = Snakemake()
    snakemake.config = config
    # Snakemake appends link targets for its panels and the report's categories, which captions may refer to.
    links = "\n\n" + "".join(f".. _{name}: javascript:void(0)\n" for name in ("Workflow", "Statistics", "Decision", "Figures", "Tables"))
    text = Environment(trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined).from_string(
        path.read_text() + links).render(snakemake=snakemake)
    # Docutils reports a malformed caption as a system message inside the HTML; halt instead.
    return publish_parts(text, writer="html", settings_overrides={"halt_level": 2, "report_level": 2})["html_body"]


def reported_outputs(config_name: str) -> dict[str, dict]:
    """Every output path pattern of the workflow's rules with its report() settings (None where not reported)."""
    from snakemake.api import ConfigSettings, OutputSettings, ResourceSettings, SnakemakeApi, StorageSettings
    from snakemake.io import get_flag_value, is_flagged

    with tempfile.TemporaryDirectory() as work, SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=1), storage_settings=StorageSettings(),
            config_settings=ConfigSettings(configfiles=[REPO / "config" / config_name]),
            snakefile=REPO / "Snakefile", workdir=Path(work),
        )
        workflow = workflow_api._workflow  # parses the Snakefile and its rules; no DAG, no job
        outputs = {}
        for rule in workflow.rules:
            for f in rule.output:
                flagged = is_flagged(f, "report")
                outputs[str(f)] = {"rule": rule.name, "report": get_flag_value(f, "report") if flagged else None}
        return outputs


@pytest.mark.parametrize("config_name", ["config.yaml", "llama31-quantfactory.yaml"])
def test_every_figure_and_table_is_in_the_report_with_a_caption(config_name):
    outputs = reported_outputs(config_name)
    results = study_config(config_name)["results_dir"]
    shown = {p: o for p, o in outputs.items()
             if p.startswith(tuple(f"{results}/{d}/" for d in REPORTED_FOLDERS)) and p.endswith(REPORTED_EXTS)}
    assert any("figures/" in p for p in shown) and any("tables/" in p for p in shown)
    missing = sorted(f"{o['rule']}: {p}" for p, o in shown.items() if o["report"] is None)
    assert not missing, "wrap these outputs in report(..., caption=, category=): " + "; ".join(missing)
    for path, o in shown.items():
        caption = Path(str(o["report"].caption)).resolve()
        assert caption.parent == REPORT_DIR and caption.is_file(), f"{path}: caption {caption} is missing"
        assert o["report"].category in ("Decision", "Figures", "Tables") and o["report"].subcategory, path
        assert set(o["report"].labels) >= {"format"}, path
    assert outputs[f"{results}/summary/stats.csv"]["report"] is not None


@pytest.mark.parametrize("config_name", ["config.yaml", "llama31-quantfactory.yaml"])
@pytest.mark.parametrize("caption", sorted(p.name for p in REPORT_DIR.glob("*.rst")), ids=str)
def test_captions_render_with_the_study_config_and_say_what_was_not_measured(caption, config_name):
    body = render_caption(REPORT_DIR / caption, study_config(config_name))
    assert "measured" in body and "not measured" in body.lower()
    assert "{{" not in body and "{%" not in body


def test_landing_page_names_the_study_and_how_energy_was_measured():
    cfg = study_config("config.yaml")
    body = render_caption(REPORT_DIR / "workflow.rst", cfg)
    assert cfg["study"] in body and "NVML" in body and "RAPL" in body and "energy_null_reason" in body
    p = cfg["bench"]["precision"]
    assert re.search(rf"until the median of the rounds' decode rates was known to ±{p['target'] * 100:.1f} % at "
                     rf"95 % confidence,\s+{p['min_repetitions']} to {p['max_repetitions']} rounds", body)
    cfg["bench"]["precision"] = None
    assert re.search(rf"in {cfg['bench']['repetitions']}\s+rounds", render_caption(REPORT_DIR / "workflow.rst", cfg))
    # An energy estimate is labelled as one wherever the study configures it.
    cfg["bench"]["energy_estimate_w"] = 65
    assert "65 W" in render_caption(REPORT_DIR / "workflow.rst", cfg)


def test_cost_caption_labels_hardware_amortization_an_estimate_only_where_configured():
    cfg = study_config("config.yaml")
    assert cfg["costs"]["hardware"] is None
    assert "lower bound" in render_caption(REPORT_DIR / "cost_per_1m_tokens.rst", cfg)
    cfg["costs"]["hardware"] = {"purchase_usd": 15000, "lifetime_years": 3, "utilization": 0.5, "as_of": "2024-10",
                                "note": "a stand-in price"}
    body = render_caption(REPORT_DIR / "cost_per_1m_tokens.rst", cfg)
    assert "<strong>estimate</strong>" in body and "$15000" in body and "a stand-in price" in body


def test_report_is_global_and_the_profile_stays_runnable():
    assert 'report: "workflow/report/workflow.rst"' in (REPO / "Snakefile").read_text()
    profile = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    # --report-after-run in the profile would make every dry run build a report of outputs not made yet.
    assert "report-after-run" not in profile and "report" not in profile


TINY_WORKFLOW = textwrap.dedent('''
    report: "workflow.rst"

    rule all:
        input:
            "out/figure.png",
            "out/table.csv",

    rule figure:
        output:
            report("out/figure.png", caption="caption.rst", category="Figures", labels={"figure": "stand-in figure"}),
        run:
            import altair as alt, polars as pl, vl_convert as vlc
            chart = alt.Chart(pl.DataFrame({"x": [1, 2, 3], "y": [3, 1, 2]})).mark_bar().encode(x="x:O", y="y:Q")
            open(output[0], "wb").write(vlc.vegalite_to_png(chart.to_json()))

    rule table:
        output:
            report("out/table.csv", caption="caption.rst", category="Tables", labels={"table": "stand-in table"}),
        shell:
            "printf 'a,b\\\\n1,2\\\\n' > {output}"
''')


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory) -> Path:
    """A stand-in study: a two-rule workflow with one figure and one table, and its real Snakemake report."""
    work = tmp_path_factory.mktemp("tiny")
    (work / "Snakefile").write_text(TINY_WORKFLOW)
    (work / "workflow.rst").write_text("Stand-in workflow\n=================\n\nA stand-in, not a study.\n")
    (work / "caption.rst").write_text("A stand-in result; nothing was measured.\n")
    for args in ([], ["--report", "report.html"]):
        subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *args], cwd=work, check=True,
                       capture_output=True)
    return work / "report.html"


def test_browser_sees_each_figure_and_table_of_a_report(tiny_report, tmp_path):
    shot = tmp_path / "shot.png"
    seen = render_report(tiny_report, show="out/figure.png", screenshot=shot)
    assert_report_shows(seen, {"out/figure.png": "stand-in figure", "out/table.csv": "stand-in table"})
    assert seen["shown"] == {"path": "out/figure.png", "width": seen["results"]["out/figure.png"]["width"]}
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_browser_check_fails_on_a_broken_figure(tiny_report, tmp_path):
    text = tiny_report.read_text()
    broken = tmp_path / "broken.html"
    # The embedded PNG's bytes replaced by garbage: the page still loads, the image cannot be decoded.
    broken.write_text(re.sub(r'"data:image/png;[^"]*"', '"data:image/png;base64,AAAA"', text, count=1))
    seen = render_report(broken)
    with pytest.raises(AssertionError, match="out/figure.png"):
        assert_report_shows(seen, {"out/figure.png": "stand-in figure"})



@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_chromium_fails_in_ci_and_skips_elsewhere(monkeypatch, ci, outcome):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="apt-get install -y chromium"):
        require_chromium()


if __name__ == "__main__":
    report, png = Path(sys.argv[1]), Path(sys.argv[2])
    seen = render_report(report, show=sys.argv[3] if len(sys.argv) > 3 else "results/figures/decision_cost_vs_kld.png",
                         screenshot=png, window=(1960, 1400))
    print(json.dumps({p: {k: v for k, v in r.items() if k != "caption"} for p, r in seen["results"].items()}, indent=1))
