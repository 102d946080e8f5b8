"""llama-perplexity's KL-divergence summary, parsed from its real output (tests/data: SmolLM2-135M Q4_0 against
its F16 over workflow/data/quality-corpus.txt, ctx 256, printed by the llama.cpp build of this workflow)."""

import math
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO
from llmbench.engines.perplexity import (
    IncompleteOutput,
    PerplexityError,
    kld_command,
    parse_base_run,
    parse_kld_summary,
    run_and_parse,
    run_perplexity,
)

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
        run_perplexity(["false"], log)


def test_a_perplexity_run_ended_by_a_signal_is_named_for_it(tmp_path):
    standin = tmp_path / "standin-llama-perplexity"  # a stand-in that dies as the AMX build did
    standin.write_text("#!/bin/sh\nkill -ILL $$\n")
    standin.chmod(0o755)
    with pytest.raises(PerplexityError, match=r"died by SIGILL \(illegal instruction\): this llama.cpp build uses"):
        run_perplexity([str(standin)], tmp_path / "kld.log")


# The real summary cut short inside its KLD percentiles (after "95.0%   KLD"), as an interrupted run leaves it.
CUT = REAL[: REAL.index("90.0%   KLD")]


def test_a_summary_without_its_percentiles_is_incomplete():
    with pytest.raises(IncompleteOutput, match="kld_p90"):
        parse_kld_summary(CUT)
    # Every percentile is needed, not only the required values: a missing one would be half a row.
    without_p1 = "\n".join(line for line in REAL.splitlines() if not line.strip().startswith("1.0%   KLD"))
    with pytest.raises(IncompleteOutput, match="has no kld_p1$"):
        parse_kld_summary(without_p1)


def replaying(tmp_path: Path, outputs: list[str]) -> Path:
    """A stand-in llama-perplexity that prints ``outputs[i]`` on its i-th run and exits 0."""
    exe, count = tmp_path / "standin-llama-perplexity", tmp_path / "runs"
    exe.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""
        import pathlib, sys
        count = pathlib.Path({str(count)!r})
        i = int(count.read_text()) if count.exists() else 0
        count.write_text(str(i + 1))
        sys.stdout.write({outputs!r}[i])
    """))
    exe.chmod(0o755)
    return exe


def test_a_summary_cut_short_is_run_once_more(tmp_path):
    log = tmp_path / "kld.perplexity.log"
    summary = run_and_parse([str(replaying(tmp_path, [CUT, REAL]))], log, parse_kld_summary)
    assert summary["kld_mean"] == 0.251615 and summary["kld_p0_1"] == 0.000658
    assert (tmp_path / "runs").read_text() == "2"
    assert log.read_text().count("$ ") == 2 and "stopped short" in log.read_text()  # both runs kept, with why


def test_a_summary_cut_short_twice_fails_naming_the_log(tmp_path):
    log = tmp_path / "kld.perplexity.log"
    with pytest.raises(PerplexityError, match=f"stopped short twice .*kld_p90.*log {log}$") as e:
        run_and_parse([str(replaying(tmp_path, [CUT, CUT]))], log, parse_kld_summary)
    assert not isinstance(e.value, IncompleteOutput) and (tmp_path / "runs").read_text() == "2"


def test_a_failed_run_is_not_run_again(tmp_path):
    with pytest.raises(PerplexityError, match="exited with code 1"):
        run_and_parse(["false"], tmp_path / "kld.log", parse_kld_summary)
    assert (tmp_path / "kld.log").read_text().count("$ ") == 1


def test_a_reference_run_cut_short_is_run_once_more_but_its_logged_errors_are_failures(tmp_path):
    base_text = (REPO / "tests/data/llama_perplexity_kld_base_f16.txt").read_text()
    base, model = tmp_path / "base.kld", Path("F16.gguf")
    base.write_bytes(b"logits")
    cut = base_text[: base_text.index("Final estimate")]
    exe = replaying(tmp_path, [cut, base_text])
    ppl, unc = run_and_parse([str(exe)], tmp_path / "base.log", lambda text: parse_base_run(text, base, model))
    assert ppl > 1 and unc > 0 and (tmp_path / "runs").read_text() == "2"
    with pytest.raises(PerplexityError, match="produced no base file: .*error: you need at least") as e:
        parse_base_run("perplexity: error: you need at least 512 tokens to evaluate\n", base, model)
    assert not isinstance(e.value, IncompleteOutput)
