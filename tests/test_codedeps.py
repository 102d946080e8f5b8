"""Each rule's code inputs are the package files its script imports, read from the source (llmbench.core.codedeps)."""

from __future__ import annotations

from pathlib import Path

from conftest import REPO
from llmbench.core.codedeps import code_files
from llmbench.engines.registry import TOOLS

PKG = REPO / "workflow/scripts/llmbench"
SCRIPTS = REPO / "workflow/scripts"


def names(files: list[str]) -> set[str]:
    return {str(Path(f).relative_to(PKG)) for f in files}


def test_the_lists_that_had_fallen_behind_are_complete():
    # A hand-kept list once missed these: quality_table without quants.py and synthetic.py, the
    # llama-cpp-python bench without llama_server.py (whose fitting it calls, inside a function).
    assert {"core/quants.py", "modelfiles/synthetic.py", "outputs/quality.py", "__init__.py"} <= names(code_files(PKG, SCRIPTS / "quality_table.py"))
    bench = names(code_files(PKG, SCRIPTS / "bench.py", *TOOLS["llama-cpp-python"].module_files()))
    assert {"engines/llama_cpp_python.py", "engines/llama_server.py", "engines/__init__.py", "devices/meters.py"} <= bench


def test_only_what_is_imported_and_nothing_twice(tmp_path):
    pkg = tmp_path / "llmbench"
    (pkg / "sub").mkdir(parents=True)
    for name, text in {"__init__.py": "", "a.py": "from llmbench import b\n", "b.py": "import os\n",
                       "c.py": "def f():\n    from llmbench.sub.d import x\n", "unused.py": "",
                       "sub/__init__.py": "", "sub/d.py": "from llmbench.a import y\nx = 1\n"}.items():
        (pkg / name).write_text(text)
    script = tmp_path / "script.py"
    script.write_text("import llmbench.c\nimport polars\n")
    found = code_files(pkg, script)
    assert names_in(found, pkg) == ["__init__.py", "a.py", "b.py", "c.py", "sub/__init__.py", "sub/d.py"]
    assert len(found) == len(set(found))


def names_in(files: list[str], pkg: Path) -> list[str]:
    return sorted(str(Path(f).relative_to(pkg.resolve())) for f in files)
