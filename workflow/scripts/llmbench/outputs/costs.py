"""Energy and money per 1M generated tokens, beside dated cloud prices; unmeasured energy stays unmeasured.

Per group (tool × model × quant × split) the table holds:

- the pooled headline: a group's energy summed over all its windows divided by the tokens they generated
  (``j_per_token``, ``kwh_per_1m_tokens``, ``usd_per_1m_tokens``);
- the spread over generations: each generation's own energy / generated tokens, summarised with the project's
  robust statistics (``{metric}_median/_q1/_q3/_iqr/_mean/_sd``), and the article's rule for what to report
  (median ± IQR where the group has Tukey outliers, mean ± sd otherwise) in ``{metric}_reported`` and
  ``{metric}_reported_spread``, the rule applied in ``reported_rule``;
- each cloud's dated prices (input and output apart) and local / cloud-output ratio;
- with ``costs.hardware``, an estimate of hardware amortization per 1M tokens, the total, the machine's capacity
  per day and the break-even volume per day against each cloud's output price.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from llmbench.core.quants import rank
from llmbench.devices.meters import joules_per_token
from llmbench.engines.registry import batching_tools
from llmbench.engines.runs import with_all_columns, without_contended
from llmbench.outputs.markdown import PRECISION_NOTE, Footnotes, fmt, marked_quant, pipe_table, precision_cell
from llmbench.outputs.stats import GROUP, summarize, with_job_precision, with_levels
from llmbench.study.provenance import redact

J_PER_KWH = 3.6e6
SECONDS_PER_DAY = 86_400
DAYS_PER_YEAR = 365.25
# Statistics of the per-generation values kept for each metric; n and outliers are shared by the three metrics.
SPREAD = ["median", "q1", "q3", "iqr", "mean", "sd"]
METRICS = ["j_per_token", "kwh_per_1m_tokens", "usd_per_1m_tokens"]
RULE_OUTLIERS = "median ± IQR"
RULE_NO_OUTLIERS = "mean ± sd"
THROUGHPUT_BASIS = "median single-stream decode tokens/s of the group (prefill time excluded)"
LOADED_THROUGHPUT_BASIS = ("server output tokens/s at {} clients at once: all requests' output tokens over the level's "
                           "window (prefill and queueing included)")
BATCH_THROUGHPUT_BASIS = ("llama-batched-bench's decode tokens/s of {} sequences in one batch (S_TG, prefill excluded): "
                          "the engine-side bound, no server")


def usd_per_1m_tokens(j_per_token: float, usd_per_kwh: float) -> float:
    return j_per_token * 1e6 / J_PER_KWH * usd_per_kwh


def energy_per_token(runs: pl.DataFrame) -> pl.DataFrame:
    """Per group: J per generated token over all its generations (energy summed over windows, then divided).

    Summing before dividing weights each generation by its tokens and avoids the low readings of short windows.
    At a load level above one request its requests share the engine and have no window of their own: the level's
    energy over its whole window (runs.level_columns) is divided by the tokens all its requests generated, and the
    server's output tokens/s over that window is its throughput.
    """
    runs = with_levels(runs)
    runs = without_contended(with_all_columns(runs))  # a row measured beside another load counts for nothing
    batched = (pl.col("concurrency") > 1) & pl.col("tool").is_in(batching_tools())
    served = (pl.col("concurrency") > 1) & ~pl.col("tool").is_in(batching_tools())
    # A window too short for its sensor (meters.validity) is left out of J/token; unknown validity counts as valid.
    used = pl.col("energy_valid").fill_null(True)
    return runs.group_by(GROUP).agg(
        pl.col("generated_tokens").sum().alias("generated_tokens"),
        pl.col("generated_tokens").filter(used).sum().alias("_tokens_used"),
        pl.col("energy_j").filter(used).sum().alias("_energy_used"),
        (used & pl.col("energy_j").is_not_null()).sum().cast(pl.Int64).alias("energy_windows_used"),
        pl.col("energy_j").is_not_null().sum().cast(pl.Int64).alias("energy_windows"),
        pl.col("energy_invalid_reason").drop_nulls().unique().sort().first().alias("_invalid_reason"),
        pl.col("level_energy_valid").drop_nulls().first().alias("_level_valid"),
        pl.col("level_energy_invalid_reason").drop_nulls().first().alias("_level_invalid"),
        pl.col("decode_tokens_per_s").median().alias("median_decode_tokens_per_s"),
        (pl.len() - (pl.col("status") == "contended").sum()).cast(pl.Int64).alias("generations"),
        # A row measured under contention is not a window without energy: it is left out (runs.without_contended).
        pl.col("energy_j").filter(pl.col("status") != "contended").is_null().any().alias("_any_null"),
        (pl.col("status") == "contended").sum().cast(pl.Int64).alias("_contended"),
        pl.col("energy_j").sum().alias("_energy_j"),
        pl.col("energy_is_estimate").fill_null(False).any().alias("energy_is_estimate"),
        pl.col("energy_window_s").sum().alias("energy_windows_s"),
        pl.col("energy_window_s").min().alias("shortest_window_s"),
        pl.col("energy_source").drop_nulls().unique().sort().str.join(", ").alias("energy_source"),
        # What the energy covers (GPU, CPU package+DRAM, platform): the measurement boundary, named in the table.
        pl.col("energy_boundary").drop_nulls().unique().sort().str.join("; ").alias("energy_boundary"),
        pl.col("energy_null_reason").drop_nulls().unique().sort().str.join("; ").alias("energy_null_reason"),
        pl.col("status_reason").drop_nulls().unique().sort().str.join("; ").alias("not_run_reason"),
        pl.col("level_energy_j").drop_nulls().first().alias("_level_j"),
        pl.col("level_window_s").drop_nulls().first().alias("_level_s"),
        pl.col("level_energy_null_reason").drop_nulls().first().alias("_level_reason"),
        # Where the model file is not what its quant label says (llmbench.modelfiles.tensor_mix), what it holds.
        pl.col("quant_label_note").drop_nulls().first().alias("quant_label_note"),
    ).with_columns(
        # A batching tool's rows are batches: their decode tokens/s is the batch's output already.
        pl.when(batched).then(pl.col("median_decode_tokens_per_s"))
        .otherwise(pl.col("generated_tokens") / pl.col("_level_s")).alias("server_output_tokens_per_s"),
    ).with_columns(
        pl.when(served)
        .then(pl.when(pl.col("_level_valid").fill_null(True))
              .then(joules_per_token(pl.col("_level_j"), pl.col("generated_tokens"))))
        .when(pl.col("_any_null") | (pl.col("energy_windows_used") == 0)).then(None)
        .otherwise(joules_per_token(pl.col("_energy_used"), pl.col("_tokens_used")))
        .alias("j_per_token"),
        pl.when(served)
        .then(pl.coalesce(pl.col("_level_reason"), pl.concat_str(pl.lit("not measured: "), pl.col("_level_invalid"))))
        .when(~pl.col("_any_null") & (pl.col("energy_windows_used") == 0))
        .then(pl.concat_str(pl.lit("not measured: every "), pl.col("_invalid_reason")))
        .otherwise(pl.col("energy_null_reason"))
        .alias("energy_null_reason"),
    ).with_columns(
        pl.when(pl.col("j_per_token").is_null()).then(None)
        .when(served).then(pl.format(
            "the level's energy over its whole window ({} s, {} clients at once), over the tokens its {} "
            "requests generated", pl.col("_level_s").round(1), pl.col("concurrency"), pl.col("generations"),
        ))
        .when(pl.col("energy_windows_used") < pl.col("energy_windows")).then(pl.format(
            "energy summed over {} of {} windows, over the tokens they generated; {} left out: {}",
            pl.col("energy_windows_used"), pl.col("energy_windows"),
            pl.col("energy_windows") - pl.col("energy_windows_used"), pl.col("_invalid_reason"),
        ))
        .otherwise(pl.format(
            "energy summed over {} windows ({} s in all), over the tokens they generated",
            pl.col("generations"), pl.col("energy_windows_s").round(1),
        )).alias("energy_basis")
    ).with_columns(
        pl.when(pl.col("energy_basis").is_not_null() & (pl.col("_contended") > 0))
        .then(pl.format("{}; {} generation(s) measured under contention left out (status 'contended')",
                        pl.col("energy_basis"), pl.col("_contended")))
        .otherwise(pl.col("energy_basis")).alias("energy_basis")
    ).drop("_any_null", "_energy_j", "_level_j", "_level_s", "_level_reason", "_tokens_used", "_energy_used",
           "_invalid_reason", "_level_valid", "_level_invalid", "_contended")


def per_generation_stats(runs: pl.DataFrame) -> pl.DataFrame:
    """Per group: statistics of each generation's own J/token (energy_j / generated_tokens).

    Rows that generated no token (llama-bench's prefill-only samples) have no J per generated token and are left
    out; their energy still counts in the pooled J/token.
    """
    runs = without_contended(with_all_columns(with_levels(runs)))
    # A window too short for its sensor is left out here too, as from the pooled value.
    gens = runs.filter((pl.col("generated_tokens") > 0) & pl.col("energy_valid").fill_null(True)).with_columns(
        joules_per_token(pl.col("energy_j"), pl.col("generated_tokens")).alias("j_per_token")
    )
    stats = summarize(gens, ["j_per_token"])
    return stats.select(
        *GROUP,
        pl.col("n").alias("per_generation_n"),
        pl.col("n_outliers").alias("per_generation_outliers"),
        *[pl.col(s).alias(f"j_per_token_{s}") for s in SPREAD],
    )


def check_hardware(hardware: dict) -> None:
    """Bad amortization inputs fail with the key, the value and the fix (the schema says the same at parse time)."""
    for key in ("purchase_usd", "lifetime_years", "utilization"):
        value = hardware.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"costs.hardware.{key} = {value!r}: must be a number above 0")
    if hardware["utilization"] > 1:
        raise ValueError(f"costs.hardware.utilization = {hardware['utilization']!r}: must be in (0, 1], "
                         "the fraction of the machine's lifetime spent generating")


def _null_unless_measured(expr: pl.Expr) -> pl.Expr:
    return pl.when(pl.col("j_per_token").is_not_null()).then(expr)


def _amortization(t: pl.DataFrame, hardware: dict, cloud: list[dict]) -> pl.DataFrame:
    """Hardware $ per 1M tokens at measured throughput, the total with energy, and break-even volume per day."""
    check_hardware(hardware)
    purchase, years, util = hardware["purchase_usd"], hardware["lifetime_years"], hardware["utilization"]
    usd_per_day = purchase / (years * DAYS_PER_YEAR)
    loaded = pl.col("concurrency") > 1
    tps = pl.when(loaded).then(pl.col("server_output_tokens_per_s")).otherwise(pl.col("median_decode_tokens_per_s"))
    t = t.with_columns(
        pl.when(loaded & pl.col("tool").is_in(batching_tools())).then(pl.format(BATCH_THROUGHPUT_BASIS,
                                                                                 pl.col("concurrency")))
        .when(loaded).then(pl.format(LOADED_THROUGHPUT_BASIS, pl.col("concurrency")))
        .otherwise(pl.lit(THROUGHPUT_BASIS)).alias("hardware_throughput_basis"),
        pl.lit(float(purchase)).alias("hardware_purchase_usd"),
        pl.lit(float(years)).alias("hardware_lifetime_years"),
        pl.lit(float(util)).alias("hardware_utilization"),
        pl.lit(usd_per_day).alias("hardware_usd_per_day"),
        (purchase / (years * DAYS_PER_YEAR * SECONDS_PER_DAY * util * tps) * 1e6).alias("hardware_usd_per_1m_tokens"),
        (tps * SECONDS_PER_DAY).alias("capacity_tokens_per_day"),
        pl.when(tps.is_null() | (tps <= 0)).then(pl.concat_str(
            pl.lit("no decode throughput measured: "),
            pl.when(pl.col("not_run_reason") != "").then(pl.col("not_run_reason")).otherwise(pl.lit("no decode rows")),
        )).alias("hardware_null_reason"),
    ).with_columns(
        (pl.col("usd_per_1m_tokens") + pl.col("hardware_usd_per_1m_tokens")).alias("total_usd_per_1m_tokens"),
    )
    for c in cloud:
        name, out_price = c["name"], float(c["output_usd_per_1m"])
        margin = pl.lit(out_price) - pl.col("usd_per_1m_tokens")
        volume = pl.when(pl.col("usd_per_1m_tokens").is_not_null() & (margin > 0)).then(usd_per_day * 1e6 / margin)
        t = t.with_columns(volume.alias(f"break-even vs {name} tokens_per_day")).with_columns(
            (pl.col(f"break-even vs {name} tokens_per_day") > pl.col("capacity_tokens_per_day"))
            .alias(f"break-even vs {name} above capacity"),
            pl.when(pl.col("usd_per_1m_tokens").is_null()).then(pl.col("energy_status"))
            .when(margin <= 0).then(pl.format(
                f"local energy cost ({{}} $ per 1M) is at or above {name}'s output price ({out_price} $ per 1M): "
                "never breaks even", pl.col("usd_per_1m_tokens").round_sig_figs(4)))
            .alias(f"break-even vs {name} null_reason"),
        )
    return t


def cost_table(runs: pl.DataFrame, usd_per_kwh: float, cloud: list[dict], hardware: dict | None = None) -> pl.DataFrame:
    """One row per group: pooled and per-generation J/token, kWh and $ per 1M generated tokens, cloud prices
    beside, and with ``hardware`` the amortization estimate and break-even volumes."""
    runs = with_levels(runs)
    kwh = 1e6 / J_PER_KWH
    t = energy_per_token(runs).join(per_generation_stats(runs), on=GROUP, how="left").with_columns(
        pl.col("per_generation_n").fill_null(0),
        (pl.col("j_per_token") * kwh).alias("kwh_per_1m_tokens"),
        pl.lit(float(usd_per_kwh)).alias("electricity_usd_per_kwh"),
    ).with_columns(
        (pl.col("kwh_per_1m_tokens") * usd_per_kwh).alias("usd_per_1m_tokens"),
        pl.when(pl.col("j_per_token").is_null())
        .then(pl.concat_str(pl.lit("not measured: "), pl.col("energy_null_reason").str.replace("^not measured: ", "")))
        .when(pl.col("energy_is_estimate"))
        .then(pl.concat_str(pl.lit("estimate, not measured: "), pl.col("energy_source")))
        .otherwise(pl.lit("measured"))
        .alias("energy_status"),
        # A group with any unmeasured window has no statistics at all, like its pooled value.
        *[_null_unless_measured(pl.col(f"j_per_token_{s}")).alias(f"j_per_token_{s}") for s in SPREAD],
        _null_unless_measured(pl.col("per_generation_outliers")).alias("per_generation_outliers"),
    ).with_columns(
        # $ and kWh are J/token times a positive constant: their quantiles, mean, sd and outliers scale with it.
        *[(pl.col(f"j_per_token_{s}") * kwh).alias(f"kwh_per_1m_tokens_{s}") for s in SPREAD],
        *[(pl.col(f"j_per_token_{s}") * kwh * usd_per_kwh).alias(f"usd_per_1m_tokens_{s}") for s in SPREAD],
        pl.when(pl.col("j_per_token_median").is_null()).then(None)
        .when(pl.col("per_generation_outliers") > 0).then(pl.lit(RULE_OUTLIERS))
        .otherwise(pl.lit(RULE_NO_OUTLIERS)).alias("reported_rule"),
    )
    outliers = pl.col("reported_rule") == RULE_OUTLIERS
    t = t.with_columns(
        *[pl.when(outliers).then(pl.col(f"{m}_median")).otherwise(pl.col(f"{m}_mean")).alias(f"{m}_reported")
          for m in METRICS],
        *[pl.when(outliers).then(pl.col(f"{m}_iqr")).otherwise(pl.col(f"{m}_sd")).alias(f"{m}_reported_spread")
          for m in METRICS],
    )
    for c in cloud:
        name, out_price = c["name"], float(c["output_usd_per_1m"])
        t = t.with_columns(
            pl.lit(out_price).alias(f"{name} output usd_per_1m ({c['as_of']})"),
            pl.lit(float(c["input_usd_per_1m"])).alias(f"{name} input usd_per_1m ({c['as_of']})"),
            (pl.col("usd_per_1m_tokens") / out_price if out_price > 0 else pl.lit(None, pl.Float64))
            .alias(f"local / {name} output"),
        )
    if hardware:
        t = _amortization(t, hardware, cloud)
    # The job's precision of its median decode rate (stats.TABLE_PRECISION): "precision" its note, beside its numbers.
    return with_job_precision(t, runs).sort(GROUP)


def _ranked(table: pl.DataFrame) -> pl.DataFrame:
    return table.with_columns(
        pl.col("quant").replace_strict(rank(table["quant"]), return_dtype=pl.Int64).alias("_rank")
    ).sort(["tool", "model", "split", "_rank"])


def _not_run(r: dict) -> bool:
    """A group whose job was skipped: its speed cell says why, its other cells just 'not run'."""
    return bool(r["not_run_reason"]) and r["median_decode_tokens_per_s"] is None


def _per_day(value) -> str:
    return "" if value is None else f"{value:,.0f}"


def _pm(center, spread) -> str:
    if center is None:
        return ""
    return f"{fmt(center)} ± {fmt(spread)}" if spread is not None else f"{fmt(center)} (one generation, no spread)"


def render_markdown(table: pl.DataFrame, usd_per_kwh: float, electricity_note: str, cloud: list[dict],
                    hardware: dict | None = None) -> str:
    """The cost tables for people: one section per tool, quants by bits per weight, the article's rule visible."""
    notes = Footnotes()

    def cell(r: dict, text: str, first: bool = False) -> str:
        """A value derived from energy: 'not measured: why' where there is none, estimates marked."""
        if _not_run(r):
            return "not run"
        if r["j_per_token"] is None:
            why = r["energy_status"].removeprefix("not measured: ")
            return f"not measured: {why}" if first else "not measured"
        if r["energy_is_estimate"]:
            return f"{text} estimate {notes(r['energy_status'])}"
        return text

    def basis(r: dict) -> str:
        """A footnote where the pooled value is not every window's energy over every token: windows left out for
        their sensor, or a load level's one window."""
        partial = (r["energy_windows_used"] or 0) < (r["energy_windows"] or 0)
        return " " + notes(r["energy_basis"]) if r["energy_basis"] and (partial or r["concurrency"] > 1) else ""

    out = [
        "# Cost per 1M generated tokens\n\n",
        f"Electricity: ${usd_per_kwh}/kWh ({electricity_note or 'no source given'}). Energy only unless a hardware "
        "amortization is shown: operations and maintenance are excluded, so a local cost is a lower bound.\n\n",
        "Pooled: a group's energy summed over all its generation windows, divided by the tokens they generated "
        "(never one short window alone: NVML's energy counter steps about every 100 ms, so windows under ~2 s read "
        "low). Per generation: each generation's energy / its generated tokens, summarised as median ± IQR (Q3 − Q1) "
        "and mean ± sd; the reported value follows the article's rule: median ± IQR where the group has Tukey "
        "outliers (beyond 1.5 IQR), mean ± sd otherwise.\n\n",
        f"{PRECISION_NOTE}\n",
    ]
    if cloud:
        out += [
            "\n## Cloud API prices\n\n",
            "Local cost is compared with each API's OUTPUT price (the local figure is per generated token; the local "
            "prompt's energy is inside it). Input prices are shown beside, not used in the ratios.\n\n",
            pipe_table(["API", "input $ per 1M tokens", "output $ per 1M tokens", "as of", "source"],
                      [[c["name"], fmt(float(c["input_usd_per_1m"])), fmt(float(c["output_usd_per_1m"])), c["as_of"],
                        c["source"]] for c in cloud]),
        ]
    header = ["model", "quant", "split", "clients", "depth", "generations", "median decode [tok/s]", "precision",
              "J/token (pooled)",
              "kWh per 1M tokens (pooled)", "$ per 1M tokens (pooled)", "kWh per 1M: median ± IQR",
              "kWh per 1M: mean ± sd", "$ per 1M: median ± IQR", "$ per 1M: mean ± sd",
              "$ per 1M reported (article's rule)", *[f"local / {c['name']} output price" for c in cloud]]
    hw_header = ["model", "quant", "split", "clients", "depth", "throughput [tok/s]",
                 "hardware $ per 1M tokens (estimate)",
                 "energy $ per 1M (pooled)", "total $ per 1M tokens (estimate)", "capacity [tokens/day]",
                 *[f"break-even vs {c['name']} [tokens/day]" for c in cloud]]
    ranked = _ranked(table)
    for tool in ranked["tool"].unique(maintain_order=True):
        rows, hw_rows = [], []
        for r in ranked.filter(pl.col("tool") == tool).iter_rows(named=True):
            speed = fmt(r["median_decode_tokens_per_s"]) or f"not run: {r['not_run_reason'] or 'no decode rows'}"
            rule = r["reported_rule"]
            reported = _pm(r["usd_per_1m_tokens_reported"], r["usd_per_1m_tokens_reported_spread"])
            if rule:
                reported += f" ({rule}; Tukey outliers: {r['per_generation_outliers']} of {r['per_generation_n']})"
            quant = marked_quant(r["quant"], r["quant_label_note"], notes)
            rows.append([
                r["model"], quant, r["split"], str(r["concurrency"]), str(r["depth"]), str(r["generations"]), speed,
                "not run" if _not_run(r) else precision_cell(r, notes),
                cell(r, fmt(r["j_per_token"]) + basis(r), first=True), cell(r, fmt(r["kwh_per_1m_tokens"])),
                cell(r, fmt(r["usd_per_1m_tokens"])),
                cell(r, _pm(r["kwh_per_1m_tokens_median"], r["kwh_per_1m_tokens_iqr"])),
                cell(r, _pm(r["kwh_per_1m_tokens_mean"], r["kwh_per_1m_tokens_sd"])),
                cell(r, _pm(r["usd_per_1m_tokens_median"], r["usd_per_1m_tokens_iqr"])),
                cell(r, _pm(r["usd_per_1m_tokens_mean"], r["usd_per_1m_tokens_sd"])),
                cell(r, reported),
                *[cell(r, fmt(r[f"local / {c['name']} output"]) or "no ratio: output price 0") for c in cloud],
            ])
            if hardware:
                hw = fmt(r["hardware_usd_per_1m_tokens"]) or ("not run" if _not_run(r) else r["hardware_null_reason"])
                capacity = _per_day(r["capacity_tokens_per_day"]) or ("not run" if _not_run(r) else r["hardware_null_reason"])
                breakeven = []
                for c in cloud:
                    v = r[f"break-even vs {c['name']} tokens_per_day"]
                    if v is None:
                        breakeven.append(cell(r, r[f"break-even vs {c['name']} null_reason"] or ""))
                    else:
                        above = " (above capacity)" if r[f"break-even vs {c['name']} above capacity"] else ""
                        breakeven.append(cell(r, _per_day(v) + above))
                throughput = (fmt(r["server_output_tokens_per_s"]) + notes(r["hardware_throughput_basis"])
                              if r["concurrency"] > 1 else speed)
                hw_rows.append([
                    r["model"], quant, r["split"], str(r["concurrency"]), str(r["depth"]), throughput, hw, cell(r, fmt(r["usd_per_1m_tokens"]), first=True),
                    cell(r, fmt(r["total_usd_per_1m_tokens"]) or r["hardware_null_reason"] or ""), capacity,
                    *breakeven,
                ])
        out += [f"\n## {tool}\n\n", pipe_table(header, rows)]
        boundaries = sorted({b for b in ranked.filter(pl.col("tool") == tool)["energy_boundary"].to_list() if b})
        if boundaries:
            out.append(f"\nEnergy measured at: {'; '.join(boundaries)}.\n")
        if hardware:
            out += [f"\n### {tool}: with hardware amortization (estimate)\n\n", pipe_table(hw_header, hw_rows)]
    if hardware:
        out.append(
            f"\nHardware amortization is an estimate, not a measurement: {hardware.get('name') or 'the machine'} "
            f"bought for ${hardware['purchase_usd']:,} ({hardware['as_of']}; {hardware.get('note') or 'no source given'}), "
            f"written off over {hardware['lifetime_years']} years at utilization {hardware['utilization']}. "
            f"Throughput basis: {THROUGHPUT_BASIS}. Hardware $ per 1M = purchase / (lifetime seconds × utilization × "
            "tokens/s) × 1e6; total = energy (pooled) + hardware. Break-even volume per day against an API = "
            "(purchase / lifetime days) / (API output price per token − local energy price per token), independent of "
            "utilization; capacity = tokens/s × 86,400 (one stream, all day): a break-even above capacity cannot be "
            "reached on this machine at that throughput.\n"
        )
    out.append(notes.render())
    return "".join(out)


def write_cost_tables(runs: pl.DataFrame, costs: dict, csv: Path, md: Path) -> pl.DataFrame:
    """The cost table as CSV (every column) and Markdown, from the study's ``costs`` config section; its free text
    (notes, sources, names) written with credentials redacted (llmbench.study.provenance.redact)."""
    # configcheck refuses a token in the config; this keeps one out should these tables be written from elsewhere.
    costs = redact(costs)
    cloud, hardware = costs.get("cloud", []), costs.get("hardware")
    table = cost_table(runs, costs["electricity_usd_per_kwh"], cloud, hardware)
    from llmbench.core.files import write_atomically, write_text_atomically  # whole or not at all; a full disk named

    write_atomically(csv, table.write_csv)
    write_text_atomically(md, render_markdown(table, costs["electricity_usd_per_kwh"],
                                              costs.get("electricity_note", ""), cloud, hardware))
    return table
