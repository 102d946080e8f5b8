"""llama-bench backend: its real -o jsonl output (recorded from this project's build) parsed by field name."""

import pytest

from conftest import REPO
from llmbench.backend import BackendError
from llmbench.llama_bench import LlamaBenchSettings, bench_command, parse_jsonl, samples_to_rows
from llmbench.runs import RUN_SCHEMA, RunPlan

PLAN = RunPlan("llama-bench", "smollm2-135m", "Q4_0", "none", (), 3, 0, 0.0, 0.7, 1, 0, 0, 2)


def recorded():
    return parse_jsonl((REPO / "tests/data/llama_bench.jsonl").read_text())


def test_every_repetition_sample_is_a_row():
    tests = recorded()
    rows = samples_to_rows(tests, PLAN)
    assert list(rows.columns) == list(RUN_SCHEMA)
    assert rows.height == sum(len(t["samples_ns"]) for t in tests)
    pp = rows.filter(rows["prompt_id"].str.starts_with("pp"))
    tg = rows.filter(rows["prompt_id"].str.starts_with("tg"))
    assert pp["prefill_tokens_per_s"].is_not_null().all() and pp["decode_tokens_per_s"].is_null().all()
    assert tg["decode_tokens_per_s"].is_not_null().all() and tg["prefill_ms"].is_null().all()
    t = next(t for t in tests if t["n_gen"] > 0)
    assert tg["decode_tokens_per_s"].to_list() == t["samples_ts"]
    assert tg["decode_ms"].to_list() == [ns / 1e6 for ns in t["samples_ns"]]
    assert set(rows["engine_build"]) == {t["build_commit"]}
    assert rows["energy_j"].is_null().all() and rows["energy_null_reason"].is_not_null().all()


def test_unknown_fields_of_another_build_are_ignored():
    t = recorded()[0] | {"some_future_field": 1}
    assert samples_to_rows([t], PLAN).height == len(t["samples_ns"])


def test_no_results_is_an_error():
    with pytest.raises(BackendError, match="printed no results"):
        parse_jsonl("main: error: failed to load model\n")


def test_command_asks_for_jsonl_and_the_settings(tmp_path):
    cmd = bench_command(LlamaBenchSettings(binary=tmp_path / "llama-bench", model=tmp_path / "m.gguf", n_prompt=64,
                                           n_gen=16, repetitions=3, threads=2, n_gpu_layers=33, split_mode="row"))
    assert cmd[cmd.index("-o") + 1] == "jsonl" and cmd[cmd.index("-sm") + 1] == "row"
    assert cmd[cmd.index("-p") + 1] == "64" and cmd[cmd.index("-ngl") + 1] == "33"
