"""A checkout moved with its .snakemake/ reruns nothing: every input of the workflow's own (code, corpus,
questions) is named relative to the working directory, so the recorded inputs are the same after the move. A real
job (the memory-bandwidth measurement, seconds) through real Snakemake runs."""

import shutil

from test_unlock import TARGET, copy_workflow, snakemake


def test_a_moved_checkout_has_nothing_to_do(tmp_path):
    before, after = tmp_path / "before", tmp_path / "elsewhere" / "after"
    before.mkdir()
    copy_workflow(before)
    done = snakemake(before, "--cores", "2", TARGET)
    assert done.returncode == 0, done.stderr[-3000:]
    after.parent.mkdir()
    shutil.move(before, after)
    dry = snakemake(after, "-n", "--cores", "2", TARGET)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout, dry.stdout[-3000:]
