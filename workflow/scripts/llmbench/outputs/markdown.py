"""Markdown for the tables people read: a pipe table, numbers to four significant digits, numbered footnotes.

Every table module writes its Markdown through these, so that the tables look alike and a reason repeated in many
cells is written once, under the table.
"""

from __future__ import annotations

from typing import Any


def fmt(value: Any, digits: int = 4) -> str:
    """A cell's text: floats to ``digits`` significant digits, None as an empty cell, anything else as str()."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def pipe_table(header: list[str], rows: list[list[str]]) -> str:
    """A pipe table ending in a newline; a '|' inside a cell is escaped so that it cannot split the cell."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class Footnotes:
    """Numbered notes under a table: each distinct text gets one number, in the order the cells first cite it.

    ``notes(text)`` gives the marker "[n]" to put in a cell; ``notes.render()`` the notes themselves, one paragraph
    each ("\\n[n] text\\n"), or "" where no cell cited any.
    """

    def __init__(self) -> None:
        self._numbers: dict[str, int] = {}

    def __call__(self, text: str) -> str:
        return f"[{self._numbers.setdefault(text, len(self._numbers) + 1)}]"

    def __len__(self) -> int:
        return len(self._numbers)

    def render(self) -> str:
        return "".join(f"\n[{n}] {text}\n" for text, n in self._numbers.items())


# The mark on a quant label whose file is not what the label says (llmbench.modelfiles.tensor_mix), in tables and figures.
LABEL_MARK = "≠"


def marked_quant(quant: str, label_note: str | None, note: Footnotes) -> str:
    """A quant cell: the label, and where its file holds other types than the label says, the mark and the
    footnote naming the real mix."""
    return f"{quant} {LABEL_MARK} {note(label_note)}" if label_note else quant


# Under a table with a "precision" column (llmbench.core.precision, stats.precision_text), what its cells mean.
PRECISION_NOTE = ("Precision: how far the confidence interval of the job's median round decode rate (the median of "
                  "its per-round rates, every prompt once per round) reaches from that median, its larger side as a "
                  "share of it; the interval is distribution-free, between two order statistics of the rounds, and "
                  "where bench.precision set a target the job measured rounds until its interval was within it or "
                  "its last round. Not recorded: rows measured before the workflow recorded a job's precision (an "
                  "older study).")


def precision_cell(r: dict, note: Footnotes) -> str:
    """A "precision" cell from a table row's TABLE_PRECISION values (stats.with_job_precision): the short text,
    and the job's own words as a footnote where it has no interval ("not recorded" is said under the table)."""
    from llmbench.outputs.stats import precision_text

    text = precision_text(r)
    if r.get("precision_rounds") is not None and r.get("precision_low") is None and r.get("precision"):
        return f"{text} {note(r['precision'])}"
    return text
