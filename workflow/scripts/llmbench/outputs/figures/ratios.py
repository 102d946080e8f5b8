"""Two studies compared (llmbench.outputs.compare, workflow/scripts/compare.py): the decode-speed ratio B over A per group."""

from __future__ import annotations

import altair as alt
import polars as pl

from llmbench.outputs.figures.common import OKABE_ITO
from llmbench.outputs.stats import GROUP


def ratio_chart(table: pl.DataFrame) -> alt.Chart:
    """Decode-speed ratio B/A per group with its bootstrap interval; the dashed rule at 1 is "no change"."""
    data = table.filter(pl.col("decode_ratio").is_not_null()).select(
        pl.concat_str([pl.col(c).cast(pl.String) for c in GROUP], separator=" · ").alias("group"), "tool", "decode_ratio", "decode_low", "decode_high")
    base = alt.Chart(data).encode(y=alt.Y("group:N", title=None, sort=None),
                                  color=alt.Color("tool:N", scale=alt.Scale(range=OKABE_ITO)))
    bars = base.mark_rule(strokeWidth=2).encode(x=alt.X("decode_low:Q", title="decode tok/s ratio B/A (95 % CI)",
                                                        scale=alt.Scale(zero=False)), x2="decode_high:Q")
    points = base.mark_point(filled=True, size=60).encode(
        x="decode_ratio:Q", tooltip=["group:N", "decode_ratio:Q", "decode_low:Q", "decode_high:Q"])
    one = alt.Chart(pl.DataFrame({"x": [1.0]})).mark_rule(strokeDash=[4, 4], color="#333").encode(x="x:Q")
    return alt.layer(bars, points, one).properties(width=420, title="decode speed, B over A")
