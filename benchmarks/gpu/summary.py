"""The GPU check's summary, written on the GPU machine by check.sh from the study's rows (llmbench.outputs.gpu_check).

    python benchmarks/gpu/summary.py --results results --build resources/llama.cpp/0.3.36-cuda/build.json \
        --build-seconds 240 [--extra TITLE=FILE ...] > summary.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow/scripts"))

import polars as pl  # noqa: E402

from llmbench.outputs.gpu_check import summary_markdown  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--build", type=Path, required=True, help="the build's build.json")
    ap.add_argument("--build-seconds", type=float, default=None)
    ap.add_argument("--extra", action="append", default=[], help="TITLE=FILE: a Markdown file added as a section")
    a = ap.parse_args()
    rows = a.results / "summary/runs.parquet"
    runs = pl.read_parquet(rows) if rows.exists() else None
    if runs is None:
        raise SystemExit(f"{rows} was not made: the study did not get as far as aggregating (see check.log)")
    build = json.loads(a.build.read_text()) if a.build.exists() else {}
    extra = {}
    for item in a.extra:
        title, _, path = item.partition("=")
        extra[title] = Path(path).read_text() if Path(path).exists() else f"not made ({path} is missing)"
    sys.stdout.write(summary_markdown(runs, build, a.build_seconds, extra))


if __name__ == "__main__":
    main()
