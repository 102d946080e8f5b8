import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from llmbench.engines.runs import RUN_SCHEMA
from llmbench.outputs.compare import (
    bootstrap_ratio,
    compare,
    j_per_token_stat,
    load_study,
    median_stat,
    ratio_cell,
    render_markdown,
)

REPO = Path(__file__).resolve().parents[1]
NO_RAPL = "not measured: CPU energy: no RAPL zones under /sys/class/powercap"
SPEEDS = [41.0, 43.5, 40.2, 44.8, 42.1]
TOKENS = [120, 128, 96, 128, 110]


def group_rows(tool, quant, speed_scale=1.0, energy_scale=1.0, measured=True, n=5):
    """n generations of one group; energy roughly proportional to tokens, so J/token is about 0.3 × scale."""
    return [{
        "tool": tool, "model": "m", "quant": quant, "split": "none", "status": "ok", "repetition": i,
        "decode_tokens_per_s": SPEEDS[i] * speed_scale, "generated_tokens": TOKENS[i],
        "energy_j": (0.3 + 0.01 * i) * TOKENS[i] * energy_scale if measured else None,
        "energy_null_reason": None if measured else NO_RAPL,
    } for i in range(n)]


def skipped(tool, quant, reason="vllm needs a GPU"):
    return [{"tool": tool, "model": "m", "quant": quant, "split": "none", "status": "skipped", "status_reason": reason,
             "energy_null_reason": "not measured: the job was skipped"}]


def runs(*groups):
    return pl.DataFrame([r for g in groups for r in g], schema=RUN_SCHEMA)


def study(speed_scale=1.0, energy_scale=1.0, measured=True):
    return runs(group_rows("llama-server", "Q4_0", speed_scale, energy_scale, measured),
                group_rows("llama-server", "Q8_0", speed_scale, energy_scale, measured),
                group_rows("ollama", "Q4_0", speed_scale, energy_scale, measured), skipped("vllm", "Q4_0"))


QUALITY = pl.DataFrame({"model": ["m", "m"], "quant": ["Q4_0", "Q8_0"], "kld_mean": [0.031, 0.002]})


def by_group(table, tool, quant):
    return table.filter((pl.col("tool") == tool) & (pl.col("quant") == quant)).row(0, named=True)


def test_a_study_compared_with_itself_gives_ratios_of_exactly_one():
    table = compare(study(), study(), QUALITY, QUALITY)
    assert table.height == 4 and set(table["present"]) == {"both"}
    ran = table.filter(pl.col("n_a") > 0)
    assert ran.height == 3
    for r in ran.iter_rows(named=True):
        assert r["decode_ratio"] == 1.0 and r["decode_low"] <= 1.0 <= r["decode_high"]
        assert r["j_per_token_ratio"] == 1.0 and r["j_per_token_low"] <= 1.0 <= r["j_per_token_high"]
        assert r["kld_ratio"] == 1.0 and "no interval" in r["kld_note"]
        assert r["n_a"] == r["n_b"] == 5 and r["j_per_token_note"] is None
    vllm = by_group(table, "vllm", "Q4_0")
    assert vllm["n_a"] == vllm["n_b"] == 0 and vllm["decode_ratio"] is None
    assert vllm["status_reason_a"] == vllm["status_reason_b"] == "vllm needs a GPU"


def test_twice_the_decode_speed_gives_a_ratio_of_two():
    table = compare(study(), study(speed_scale=2.0, energy_scale=0.5))
    for r in table.filter(pl.col("n_a") > 0).iter_rows(named=True):
        assert r["decode_ratio"] == 2.0 and r["decode_low"] <= 2.0 <= r["decode_high"]
        assert r["median_decode_tokens_per_s_b"] == 2 * r["median_decode_tokens_per_s_a"] == 2 * np.median(SPEEDS)
        assert r["j_per_token_ratio"] == pytest.approx(0.5)
        assert r["j_per_token_a"] == pytest.approx(sum((0.3 + 0.01 * i) * t for i, t in enumerate(TOKENS)) / sum(TOKENS))


def test_a_group_on_one_side_only_is_listed_not_dropped():
    a = study()
    b = a.filter(pl.col("tool") != "ollama")
    r = by_group(compare(a, b, labels=("old", "new")), "ollama", "Q4_0")
    assert r["present"] == "old only" and r["n_a"] == 5 and r["n_b"] == 0
    assert r["decode_ratio"] is None and r["median_decode_tokens_per_s_a"] == np.median(SPEEDS)
    assert r["j_per_token_note"] == "absent from new"
    r = by_group(compare(b, a), "ollama", "Q4_0")
    assert r["present"] == "B only"


def test_energy_measured_on_one_side_only_gives_no_ratio_and_says_which():
    table = compare(study(), study(measured=False), labels=("gpu box", "laptop"))
    r = by_group(table, "llama-server", "Q4_0")
    assert r["j_per_token_a"] is not None and r["j_per_token_b"] is None and r["j_per_token_ratio"] is None
    assert r["j_per_token_note"] == f"not measured on laptop ({NO_RAPL})"
    assert r["decode_ratio"] == 1.0
    md = render_markdown(table, ("gpu box", "laptop"))
    assert f"not measured on laptop ({NO_RAPL})" in md


def test_one_unmeasured_window_makes_a_side_unmeasured():
    b = study().with_columns(pl.when(pl.col("repetition") == 0).then(None).otherwise(pl.col("energy_j"))
                             .alias("energy_j"))
    r = by_group(compare(study(), b), "ollama", "Q4_0")
    assert r["j_per_token_b"] is None and r["j_per_token_note"].startswith("not measured on B")


def test_kld_missing_on_one_side_is_noted():
    r = by_group(compare(study(), study(), QUALITY, None), "llama-server", "Q8_0")
    assert r["kld_a"] == 0.002 and r["kld_b"] is None and r["kld_ratio"] is None
    assert r["kld_note"] == "KLD not measured on B"


def test_bootstrap_is_seeded_and_resamples_energy_with_its_tokens():
    rng = np.random.default_rng(1)
    a, b = rng.normal(40, 2, 30), rng.normal(44, 2, 30)
    assert bootstrap_ratio(a, b, median_stat) == bootstrap_ratio(a, b, median_stat)
    ratio, low, high = bootstrap_ratio(a, b, median_stat)
    assert ratio == np.median(b) / np.median(a) and low < ratio < high
    # Every row at exactly 0.3 J/token (A) and 0.6 (B): pairs kept together give the same J/token in every resample.
    tokens = rng.integers(50, 200, 20).astype(float)
    ratio, low, high = bootstrap_ratio(np.c_[0.3 * tokens, tokens], np.c_[0.6 * tokens, tokens], j_per_token_stat)
    assert ratio == pytest.approx(2.0) and low == pytest.approx(2.0) and high == pytest.approx(2.0)


def test_markdown_formats_ratios_with_their_interval():
    assert ratio_cell(1.0, 0.98512, 1.0161) == "1.000 [0.985, 1.016]"
    md = render_markdown(compare(study(), study()), ("A", "B"))
    assert "| llama-server | m | Q4_0 | none | 1 | 0 | both | 5 | 5 | 42.1 | 42.1 | 1.000 [" in md
    assert "B/A: B's value over A's (above 1: B higher)" in md and "percentile-bootstrap" in md
    assert re.search(r"\| vllm \| m \| Q4_0 \| none \| 1 \| 0 \| both \[(\d)\] \|.*\n\[\1\] A: vllm needs a GPU; B: vllm needs a GPU\n", md, re.S)


def write_study(root: Path, quality: bool = True) -> Path:
    summary = root / "results" / "summary"
    summary.mkdir(parents=True)
    study().write_parquet(summary / "runs.parquet")
    if quality:
        QUALITY.write_parquet(summary / "quality.parquet")
    return root


def test_a_folder_and_its_archive_load_the_same_frames(tmp_path):
    folder = write_study(tmp_path / "s1")
    archive = tmp_path / "s1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "results", arcname="s1/results")
    runs_f, quality_f = load_study(folder)
    for runs_x, quality_x in (load_study(archive), load_study(folder / "results")):
        assert_frame_equal(runs_x, runs_f)
        assert_frame_equal(quality_x, quality_f)
    assert_frame_equal(runs_f, study())


def test_a_study_without_runs_names_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="summary/runs.parquet"):
        load_study(tmp_path)
    archive = tmp_path / "empty.tar.gz"
    with tarfile.open(archive, "w:gz"):
        pass
    with pytest.raises(FileNotFoundError, match="runs.parquet"):
        load_study(archive)


def test_the_command_line_writes_the_table_and_the_chart(tmp_path):
    a, b = write_study(tmp_path / "a"), write_study(tmp_path / "b", quality=False)
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(REPO / "workflow/scripts/compare.py"), str(a), str(b), "-o", str(out),
                    "--labels", "before", "after"], check=True, cwd=tmp_path, capture_output=True)
    names = {"compare.csv", "compare.md", *(f"compare_decode_ratio.{e}" for e in ("png", "svg", "html"))}
    assert names <= {p.name for p in out.iterdir()}
    assert all((out / n).stat().st_size > 0 for n in names)
    assert pl.read_csv(out / "compare.csv")["decode_ratio"].drop_nulls().to_list() == [1.0, 1.0, 1.0]
    assert "## after over before" in (out / "compare.md").read_text()
