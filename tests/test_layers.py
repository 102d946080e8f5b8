"""The package's layers (pyproject.toml [tool.importlinter]) as a tested contract: the real package keeps them, and
a lower layer importing a higher one breaks them (checked by import-linter itself on a copy with one bad import)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

LINT = Path(sys.executable).with_name("lint-imports")


def lint(scripts: Path, config: Path = REPO / "pyproject.toml") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(scripts)}
    return subprocess.run([str(LINT), "--config", str(config), "--no-cache"], capture_output=True, text=True,
                          env=env, cwd=REPO)


def test_the_package_keeps_its_layers():
    run = lint(REPO / "workflow/scripts")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Contracts: 2 kept, 0 broken." in run.stdout


def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path):
    scripts = tmp_path / "scripts"
    shutil.copytree(REPO / "workflow/scripts/llmbench", scripts / "llmbench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    files = scripts / "llmbench/core/files.py"
    files.write_text(files.read_text() + "\n\ndef _upward():\n    from llmbench.outputs import stats  # noqa: F401\n")
    run = lint(scripts)
    assert run.returncode != 0
    assert "llmbench.core.files -> llmbench.outputs.stats" in run.stdout, run.stdout


def test_an_import_circle_inside_a_package_breaks_the_contract(tmp_path):
    scripts = tmp_path / "scripts"
    shutil.copytree(REPO / "workflow/scripts/llmbench", scripts / "llmbench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    models = scripts / "llmbench/modelfiles/models.py"  # tensor_mix reads models: models reading it closes a circle
    models.write_text(models.read_text() + "\n\ndef _circle():\n    from llmbench.modelfiles import tensor_mix  # noqa: F401\n")
    run = lint(scripts)
    assert run.returncode != 0 and "No cycles are allowed in llmbench.modelfiles" in run.stdout, run.stdout
