"""Compare two studies, B over A: python workflow/scripts/compare.py A B -o OUTDIR [--labels a b].

A and B: a results folder, a study folder, or a study's .tar.gz archive. Writes OUTDIR/compare.{csv,md} and
OUTDIR/compare_decode_ratio.{png,svg,html}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run by hand, not by Snakemake: the llmbench package beside this file must be importable from any directory.
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> None:
    from llmbench.outputs.compare import compare, load_study, render_markdown, study_label
    from llmbench.outputs.plots import ratio_chart, save_all

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="study A (the baseline)")
    parser.add_argument("b", type=Path, help="study B (the ratios are B over A)")
    parser.add_argument("-o", "--outdir", type=Path, required=True)
    parser.add_argument("--labels", nargs=2, metavar=("A", "B"), help="names for the two studies in the tables")
    args = parser.parse_args(argv)
    labels = args.labels or [study_label(args.a), study_label(args.b)]
    if labels[0] == labels[1]:
        labels = ["A", "B"]  # two archives of the same name: the labels must still tell the sides apart
    (runs_a, quality_a), (runs_b, quality_b) = load_study(args.a), load_study(args.b)
    table = compare(runs_a, runs_b, quality_a, quality_b, labels=labels)
    args.outdir.mkdir(parents=True, exist_ok=True)
    table.write_csv(args.outdir / "compare.csv")
    (args.outdir / "compare.md").write_text(render_markdown(table, labels))
    for path in save_all(ratio_chart(table), args.outdir / "compare_decode_ratio"):
        print(path)
    print(args.outdir / "compare.csv", args.outdir / "compare.md", sep="\n")


if __name__ == "__main__":
    main()
