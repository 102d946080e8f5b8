"""llama-perplexity's KL-divergence summary, parsed from its real output (tests/data: SmolLM2-135M Q4_0 against
its F16 over workflow/data/quality-corpus.txt, ctx 256, printed by the llama.cpp build of this workflow)."""

import math
from pathlib import Path

import pytest

from conftest import REPO
from llmbench.perplexity import PerplexityError, kld_command, parse_kld_summary, run_logged

REAL = (REPO / "tests/data/llama_perplexity_kld_q4_0.txt").read_text()


def test_real_summary_gives_kld_with_uncertainty_percentiles_ppl_and_top_token():
    s = parse_kld_summary(REAL)
    assert (s["kld_mean"], s["kld_mean_unc"]) == (0.251615, 0.004440)
    assert (s["ppl"], s["ppl_base"], s["ppl_ratio"]) == (27.057065, 22.753378, 1.189145)
    assert s["ppl_ratio_unc"] == 0.019985 and s["ln_ppl_ratio"] == 0.173235
    assert s["kld_median"] == 0.203781 and s["kld_min"] <= s["kld_p1"] <= s["kld_median"] <= s["kld_p99"] <= s["kld_max"]
    assert (s["same_top_p_pct"], s["same_top_p_unc_pct"]) == (69.921, 1.051)
    assert (s["delta_p_mean_pct"], s["delta_p_rms_pct"]) == (-3.879, 12.116)


def test_reference_against_itself_parses_with_its_nan_uncertainties():
    """Real output of the F16 scored on its own base file (the default ladder lists the reference too)."""
    s = parse_kld_summary((REPO / "tests/data/llama_perplexity_kld_f16_self.txt").read_text())
    assert s["ppl_ratio"] == 0.999996 and math.isnan(s["ppl_ratio_unc"])
    assert abs(s["kld_mean"]) < 1e-5 and s["same_top_p_pct"] == 100.0


def test_per_chunk_lines_are_not_taken_for_the_summary():
    chunks_only = REAL.split("====== Perplexity statistics ======")[0]
    with pytest.raises(PerplexityError, match="has no ppl, ppl_base, ppl_ratio, kld_mean"):
        parse_kld_summary(chunks_only)


def test_base_run_output_has_no_kld_summary():
    with pytest.raises(PerplexityError, match="kld_mean"):
        parse_kld_summary((REPO / "tests/data/llama_perplexity_kld_base_f16.txt").read_text())


def test_every_quant_is_scored_on_the_reference_tokens():
    cmd = kld_command(Path("llama-perplexity"), Path("Q2_K.gguf"), Path("base.kld"), 256, 2, None)
    assert "-f" not in cmd and cmd[cmd.index("--kl-divergence-base") + 1] == "base.kld" and "--kl-divergence" in cmd


def test_failed_run_names_its_log(tmp_path):
    log = tmp_path / "kld.log"
    with pytest.raises(PerplexityError, match=f"llama-perplexity exited with code 1; see the engine log \\(log {log}\\)"):
        run_logged(["false"], log)


def test_a_perplexity_run_ended_by_a_signal_is_named_for_it(tmp_path):
    standin = tmp_path / "standin-llama-perplexity"  # a stand-in that dies as the AMX build did
    standin.write_text("#!/bin/sh\nkill -ILL $$\n")
    standin.chmod(0o755)
    with pytest.raises(PerplexityError, match=r"died by SIGILL \(illegal instruction\): this llama.cpp build uses"):
        run_logged([str(standin)], tmp_path / "kld.log")
