import polars as pl
import pytest

from llmbench.costs import cost_table, render_markdown, usd_per_1m_tokens

ENERGY_NOT_MEASURED = "not measured: CPU energy: no RAPL zones under /sys/class/powercap (absent in many VMs)"
CLOUD = [{"name": "GPT-4o", "input_usd_per_1m": 2.5, "output_usd_per_1m": 10.0, "as_of": "2024-10", "source": "s"}]


def runs(energy, tokens=(100, 300), estimate=False):
    n = len(tokens)
    return pl.DataFrame(
        {
            "tool": ["llama-server"] * n, "model": ["m"] * n, "quant": ["Q4_0"] * n, "split": ["none"] * n,
            "generated_tokens": list(tokens), "decode_tokens_per_s": [50.0, 70.0][:n],
            "energy_j": energy, "energy_window_s": [2.5] * n, "energy_source": [None if e is None else "nvml" for e in energy],
            "energy_null_reason": [ENERGY_NOT_MEASURED if e is None else None for e in energy],
            "energy_is_estimate": [estimate] * n,
            "status_reason": [None] * n,
        },
        schema_overrides={"energy_j": pl.Float64, "status_reason": pl.String},
    )


def test_usd_per_million_tokens_matches_the_field_formula():
    # $0.14/kWh: 0.0389 $ per 1M tokens per J/token.
    assert usd_per_1m_tokens(1.0, 0.14) == pytest.approx(0.0388889, rel=1e-5)


def test_energy_is_summed_over_generations_before_dividing():
    t = cost_table(runs([40.0, 80.0]), 0.14, CLOUD).row(0, named=True)
    assert t["j_per_token"] == pytest.approx(120 / 400)
    assert t["kwh_per_1m_tokens"] == pytest.approx(0.3 * 1e6 / 3.6e6)
    assert t["usd_per_1m_tokens"] == pytest.approx(usd_per_1m_tokens(0.3, 0.14))
    assert t["local / GPT-4o output"] == pytest.approx(usd_per_1m_tokens(0.3, 0.14) / 10.0)
    assert t["energy_status"] == "measured"
    assert t["energy_basis"] == "energy summed over 2 windows (5.0 s in all), over the tokens they generated"


def test_unmeasured_energy_stays_null_with_its_reason():
    t = cost_table(runs([None, None]), 0.14, CLOUD)
    row = t.row(0, named=True)
    assert row["j_per_token"] is None and row["usd_per_1m_tokens"] is None
    assert row["energy_status"].startswith("not measured: ")
    assert "GPT-4o output usd_per_1m (2024-10)" in t.columns
    md = render_markdown(t, 0.14, "test price", CLOUD)
    assert "| llama-server | m | Q4_0 | none | 2 | 60 | not measured [1] | not measured [1] | not measured [1] |" in md
    assert f"[1] {ENERGY_NOT_MEASURED}" in md
    assert "| GPT-4o | 2.5 | 10 | 2024-10 | s |" in md


def test_one_unmeasured_generation_makes_the_group_unmeasured():
    assert cost_table(runs([40.0, None]), 0.14, []).row(0, named=True)["j_per_token"] is None


def test_an_estimate_is_labelled_as_one_in_the_table():
    r = runs([40.0, 80.0], estimate=True).with_columns(energy_source=pl.lit("estimate: 65 W assumed × window"))
    t = cost_table(r, 0.14, CLOUD)
    assert t.row(0, named=True)["energy_status"] == "estimate, not measured: estimate: 65 W assumed × window"
    md = render_markdown(t, 0.14, "test price", CLOUD)
    assert "| 0.3 estimate [1] |" in md and "[1] estimate, not measured: estimate: 65 W assumed × window" in md
