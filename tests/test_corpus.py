"""Corpus from a dataset's parquet file (made here in wikitext's shape: one row per line, newlines kept)."""

import polars as pl
import pytest

from llmbench.modelfiles.corpus import parquet_text


def test_rows_are_joined_as_they_are(tmp_path):
    path = tmp_path / "test.parquet"
    pl.DataFrame({"text": ["", " = Title = \n", "", " First line .\n", None]}).write_parquet(path)
    assert parquet_text(path) == " = Title = \n First line .\n"


def test_missing_column_is_named_with_the_fix(tmp_path):
    path = tmp_path / "test.parquet"
    pl.DataFrame({"content": ["x"]}).write_parquet(path)
    with pytest.raises(ValueError, match="has no column 'text'; its columns: content. Set quality.corpus.text_column"):
        parquet_text(path)
