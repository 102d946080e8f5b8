"""Two studies side by side (like llama.cpp's compare-llama-bench, across frameworks and energy): B over A per group.

Decode speed and J/token get percentile-bootstrap intervals; KLD is one number per side, so its ratio has none.
A group present on one side only, or skipped, keeps its row with the reason, so nothing disappears from the view.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from llmbench.devices.meters import joules_per_token
from llmbench.engines.runs import with_all_columns
from llmbench.outputs.markdown import Footnotes, fmt, pipe_table
from llmbench.outputs.stats import GROUP, with_levels

SUMMARY = ("summary", "results/summary")  # a results folder, or a study folder holding one
BOOTSTRAP_NOTE = ("B/A: {b}'s value over {a}'s (above 1: {b} higher). In brackets: the 95 % "
                  "percentile-bootstrap interval of the ratio ({n} resamples of each side's generations, drawn "
                  "independently; J/token resamples (energy, tokens) pairs). Mean KLD is one number per study, "
                  "so its ratio has no interval.")
KLD_ONE_VALUE = "one KLD value per side: no interval"


def _read_tar(path: Path) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    # Members are read into memory: nothing from the archive is ever written to disk, so no path can escape.
    with tarfile.open(path, "r:gz") as tar:
        files = {m.name.strip("/"): m for m in tar.getmembers() if m.isfile()}
        # "<name>/results/summary/…" as the archive writes it, or the folder layouts without the top folder.
        bases = [b for top in ("", *sorted({n.split("/")[0] + "/" for n in files})) for b in (top + s for s in SUMMARY)]
        base = next((b for b in bases if f"{b}/runs.parquet" in files), None)
        if base is None:
            raise FileNotFoundError(f"{path}: no runs.parquet under {', '.join(bases)}")

        def read(name: str) -> pl.DataFrame | None:
            member = files.get(f"{base}/{name}")
            return None if member is None else pl.read_parquet(io.BytesIO(tar.extractfile(member).read()))

        return read("runs.parquet"), read("quality.parquet")


def load_study(path: Path) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Runs and (where quality ran) the quality table of a results folder, a study folder or a .tar.gz archive."""
    path = Path(path)
    if path.is_file():
        return _read_tar(path)
    looked = [path / s / "runs.parquet" for s in SUMMARY]
    runs = next((p for p in looked if p.is_file()), None)
    if runs is None:
        raise FileNotFoundError(f"no runs.parquet: looked for {', '.join(map(str, looked))}")
    quality = runs.with_name("quality.parquet")
    return pl.read_parquet(runs), pl.read_parquet(quality) if quality.is_file() else None


def study_label(path: Path) -> str:
    """A study's name from its path: the archive without .tar.gz, or the folder above a results folder."""
    path = Path(path).resolve()
    name = path.parent.name if path.name == "results" else path.name
    return name.removesuffix(".tar.gz").removesuffix(".tgz")


def median_stat(x: np.ndarray) -> np.ndarray:
    return np.median(x, axis=-1)


def j_per_token_stat(x: np.ndarray) -> np.ndarray:
    """x: rows of (energy J, tokens); summed before dividing, as in the cost table."""
    return joules_per_token(x[..., 0].sum(axis=-1), x[..., 1].sum(axis=-1))


def bootstrap_ratio(a: np.ndarray, b: np.ndarray, stat: Callable[[np.ndarray], np.ndarray], n: int = 2000,
                    seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """stat(b) / stat(a) and its percentile-bootstrap interval; stat reduces the sample axis (0) of a side.

    Each side is resampled on its own (the studies are independent); rows are resampled whole, so a 2-D side
    keeps its pairs. stat sees a batch of shape (n, len, ...) and must reduce axis 1, written as axis -1 / [..., k].
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("bootstrap_ratio needs at least one value on each side")
    rng = np.random.default_rng(seed)
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero statistic gives inf/NaN, not a warning
        ratio = float(stat(b) / stat(a))
        boot = stat(b[rng.integers(0, len(b), (n, len(b)))]) / stat(a[rng.integers(0, len(a), (n, len(a)))])
    tail = (1 - level) / 2
    # Plain percentiles, not widened: for identical sides B*/A* is a ratio of i.i.d. draws, as likely below 1 as
    # above, so the interval holds 1 without help.
    low, high = np.quantile(boot, [tail, 1 - tail])
    return ratio, float(low), float(high)


def _side(runs: pl.DataFrame) -> pl.DataFrame:
    # Studies from before a column existed lack it: it reads as all null rather than failing the comparison.
    runs = with_all_columns(runs)
    runs = with_levels(runs)
    ok = pl.col("status") == "ok"
    return runs.group_by(GROUP).agg(
        pl.col("energy_is_estimate").filter(ok).fill_null(False).any().alias("estimate"),
        ok.sum().cast(pl.Int64).alias("n"),
        pl.col("decode_tokens_per_s").filter(ok).drop_nulls().alias("decode"),
        pl.col("energy_j").filter(ok).alias("energy"),
        pl.col("generated_tokens").filter(ok).fill_null(0).alias("tokens"),
        pl.col("status_reason").filter(~ok).drop_nulls().unique().sort().str.join("; ").replace("", None)
        .alias("status_reason"),
        pl.col("energy_null_reason").filter(ok).drop_nulls().unique().sort().str.join("; ").replace("", None)
        .alias("energy_reason"),
    )


def _kld(quality: pl.DataFrame | None, suffix: str) -> pl.DataFrame:
    if quality is None or "kld_mean" not in quality.columns:
        return pl.DataFrame(schema={"model": pl.String, "quant": pl.String, f"kld_{suffix}": pl.Float64})
    return quality.select("model", "quant", pl.col("kld_mean").cast(pl.Float64).alias(f"kld_{suffix}"))


def compare(runs_a: pl.DataFrame, runs_b: pl.DataFrame, quality_a: pl.DataFrame | None = None,
            quality_b: pl.DataFrame | None = None, labels: Sequence[str] = ("A", "B"), n: int = 2000,
            seed: int = 0) -> pl.DataFrame:
    """One row per group (tool, model, quant, split, load level, depth) of either study, B over A; see
    BOOTSTRAP_NOTE."""
    la, lb = labels
    sides = _side(runs_a).join(_side(runs_b), on=GROUP, how="full", coalesce=True, suffix="_b")
    rows = []
    for r in sides.sort(GROUP).iter_rows(named=True):
        in_a, in_b = r["n"] is not None, r["n_b"] is not None
        out = {k: r[k] for k in GROUP} | {
            "present": "both" if in_a and in_b else f"{la} only" if in_a else f"{lb} only",
            "n_a": r["n"] or 0, "n_b": r["n_b"] or 0,
            "status_reason_a": r["status_reason"], "status_reason_b": r["status_reason_b"]}
        da, db = np.array(r["decode"] or [], float), np.array(r["decode_b"] or [], float)
        out["median_decode_tokens_per_s_a"] = float(np.median(da)) if len(da) else None
        out["median_decode_tokens_per_s_b"] = float(np.median(db)) if len(db) else None
        dec = bootstrap_ratio(da, db, median_stat, n, seed) if len(da) and len(db) else (None,) * 3
        out |= dict(zip(("decode_ratio", "decode_low", "decode_high"), dec, strict=True))
        # J/token of a side: null when any of its windows went unmeasured, as in the cost table.
        ea, eb = r["energy"] or [], r["energy_b"] or []
        pa = np.array([ea, r["tokens"]], float).T if ea and None not in ea and sum(r["tokens"]) else None
        pb = np.array([eb, r["tokens_b"]], float).T if eb and None not in eb and sum(r["tokens_b"]) else None
        out["j_per_token_a"] = None if pa is None else float(j_per_token_stat(pa))
        out["j_per_token_b"] = None if pb is None else float(j_per_token_stat(pb))
        jpt = bootstrap_ratio(pa, pb, j_per_token_stat, n, seed) if pa is not None and pb is not None else (None,) * 3
        out |= dict(zip(("j_per_token_ratio", "j_per_token_low", "j_per_token_high"), jpt, strict=True))
        missing = [f"not measured on {lab}" + (f" ({why})" if why else "") if ran else
                   f"not run on {lab}" if present else f"absent from {lab}"
                   for lab, p, present, ran, why in ((la, pa, in_a, r["n"], r["energy_reason"]),
                                                     (lb, pb, in_b, r["n_b"], r["energy_reason_b"])) if p is None]
        estimates = [lab for lab, est in ((la, r["estimate"]), (lb, r["estimate_b"])) if est]
        missing += [f"energy on {' and '.join(estimates)} is an estimate, not a measurement"] if estimates else []
        out["j_per_token_note"] = "; ".join(missing) or None
        rows.append(out)
    table = pl.DataFrame(rows, infer_schema_length=None)
    table = table.join(_kld(quality_a, "a"), on=["model", "quant"], how="left")
    table = table.join(_kld(quality_b, "b"), on=["model", "quant"], how="left")
    kld_ok = pl.col("kld_a").is_not_null() & pl.col("kld_b").is_not_null() & (pl.col("kld_a") > 0)
    return table.with_columns(
        pl.when(kld_ok).then(pl.col("kld_b") / pl.col("kld_a")).alias("kld_ratio"),
        pl.when(kld_ok).then(pl.lit(KLD_ONE_VALUE))
        .when(pl.col("kld_a") == 0).then(pl.lit(f"KLD on {la} is 0 (the reference quant): no ratio"))
        .otherwise(pl.concat_str(pl.lit("KLD not measured on "), pl.concat_list(
            pl.when(pl.col("kld_a").is_null()).then(pl.lit(la)), pl.when(pl.col("kld_b").is_null()).then(pl.lit(lb))
        ).list.drop_nulls().list.join(" and "))).alias("kld_note"),
    )


def ratio_cell(ratio: float | None, low: float | None = None, high: float | None = None) -> str:
    if ratio is None:
        return ""
    return f"{ratio:.3f}" + ("" if low is None else f" [{low:.3f}, {high:.3f}]")


def render_markdown(table: pl.DataFrame, labels: Sequence[str], n: int = 2000) -> str:
    """The comparison for people: one footnote per reason instead of repeated cells."""
    la, lb = labels
    notes = Footnotes()

    def note(reason: str | None) -> str:
        return f" {notes(reason)}" if reason else ""

    header = [*GROUP, "present", f"n {la}", f"n {lb}", f"decode tok/s {la}", f"decode tok/s {lb}", "decode B/A",
              f"J/token {la}", f"J/token {lb}", "J/token B/A", f"KLD {la}", f"KLD {lb}", "KLD B/A"]
    rows = []
    for r in table.iter_rows(named=True):
        skipped = "; ".join(f"{lab}: {r[k]}" for lab, k in ((la, "status_reason_a"), (lb, "status_reason_b")) if r[k])
        kld_note = None if r["kld_note"] == KLD_ONE_VALUE else r["kld_note"]
        rows.append([
            *(str(r[k]) for k in GROUP), r["present"] + note(skipped), str(r["n_a"]), str(r["n_b"]),
            fmt(r["median_decode_tokens_per_s_a"]), fmt(r["median_decode_tokens_per_s_b"]),
            ratio_cell(r["decode_ratio"], r["decode_low"], r["decode_high"]),
            fmt(r["j_per_token_a"]), fmt(r["j_per_token_b"]),
            ratio_cell(r["j_per_token_ratio"], r["j_per_token_low"], r["j_per_token_high"]) + note(r["j_per_token_note"]),
            fmt(r["kld_a"]), fmt(r["kld_b"]), ratio_cell(r["kld_ratio"]) + note(kld_note),
        ])
    out = [f"## {lb} over {la}\n\n", pipe_table(header, rows), "\n", BOOTSTRAP_NOTE.format(a=la, b=lb, n=n), "\n"]
    return "".join([*out, notes.render()])

