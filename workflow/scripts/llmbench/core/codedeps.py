"""The package files a script runs, read from its imports: each rule's code inputs, so they cannot fall behind.

A rule lists the package modules its script imports (directly or through other modules, also imports inside
functions) as inputs: editing one reruns the jobs whose results it can change, and no other. The imports are read
from the source (ast), nothing is imported.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "llmbench"


def code_files(package_dir: str | Path, *entries: str | Path) -> list[str]:
    """Every file of the package ``package_dir`` (the folder named llmbench) that ``entries`` import, transitively,
    sorted; an entry is a script's path or a package file's path. The package's ``__init__.py`` files on each
    module's path are included."""
    root = Path(package_dir).resolve()
    seen: set[Path] = set()
    todo = [Path(e).resolve() for e in entries]
    for entry in todo:
        if entry.is_relative_to(root):
            seen.add(entry)
    while todo:
        for module in _imports(todo.pop(), root):
            if module not in seen:
                seen.add(module)
                todo.append(module)
    for path in list(seen):
        for parent in path.parents:
            if not parent.is_relative_to(root):
                break
            seen.add(parent / "__init__.py")
    return sorted(str(p) for p in seen if p.exists())


@cache
def _imports(path: Path, root: Path) -> tuple[Path, ...]:
    """The package files one file imports (``import llmbench.x``, ``from llmbench.x import y``, ``from llmbench
    import x``), each resolved to ``x.py`` or ``x/__init__.py``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == PACKAGE and (file := _module_file(root, parts[1:])) is not None:
                found.append(file)
    return tuple(found)


def _module_file(root: Path, parts: list[str]) -> Path | None:
    if not parts:
        return root / "__init__.py"
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None
