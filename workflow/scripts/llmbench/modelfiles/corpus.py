"""Corpora for llama-perplexity from dataset files."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def parquet_text(path: str | Path, column: str = "text") -> str:
    """A parquet file's text column joined as it is: wikitext's rows already end with their newlines, so the
    result is the raw test file that llama.cpp's own perplexity figures are quoted on."""
    df = pl.read_parquet(path)
    if column not in df.columns:
        raise ValueError(f"{path} has no column {column!r}; its columns: {', '.join(df.columns)}. Set quality.corpus.text_column")
    return "".join(df[column].drop_nulls().to_list())
