"""The answer to the study's question: which measured configuration meets the team's service levels and quality
floor (config ``decision``) at the lowest cost per output token, how many machines its workload needs, and what
that costs per day beside each configured cloud price.

Every number is read from the study's own tables, not measured again: the latency and speed of a load level from
the serving table (``tables/serving.csv``), mean KLD and answer accuracy from the quality table
(``tables/quality_by_quant.csv``), $ per 1M output tokens from the cost table (``tables/cost_per_1m_tokens.csv``).
Goodput, the one new figure, counts the level's own requests (``summary/runs.parquet``, the rows the serving table
is made from) over the serving table's window: the completed requests per second that met every per-request
service level (AIPerf's goodput; DistServe's SLO attainment per request). A constraint that cannot be judged (the
metric was not measured, the tool did not run) is "not judged" with the reason, never met.

Only the tools that serve a user's requests are candidates (llmbench.engines.registry.generating_tools, less the
in-process batch reference llama-batched-bench); llama-bench and llama-batched-bench measure the engine, nothing
one deploys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from llmbench.engines.registry import batching_tools, generating_tools
from llmbench.engines.runs import with_all_columns
from llmbench.outputs.stats import GROUP, with_levels

SECONDS_PER_DAY = 86_400

MET, MISSED, NOT_JUDGED, NO_LIMIT = "met", "not met", "not judged", "no limit"


@dataclass(frozen=True)
class Constraint:
    """One limit of config ``decision``: ``section.key`` its config key, ``column`` the decision table's column of
    the measured value (read from the table named in ``source``), ``upper``: the value must be at most the limit
    (latency, KLD), else at least (speed, accuracy)."""

    name: str
    section: str
    key: str
    column: str
    label: str
    unit: str
    upper: bool
    source: str

    @property
    def config_key(self) -> str:
        return f"decision.{self.section}.{self.key}"


SERVICE_LEVELS = (
    Constraint("ttft", "service_levels", "ttft_ms_p99", "ttft_ms_p99", "TTFT p99", "ms", True,
               "serving.csv ttft_ms_p99"),
    Constraint("itl", "service_levels", "itl_ms_p99", "itl_ms_p99", "ITL p99", "ms", True,
               "serving.csv itl_ms_p99"),
    Constraint("decode", "service_levels", "per_user_decode_tokens_per_s", "per_user_decode_tokens_per_s",
               "per-user decode", "tok/s", False, "serving.csv per_user_decode_tokens_per_s"),
)
QUALITY_FLOOR = (
    Constraint("kld", "quality", "max_kld", "kld_mean", "mean KLD", "", True, "quality_by_quant.csv kld_mean"),
    Constraint("accuracy", "quality", "min_accuracy", "accuracy", "accuracy", "", False,
               "quality_by_quant.csv accuracy <tool>"),
)
CONSTRAINTS = SERVICE_LEVELS + QUALITY_FLOOR

CLOUD_PRICE = "{name} output usd_per_1m ({as_of})"  # as the cost table names its cloud columns
CLOUD_DAY = "{name} usd_per_day ({as_of})"

SCHEMA = {
    **{c: pl.String for c in ("tool", "model", "quant", "split")}, "concurrency": pl.Int64, "depth": pl.Int64,
    "not_run_reason": pl.String,
    "ttft_ms_p99": pl.Float64, "itl_ms_p99": pl.Float64, "per_user_decode_tokens_per_s": pl.Float64,
    "kld_mean": pl.Float64, "kld_mean_unc": pl.Float64, "reference_quant": pl.String,
    "accuracy": pl.Float64, "accuracy_low": pl.Float64, "accuracy_high": pl.Float64, "accuracy_n": pl.Int64,
    **{f"{c.name}_{part}": d for c in CONSTRAINTS
       for part, d in (("limit", pl.Float64), ("verdict", pl.String), ("note", pl.String))},
    "requests": pl.Int64, "window_s": pl.Float64, "requests_per_s": pl.Float64,
    "prompt_tokens_per_request": pl.Float64, "output_tokens_per_request": pl.Float64,
    "server_output_tokens_per_s": pl.Float64,
    "goodput_requests": pl.Int64, "goodput_requests_per_s": pl.Float64, "goodput_output_tokens_per_s": pl.Float64,
    "goodput_share": pl.Float64, "goodput_null_reason": pl.String,
    "meets_service_levels": pl.Boolean, "meets_quality_floor": pl.Boolean, "passes": pl.Boolean,
    "verdict": pl.String, "missed": pl.String, "shortfall": pl.Float64,
    "energy_usd_per_1m_output_tokens": pl.Float64, "hardware_usd_per_1m_output_tokens": pl.Float64,
    "usd_per_1m_output_tokens": pl.Float64, "cost_basis": pl.String, "energy_status": pl.String,
    "rank": pl.Int64, "rank_basis": pl.String,
    "workload_requests_per_day": pl.Float64, "workload_output_tokens_per_day": pl.Float64,
    "capacity_requests_per_day": pl.Float64, "machines_needed": pl.Int64, "machines_null_reason": pl.String,
    "local_usd_per_day": pl.Float64, "local_usd_per_day_null_reason": pl.String,
    "precision": pl.String, "precision_relative": pl.Float64, "tied_with_rank_1": pl.Boolean,
}


def candidate_tools() -> tuple[str, ...]:
    """The tools a team could deploy: those that generate for a user's request (not the batch reference)."""
    return tuple(t for t in generating_tools() if t not in batching_tools())


def limits(decision: Mapping | None) -> dict[str, float]:
    """The configured limit of each constraint, by name (a constraint not configured is left out)."""
    decision = decision or {}
    return {c.name: float(v) for c in CONSTRAINTS
            if (v := (decision.get(c.section) or {}).get(c.key)) is not None}


def workload_of(decision: Mapping | None) -> dict:
    """``decision.workload`` where it gives a volume (requests or output tokens per day), else {} (the schema's
    defaults fill ``peak_to_average`` into an empty one)."""
    workload = dict((decision or {}).get("workload") or {})
    return workload if {"requests_per_day", "output_tokens_per_day"} & workload.keys() else {}


def judge(value: float | None, limit: float | None, upper: bool, why_missing: str | None) -> tuple[str, str]:
    """(verdict, note): "met"/"not met" with the measured value beside the limit ("279 > 250"), "not judged" with
    ``why_missing`` (the value is None), or "no limit" where none is configured."""
    if limit is None:
        return NO_LIMIT, ""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_JUDGED, why_missing or "not measured"
    ok = value <= limit if upper else value >= limit
    op = ("≤" if ok else ">") if upper else ("≥" if ok else "<")
    return (MET if ok else MISSED), f"{value:.4g} {op} {limit:g}"


def shortfall(value: float, limit: float, upper: bool) -> float:
    """How far a missed limit is missed, as a share of the limit (latency 300 against 250: 0.2; decode 20 against
    25: 0.25); infinite where a lower limit meets 0."""
    if upper:
        return value / limit - 1
    return limit / value - 1 if value > 0 else math.inf


def _read_csv(path: str | Path | None) -> pl.DataFrame | None:
    if path is None or not Path(path).exists():
        return None
    return pl.read_csv(path, infer_schema_length=None)


def _cast(df: pl.DataFrame, columns: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """``df`` with ``columns`` cast (an empty CSV reads every column as text) and the absent ones null."""
    return df.with_columns(
        pl.col(c).cast(d, strict=False) if c in df.columns else pl.lit(None, d).alias(c) for c, d in columns.items())


def accuracy_long(quality: pl.DataFrame | None) -> pl.DataFrame:
    """The quality table's accuracy per tool ("accuracy <tool>", "... low", "... high", "... n" columns) as rows
    (model, quant, tool, accuracy, accuracy_low, accuracy_high, accuracy_n)."""
    schema = {"model": pl.String, "quant": pl.String, "tool": pl.String, "accuracy": pl.Float64,
              "accuracy_low": pl.Float64, "accuracy_high": pl.Float64, "accuracy_n": pl.Int64}
    if quality is None:
        return pl.DataFrame(schema=schema)
    tools = [c.removeprefix("accuracy ") for c in quality.columns
             if c.startswith("accuracy ") and f"{c} n" in quality.columns]
    parts = [quality.select(
        "model", "quant", pl.lit(t).alias("tool"), pl.col(f"accuracy {t}").alias("accuracy"),
        pl.col(f"accuracy {t} low").alias("accuracy_low"), pl.col(f"accuracy {t} high").alias("accuracy_high"),
        pl.col(f"accuracy {t} n").alias("accuracy_n")) for t in tools]
    if not parts:
        return pl.DataFrame(schema=schema)
    return _cast(pl.concat(parts, how="vertical_relaxed"), schema).select(list(schema))


def request_rows(runs: pl.DataFrame) -> pl.DataFrame:
    """The requests the serving table's levels are made of (llmbench.outputs.serving.level_table): rows that ran
    and carry a request start, of the candidate tools."""
    runs = with_levels(with_all_columns(runs))
    return runs.filter((pl.col("status") == "ok") & pl.col("request_start_s").is_not_null()
                       & pl.col("tool").is_in(candidate_tools()))


# Per request, as AIPerf's goodput judges it: its own TTFT, its own inter-token latency (the mean gap, (end-to-end −
# TTFT) / (output tokens − 1): the runs' tpot_ms) and its own decode speed.
REQUEST_METRICS = {"ttft": ("ttft_ms", True), "itl": ("tpot_ms", True), "decode": ("decode_tokens_per_s", False)}


def goodput(runs: pl.DataFrame, limit: Mapping[str, float]) -> pl.DataFrame:
    """Per group (GROUP): ``goodput_requests``, the requests that met every configured service level on their own
    metrics (REQUEST_METRICS; a request missing a metric a limit needs is not counted), ``goodput_output_tokens``
    their output tokens, and ``goodput_null_reason`` where no request of the group carries a needed metric."""
    rows = request_rows(runs)
    good = pl.col("request_start_s").is_not_null()  # every request, where no limit is set
    judged = []
    for name, (column, upper) in REQUEST_METRICS.items():
        if name in limit:
            value = pl.col(column)
            good = good & value.is_not_null() & (value <= limit[name] if upper else value >= limit[name])
            judged.append((name, column))
    missing = [pl.when(pl.col(column).is_null().all()).then(pl.lit(f"no request recorded {column}"))
               for _, column in judged]
    return rows.group_by(GROUP).agg(
        good.sum().cast(pl.Int64).alias("goodput_requests"),
        pl.col("generated_tokens").filter(good).sum().cast(pl.Int64).alias("goodput_output_tokens"),
        pl.concat_str(missing, separator="; ", ignore_nulls=True).alias("goodput_null_reason") if missing
        else pl.lit(None, pl.String).alias("goodput_null_reason"),
    ).with_columns(pl.when(pl.col("goodput_null_reason") != "").then(pl.col("goodput_null_reason"))
                   .alias("goodput_null_reason"))


def _why_missing(c: Constraint, r: dict, quality_measured: bool) -> str:
    """Why constraint ``c`` has no value for row ``r``."""
    if r["not_run_reason"]:
        return f"not run: {r['not_run_reason']}"
    if c.name == "itl":
        return (f"not measured: {r['tool']}'s rows hold no inter-token gaps (its engine here records no time per "
                "streamed token)")
    if c.name in ("ttft", "decode"):
        return f"not measured: the serving table has no {c.column} for this level"
    if not quality_measured:
        return "not measured: the study measured no quality (no quality table: set quality.corpus or quality.questions)"
    if c.name == "kld":
        return r.get("kld_null_reason") or f"not measured: no KLD of {r['model']} {r['quant']} in the quality table"
    return (f"not measured: no accuracy of {r['tool']} on {r['model']} {r['quant']} in the quality table "
            "(quality.accuracy_tools and the tool's quants choose where it runs)")


def _interval_note(r: dict, floor: float) -> str:
    """Where the accuracy's Wilson 95 % interval reaches both sides of the floor, that the question set cannot
    tell: the verdict stands on the measured share, the note says how sure it is."""
    low, high, n = r.get("accuracy_low"), r.get("accuracy_high"), r.get("accuracy_n")
    if low is None or high is None or not low < floor < high:
        return ""
    return f" (uncertain: its Wilson 95 % interval {low:.2f}–{high:.2f} over {n} answers spans the floor)"


def _cost(energy: float | None, hardware: float | None, energy_status: str | None) -> tuple[float | None, str]:
    """The cost a configuration is ranked by ($ per 1M output tokens: energy, plus hardware where the cost table has
    its amortization) and what it is, or None and why it is ranked by throughput instead."""
    if energy is None:
        return None, f"throughput: energy {_not_measured(energy_status)}"
    if hardware is not None:
        return energy + hardware, "$ per 1M output tokens: energy + hardware amortization (estimate)"
    return energy, "$ per 1M output tokens: energy only" + (" (an estimate)" if "estimate" in (energy_status or "")
                                                           else "")


def _not_measured(status: str | None) -> str:
    """ "not measured (why)" from the cost table's energy_status ("not measured: why")."""
    why = (status or "no cost table row").removeprefix("not measured: ")
    return f"not measured ({why})"


def decision_table(serving: pl.DataFrame, costs: pl.DataFrame | None, quality: pl.DataFrame | None,
                   runs: pl.DataFrame, decision: Mapping | None, cloud: Sequence[Mapping] = ()) -> pl.DataFrame:
    """One row per configuration (tool × model × quant × split × clients × depth) of a candidate tool (the serving
    table's levels, and the cost table's configurations that did not run), columns as SCHEMA then one
    CLOUD_PRICE and one CLOUD_DAY column per ``cloud`` price: each constraint's limit, verdict and note (the
    measured value beside the limit, or why it is not judged), goodput, whether it passes, its cost per 1M output
    tokens and the basis of its rank, the machines the workload needs and the cost per day, locally and at each
    cloud price. Passing rows are ranked (``rank`` 1 = the answer) by cost; without a cost, after those with one,
    by goodput output tokens/s. ``shortfall``: for a row that misses, its largest miss as a share of the limit."""
    limit = limits(decision)
    workload = workload_of(decision)
    quality_measured = quality is not None
    serving = _cast(serving, {"concurrency": pl.Int64, "depth": pl.Int64, "requests": pl.Int64,
                              "window_s": pl.Float64, "output_tokens": pl.Float64, "prompt_tokens": pl.Float64,
                              "server_output_tokens_per_s": pl.Float64, "requests_per_s": pl.Float64,
                              "per_user_decode_tokens_per_s": pl.Float64, "ttft_ms_p99": pl.Float64,
                              "itl_ms_p99": pl.Float64, "precision": pl.String, "precision_low": pl.Float64,
                              "precision_high": pl.Float64, "precision_median": pl.Float64})
    serving = serving.filter(pl.col("tool").is_in(candidate_tools()))
    cost_columns = {"usd_per_1m_tokens": pl.Float64, "hardware_usd_per_1m_tokens": pl.Float64,
                    "hardware_usd_per_day": pl.Float64, "energy_status": pl.String, "not_run_reason": pl.String}
    costs = _cast(costs if costs is not None else pl.DataFrame(schema={c: pl.String for c in GROUP}),
                  {"concurrency": pl.Int64, "depth": pl.Int64, **cost_columns})
    costs = costs.filter(pl.col("tool").is_in(candidate_tools()))
    not_run = costs.filter(pl.col("not_run_reason").fill_null("") != "").join(serving.select(GROUP), on=GROUP,
                                                                               how="anti")
    configs = pl.concat([serving, not_run.select(GROUP)], how="diagonal_relaxed").join(
        costs.select(*GROUP, *cost_columns), on=GROUP, how="left", nulls_equal=True)
    kld_columns = {"kld_mean": pl.Float64, "kld_mean_unc": pl.Float64, "reference_quant": pl.String,
                   "kld_null_reason": pl.String}
    kld = _cast(quality if quality is not None else pl.DataFrame(schema={"model": pl.String, "quant": pl.String}),
                kld_columns).select("model", "quant", *kld_columns)
    judged = (configs.join(kld, on=["model", "quant"], how="left")
              .join(accuracy_long(quality), on=["model", "quant", "tool"], how="left")
              .join(goodput(runs, limit), on=GROUP, how="left", nulls_equal=True))

    rows = []
    for r in judged.sort(GROUP).iter_rows(named=True):
        r["not_run_reason"] = r["not_run_reason"] or None
        out = {k: r.get(k) for k in SCHEMA if k in r}
        missed, misses, unjudged = [], [], []
        for c in CONSTRAINTS:
            verdict, note = judge(r.get(c.column), limit.get(c.name), c.upper, _why_missing(c, r, quality_measured))
            if c.name == "accuracy" and verdict in (MET, MISSED):
                note += _interval_note(r, limit[c.name])
            out |= {f"{c.name}_limit": limit.get(c.name), f"{c.name}_verdict": verdict, f"{c.name}_note": note}
            if verdict == MISSED:
                missed.append(f"{c.label} {note}")
                misses.append(shortfall(r[c.column], limit[c.name], c.upper))
            elif verdict == NOT_JUDGED:
                unjudged.append(c.label)
        levels = [out[f"{c.name}_verdict"] for c in SERVICE_LEVELS]
        floor = [out[f"{c.name}_verdict"] for c in QUALITY_FLOOR]
        out["meets_service_levels"] = _all_met(levels)
        out["meets_quality_floor"] = _all_met(floor)
        out["passes"] = not r["not_run_reason"] and not missed and not unjudged
        out["verdict"] = ("not run" if r["not_run_reason"] else "fails" if missed else "not judged" if unjudged
                          else "passes" if limit else "no constraints configured")
        out["missed"] = "; ".join(missed + [f"{u}: not judged" for u in unjudged]) or None
        out["shortfall"] = max(misses) if misses else None
        requests, window = r.get("requests"), r.get("window_s")
        if requests and window:
            out["prompt_tokens_per_request"] = r["prompt_tokens"] / requests
            out["output_tokens_per_request"] = r["output_tokens"] / requests
            if r.get("goodput_requests") is not None and not r.get("goodput_null_reason"):
                out["goodput_requests"] = r["goodput_requests"]
                out["goodput_requests_per_s"] = r["goodput_requests"] / window
                out["goodput_output_tokens_per_s"] = r["goodput_output_tokens"] / window
                out["goodput_share"] = r["goodput_requests"] / requests
        if out.get("goodput_requests_per_s") is None:
            out["goodput_null_reason"] = (f"not run: {r['not_run_reason']}" if r["not_run_reason"]
                                          else r.get("goodput_null_reason") or "no requests of this level in the rows")
        low, high, mid = r.get("precision_low"), r.get("precision_high"), r.get("precision_median")
        if low is not None and high is not None and mid:
            out["precision_relative"] = max(mid - low, high - mid) / abs(mid)  # as stats.precision_text says it
        out["energy_usd_per_1m_output_tokens"] = r["usd_per_1m_tokens"]
        out["hardware_usd_per_1m_output_tokens"] = r["hardware_usd_per_1m_tokens"]
        out["usd_per_1m_output_tokens"], out["cost_basis"] = _cost(r["usd_per_1m_tokens"],
                                                                   r["hardware_usd_per_1m_tokens"], r["energy_status"])
        _workload(out, r, workload, cloud)
        rows.append(out)
    table = pl.DataFrame(rows, schema={**SCHEMA, **_cloud_schema(cloud)}, strict=False)
    return _ranked(table)


def _all_met(verdicts: list[str]) -> bool | None:
    """True where every configured limit is met, False where one is missed, None where one is not judged (and none
    missed) or none is configured."""
    if MISSED in verdicts:
        return False
    if NOT_JUDGED in verdicts or all(v == NO_LIMIT for v in verdicts):
        return None
    return True


def _cloud_schema(cloud: Sequence[Mapping]) -> dict:
    return {key.format(**c): pl.Float64 for c in cloud for key in (CLOUD_PRICE, CLOUD_DAY)}


def _workload(out: dict, r: dict, workload: Mapping, cloud: Sequence[Mapping]) -> None:
    """The machines a configuration needs for the workload and its cost per day, locally and at each cloud price,
    into ``out``. A workload in output tokens per day is turned into requests at this level's own output tokens
    per request (the study's prompts); machines are sized for the busiest hour (``peak_to_average`` times the day's
    average rate); the cloud is charged input and output at its prices for the same requests."""
    for c in cloud:
        out[CLOUD_PRICE.format(**c)] = float(c["output_usd_per_1m"])
    per_request_out, per_request_in = out.get("output_tokens_per_request"), out.get("prompt_tokens_per_request")
    if not workload:
        out["machines_null_reason"] = "no workload configured (decision.workload)"
        out["local_usd_per_day_null_reason"] = out["machines_null_reason"]
        return
    if not per_request_out:
        out["machines_null_reason"] = out["goodput_null_reason"] or "no requests measured"
        out["local_usd_per_day_null_reason"] = out["machines_null_reason"]
        return
    if "requests_per_day" in workload:
        requests_day = float(workload["requests_per_day"])
    else:
        requests_day = float(workload["output_tokens_per_day"]) / per_request_out
    tokens_day = requests_day * per_request_out
    out["workload_requests_per_day"], out["workload_output_tokens_per_day"] = requests_day, tokens_day
    for c in cloud:
        out[CLOUD_DAY.format(**c)] = (requests_day * (per_request_in * float(c["input_usd_per_1m"])
                                                      + per_request_out * float(c["output_usd_per_1m"])) / 1e6)
    rps = out.get("goodput_requests_per_s")
    if rps:
        out["capacity_requests_per_day"] = rps * SECONDS_PER_DAY
        peak = float(workload.get("peak_to_average", 1))
        out["machines_needed"] = max(1, math.ceil(requests_day * peak / out["capacity_requests_per_day"] - 1e-9))
    else:
        out["machines_null_reason"] = (out["goodput_null_reason"]
                                       or "no request met the service levels: no goodput to serve the workload")
    energy = out["energy_usd_per_1m_output_tokens"]
    if energy is None:
        out["local_usd_per_day_null_reason"] = f"energy {_not_measured(r['energy_status'])}"
        return
    if out.get("machines_needed") is None and r.get("hardware_usd_per_day") is not None:
        out["local_usd_per_day_null_reason"] = f"hardware not counted: {out['machines_null_reason']}"
        return
    hardware_day = (out.get("machines_needed") or 0) * (r.get("hardware_usd_per_day") or 0.0)
    out["local_usd_per_day"] = energy * tokens_day / 1e6 + hardware_day


def _ranked(table: pl.DataFrame) -> pl.DataFrame:
    """``rank`` over the passing rows: those with a cost by it (lowest first), then those without by goodput
    output tokens/s (highest first); ``rank_basis`` says which."""
    passing = table.filter(pl.col("passes")).with_row_index("_i")
    order = passing.sort(pl.col("usd_per_1m_output_tokens").is_null(), "usd_per_1m_output_tokens",
                         pl.col("goodput_output_tokens_per_s"), descending=[False, False, True],
                         nulls_last=True)
    ranks = order.select("_i", *GROUP).with_row_index("rank", offset=1).select(*GROUP, pl.col("rank").cast(pl.Int64))
    ranked = table.drop("rank").join(ranks, on=GROUP, how="left", nulls_equal=True, maintain_order="left")
    return ranked.with_columns(
        pl.when(pl.col("rank").is_not_null()).then(pl.col("cost_basis")).alias("rank_basis"),
        _tied_with_best(ranked).alias("tied_with_rank_1"),
    ).select(table.columns)


def _tied_with_best(ranked: pl.DataFrame) -> pl.Expr:
    """Whether a ranked row's value (its cost, or goodput output tokens/s where it has none) differs from rank 1's
    by less than the precision of either job's median decode rate (``precision_relative``, a share): the
    measurement cannot tell them apart. Null off the ranking, for rank 1, where the two are ranked on different
    bases, or where a precision is unknown."""
    best = ranked.filter(pl.col("rank") == 1)
    if best.is_empty():
        return pl.lit(None, pl.Boolean)
    b = best.row(0, named=True)
    column = "usd_per_1m_output_tokens" if b["usd_per_1m_output_tokens"] is not None else "goodput_output_tokens_per_s"
    value, rel = b[column], b["precision_relative"]
    if not value or rel is None:
        return pl.lit(None, pl.Boolean)
    gap = (pl.col(column) - value).abs() / abs(value)
    return (pl.when(pl.col("rank").is_not_null() & (pl.col("rank") > 1) & pl.col(column).is_not_null()
                    & pl.col("precision_relative").is_not_null())
            .then(gap <= pl.max_horizontal(pl.col("precision_relative"), pl.lit(rel))))


def nearest(table: pl.DataFrame, n: int = 3) -> pl.DataFrame:
    """The ``n`` configurations closest to passing: fewest missed or unjudged constraints, then the smallest
    largest miss (``shortfall``)."""
    counted = table.filter(~pl.col("passes")).with_columns(
        pl.col("missed").str.count_matches("; ").fill_null(-1).add(1).alias("_n"))
    return counted.sort("_n", "shortfall", nulls_last=True).head(n).drop("_n")


# --- Markdown ---------------------------------------------------------------------------------------------------

def _config_name(r: dict) -> str:
    depth = f", depth {r['depth']}" if r["depth"] else ""
    return (f"{r['tool']} · {r['model']} · {r['quant']} · split {r['split']} · {r['concurrency']} "
            f"client{'s' * (r['concurrency'] != 1)}{depth}")


def _money(value: float | None) -> str:
    from llmbench.outputs.markdown import fmt

    return "" if value is None else f"${fmt(value)}"


def constraints_text(decision: Mapping | None) -> str:
    """The configured constraints and workload in one paragraph."""
    limit = limits(decision)
    workload = workload_of(decision)

    def listed(group):
        return ", ".join(f"{c.label} {'≤' if c.upper else '≥'} {limit[c.name]:g}{' ' + c.unit if c.unit else ''}"
                         for c in group if c.name in limit) or "none"

    text = (f"Service levels: {listed(SERVICE_LEVELS)}. Quality floor: {listed(QUALITY_FLOOR)} (mean KLD against "
            "each model's own reference quant; accuracy on the study's question set, by the configuration's own "
            "tool). ")
    if "requests_per_day" in workload:
        text += f"Workload: {workload['requests_per_day']:,} requests per day"
    elif "output_tokens_per_day" in workload:
        text += f"Workload: {workload['output_tokens_per_day']:,} output tokens per day"
    else:
        text += "Workload: none configured (decision.workload), so no machine count or cost per day"
    if workload:
        text += " at this study's prompt and output lengths"
        if workload.get("peak_to_average", 1) != 1:
            text += f", its busiest hour {workload['peak_to_average']:g}× the day's average"
    return text + ".\n"


def answer_text(table: pl.DataFrame, cloud: Sequence[Mapping]) -> str:
    """The answer in words: the first-ranked configuration, its cost, machines and cost per day beside each cloud
    price; or, where none passes, the nearest ones and what each misses."""
    from llmbench.outputs.markdown import fmt

    if table.is_empty():
        return "No configuration of a serving tool was measured: nothing to decide on.\n"
    best = table.filter(pl.col("rank") == 1)
    if best.is_empty():
        lines = ["**No configuration meets every constraint.** The nearest:\n"]
        for r in nearest(table).iter_rows(named=True):
            lines.append(f"- {_config_name(r)}: {r['missed']}\n")
        return "".join(lines)
    r = best.row(0, named=True)
    passing = table["passes"].sum()
    text = f"**{_config_name(r)}** meets every constraint"
    if r["usd_per_1m_output_tokens"] is not None:
        text += (f" at the lowest cost of the {passing} that do: {_money(r['usd_per_1m_output_tokens'])} per 1M "
                 f"output tokens ({r['cost_basis'].split(': ', 1)[1]})")
    else:
        text += (f"; of the {passing} that do, it serves the most output tokens/s within the service levels "
                 f"({fmt(r['goodput_output_tokens_per_s'])}). Ranked by {r['cost_basis']}: no cost to rank by")
    text += ". "
    tied = table.filter(pl.col("tied_with_rank_1").fill_null(False)).sort("rank")
    if not tied.is_empty():
        names = ", ".join(f"{t['tool']} {t['quant']}" + (f" ×{t['concurrency']}" if t["concurrency"] > 1 else "")
                          for t in tied.iter_rows(named=True))
        text += (f"Within the measurement's precision of it (the wider of the two jobs' intervals of the median "
                 f"decode rate; its own ±{r['precision_relative']:.1%}): {names}; this machine cannot tell them "
                 "apart. ")
    if r["machines_needed"] is not None:
        text += (f"The workload ({r['workload_requests_per_day']:,.0f} requests per day) needs "
                 f"{r['machines_needed']} machine{'s' * (r['machines_needed'] != 1)} like the one measured (each "
                 f"serves {r['capacity_requests_per_day']:,.0f} requests per day within the service levels)")
        clouds = [f"{c['name']} {_money(r[CLOUD_DAY.format(**c)])}" for c in cloud]
        local = (_money(r["local_usd_per_day"]) if r["local_usd_per_day"] is not None
                 else f"not known ({r['local_usd_per_day_null_reason']})")
        text += f"; per day locally {local}" + (f", against {', '.join(clouds)} at the cloud prices" if clouds else "")
        text += ". "
    elif r["machines_null_reason"]:
        text += f"Machines for the workload: not known ({r['machines_null_reason']}). "
    return text + "\n"


def _cell(r: dict, c: Constraint, note) -> str:
    from llmbench.outputs.markdown import fmt

    verdict = r[f"{c.name}_verdict"]
    value = fmt(0.0 if r[c.column] == 0 else r[c.column])  # the reference's KLD can read -0
    if verdict == NOT_JUDGED:
        return f"not judged {note(r[f'{c.name}_note'])}"
    if verdict == NO_LIMIT:
        return value or "—"
    mark = "✓" if verdict == MET else "✗"
    note_text = r[f"{c.name}_note"]
    return f"{value} {mark}" + (f" {note(note_text.split(' (', 1)[1].rstrip(')'))}" if "(uncertain" in note_text
                                else "")


def render_markdown(table: pl.DataFrame, decision: Mapping | None, cloud: Sequence[Mapping]) -> str:
    """The decision for people: the constraints, the answer, the passing configurations ranked, then every
    configuration with each constraint's verdict (✓ met, ✗ not met, or not judged with the reason as a footnote)."""
    from llmbench.outputs.markdown import Footnotes, fmt, pipe_table

    note = Footnotes()
    limit = limits(decision)
    parts = ["# Which setup meets the service levels and quality floor at the lowest cost\n\n",
             constraints_text(decision), "\n", answer_text(table, cloud), "\n"]
    ranked = table.filter(pl.col("rank").is_not_null()).sort("rank")
    if not ranked.is_empty():
        cloud_headers = [f"{c['name']} $/day ({c['as_of']})" for c in cloud]
        body = []
        for r in ranked.iter_rows(named=True):
            cost = (_money(r["usd_per_1m_output_tokens"]) if r["usd_per_1m_output_tokens"] is not None
                    else f"— {note(r['cost_basis'])}")
            rank = str(r["rank"]) + (" ≈" if r["tied_with_rank_1"] else "")
            body.append([rank, r["tool"], r["model"], r["quant"], r["split"], str(r["concurrency"]),
                         str(r["depth"]), cost, fmt(r["goodput_requests_per_s"]), fmt(r["goodput_output_tokens_per_s"]),
                         fmt(r["machines_needed"]) or f"— {note(r['machines_null_reason'])}",
                         _money(r["local_usd_per_day"]) or f"— {note(r['local_usd_per_day_null_reason'])}",
                         *[_money(r[CLOUD_DAY.format(**c)]) or "—" for c in cloud]])
        parts += ["## Passing, ranked\n\n", "≈: within the measurement's precision of rank 1.\n\n", pipe_table(
            ["rank", "tool", "model", "quant", "split", "clients", "depth", "$ per 1M output tokens",
             "goodput req/s", "goodput output tok/s", "machines for the workload", "local $/day", *cloud_headers],
            body), "\n"]
    header = ["tool", "model", "quant", "split", "clients", "depth",
              *[f"{c.label}{' ' + c.unit if c.unit else ''}"
                + (f" ({'≤' if c.upper else '≥'} {limit[c.name]:g})" if c.name in limit else "")
                for c in CONSTRAINTS],
              "goodput req/s (share)", "$ per 1M output tokens", "verdict"]
    body = []
    for r in table.iter_rows(named=True):
        good = (f"{fmt(r['goodput_requests_per_s'])} ({r['goodput_share']:.0%})"
                if r["goodput_requests_per_s"] is not None else f"— {note(r['goodput_null_reason'])}")
        cost = _money(r["usd_per_1m_output_tokens"]) or f"— {note(r['cost_basis'])}"
        verdict = r["verdict"] + (f" (rank {r['rank']})" if r["rank"] is not None else "")
        if r["not_run_reason"]:
            verdict += f" {note(r['not_run_reason'])}"
        body.append([r["tool"], r["model"], r["quant"], r["split"], str(r["concurrency"]), str(r["depth"]),
                     *[_cell(r, c, note) for c in CONSTRAINTS], good, cost, verdict])
    parts += ["## Every configuration\n\n", pipe_table(header, body), "\n", METHOD, "\n"]
    return "".join(parts) + note.render()


METHOD = (
    "How each number was measured. TTFT p99, ITL p99 and per-user decode (the median of the requests' own decode "
    "speeds) are the serving table's (tables/serving.csv) for the level: clients in closed loops, TTFT on the "
    "client's clock, ITL the gaps between streamed tokens pooled over the level's requests. Mean KLD is the quality "
    "table's (llama-perplexity --kl-divergence against the model's reference quant); accuracy the configuration's "
    "own tool's share of the question set answered right (Wilson 95 % interval in the CSV), judged on the measured "
    "share (where its Wilson interval spans the floor, a note says the question set cannot tell). TTFT and ITL "
    "p99 of a level with fewer than 100 requests (or gaps) lie between its largest ones: more requests make them "
    "firmer. Goodput: the level's completed requests that met every service level on their own TTFT, inter-token "
    "latency ((end-to-end − TTFT) / (output tokens − 1)) and decode speed, per second of the serving table's window "
    "(AIPerf's goodput). $ per 1M output tokens is the cost table's (tables/cost_per_1m_tokens.csv): energy pooled "
    "over the configuration's generations at the configured electricity price, plus the hardware amortization "
    "estimate where costs.hardware is set; where energy was not measured, the ranking falls back to goodput output "
    "tokens/s and says so. Machines for the workload: the workload's requests per day over one machine's goodput "
    "per day, rounded up, at the busiest hour's rate (decision.workload.peak_to_average times the average; a "
    "machine: the devices one job of the configuration held). Local $/day: the workload's "
    "output tokens at the energy price, plus each machine's hardware amortization per day where configured; cloud "
    "$/day: the same requests' prompt and output tokens at each API's input and output price. A passing "
    "configuration meets every configured constraint; one that cannot be judged on some constraint does not pass. "
    "≈ marks a passing configuration whose cost (or goodput) is closer to rank 1's than the wider of the two jobs' "
    "precision (the confidence interval of each job's median round decode rate, as a share): the measurement cannot "
    "tell them apart."
)


def write_decision_table(serving: pl.DataFrame, costs: pl.DataFrame | None, quality: pl.DataFrame | None,
                         runs: pl.DataFrame, decision: Mapping | None, cloud: Sequence[Mapping],
                         csv: Path, md: Path, parquet: Path) -> pl.DataFrame:
    """The decision table as CSV, Markdown and Parquet (the figure's input), each written whole or not at all."""
    from llmbench.core.files import write_atomically, write_text_atomically

    table = decision_table(serving, costs, quality, runs, decision, cloud)
    write_atomically(csv, table.write_csv)
    write_atomically(parquet, table.write_parquet)
    write_text_atomically(md, render_markdown(table, decision, cloud))
    return table


def make(inputs: dict, params: dict, outputs: dict) -> str:
    """The catalog's entry point (rule decision_table, workflow/scripts/make_table.py)."""
    serving = _read_csv(inputs["serving"])
    table = write_decision_table(serving, _read_csv(inputs.get("costs")), _read_csv(inputs.get("quality")),
                                 pl.read_parquet(inputs["runs"]), params.get("decision"), params.get("cloud") or [],
                                 outputs["csv"], outputs["md"], outputs["table"])
    return (f"decision table: {table.height} configurations, {table['passes'].sum()} pass"
            + (f", rank 1: {_config_name(table.filter(pl.col('rank') == 1).row(0, named=True))}"
               if table["rank"].is_not_null().any() else ""))


# --- the figure's data ------------------------------------------------------------------------------------------

SERVICE_MARK = {True: "meets the service levels", False: "misses a service level", None: "service levels not judged"}


def figure_data(table: pl.DataFrame) -> tuple[pl.DataFrame, dict, list[str]]:
    """What the decision figure draws: one point per configuration with a mean KLD and a y value, ``service`` (one
    of SERVICE_MARK's words), ``on_frontier`` (among the points meeting the service levels: none is both closer to
    the reference and better on y) and ``label``; the axis (``y`` column, its title, whether lower is better,
    ``clouds``: {name: output $ per 1M} drawn as lines where y is a cost); the notes (what is not drawn and why).

    y is $ per 1M output tokens where any configuration's was measured, else the level's server output tokens/s
    (and the notes say energy was not measured)."""
    from llmbench.outputs.stats import pareto_front

    costed = table["usd_per_1m_output_tokens"].is_not_null().any()
    if costed:
        axis = {"y": "usd_per_1m_output_tokens", "title": "$ per 1M output tokens", "lower_is_better": True}
    else:
        axis = {"y": "server_output_tokens_per_s", "title": "server output tokens/s at the level",
                "lower_is_better": False}
    prices = {}
    for column in table.columns:
        if column.endswith(")") and " output usd_per_1m (" in column:
            name, as_of = column.removesuffix(")").split(" output usd_per_1m (")
            prices[f"{name} ({as_of})"] = table[column].drop_nulls().first()
    axis["clouds"] = prices if costed else {}
    axis["max_kld"] = table["kld_limit"].drop_nulls().first()
    notes = []
    if not costed:
        reasons = sorted({b.removeprefix("throughput: energy not measured (").removesuffix(")")
                          for b in table["cost_basis"].drop_nulls()})
        notes.append(f"No cost: energy was not measured here ({'; '.join(reasons)}), so y is throughput")
    y = axis["y"]
    drawn = table.filter(pl.col("kld_mean").is_not_null() & pl.col(y).is_not_null())
    left = table.join(drawn.select(GROUP), on=GROUP, how="anti").with_columns(
        pl.when(pl.col("kld_mean").is_null()).then(pl.col("kld_note"))
        .otherwise(pl.coalesce("not_run_reason", "cost_basis" if costed else "not_run_reason", pl.lit("no value")))
        .alias("_why"))
    for r in left.group_by("tool", "_why", maintain_order=True).agg(
            pl.format("{} {}", "model", "quant").unique(maintain_order=True).str.join(", ").alias("what"))\
            .iter_rows(named=True):
        notes.append(f"not drawn: {r['tool']} ({r['what']}): {r['_why']}")
    drawn = drawn.with_columns(
        pl.col("meets_service_levels").replace_strict(
            {k: v for k, v in SERVICE_MARK.items() if k is not None}, default=SERVICE_MARK[None],
            return_dtype=pl.String).alias("service"),
        pl.format("{} {}{}", "tool", "quant", pl.when(pl.col("concurrency") > 1)
                  .then(pl.format(" ×{}", "concurrency")).otherwise(pl.lit(""))).alias("label"),
        pl.col("kld_mean").clip(lower_bound=0.0),  # the reference's own KLD can read -0
    ).with_columns(
        pl.when(pl.col("rank") == 1).then(pl.format("{} (the answer)", "label")).otherwise("label").alias("label"))
    meeting = pareto_front(drawn.filter(pl.col("meets_service_levels").fill_null(False)), "kld_mean", y,
                           maximise_y=not axis["lower_is_better"], by=())
    drawn = drawn.join(meeting.select(*GROUP, "on_frontier"), on=GROUP, how="left", nulls_equal=True).with_columns(
        pl.col("on_frontier").fill_null(False))
    return drawn, axis, notes
