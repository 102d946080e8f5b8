"""Re-render an archived study's statistics, tables and figures from its measured rows, without benchmarking.

    python workflow/scripts/rerender.py UNPACKED/<study>-<date>

where UNPACKED is where `tar -xzf results/archive/<study>-<date>.tar.gz` was run. Every output of the catalog
(llmbench/outputs/catalog.py) is made again, but the decode roofline, which needs the model files (kept as archived).
"""

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llmbench.outputs.catalog import OUTPUTS  # noqa: E402
from llmbench.outputs.render import rerender  # noqa: E402


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit(__doc__)
    results = Path(argv[0]) / "results"
    config = results / "config/study.yaml"
    if not config.exists():
        raise SystemExit(f"{config} does not exist: pass the folder the archive unpacked into (it holds results/)")
    for path in rerender(results, yaml.safe_load(config.read_text())):
        print(path)
    for entry in OUTPUTS.values():
        if entry.kept:
            files = ", ".join(str(results / path) for path in entry.paths().values())
            print(f"kept as archived: {files} ({entry.kept})", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
