"""The Markdown of the tables: pipe tables, number formatting, numbered footnotes."""

from llmbench.outputs.markdown import Footnotes, fmt, pipe_table


def test_fmt_gives_floats_four_significant_digits_and_none_an_empty_cell():
    assert fmt(1234.5678) == "1235" and fmt(0.000123456) == "0.0001235" and fmt(2.0) == "2"
    assert fmt(3.14159, digits=2) == "3.1"
    assert fmt(None) == "" and fmt(7) == "7" and fmt("Q4_0") == "Q4_0"


def test_pipe_table_escapes_a_pipe_inside_a_cell():
    assert pipe_table(["a", "b"], [["1", "x|y"], ["", "2"]]) == (
        "| a | b |\n|---|---|\n| 1 | x\\|y |\n|  | 2 |\n")


def test_pipe_table_without_rows_is_its_header():
    assert pipe_table(["a"], []) == "| a |\n|---|\n"


def test_footnotes_number_each_text_once_in_order_of_first_use():
    notes = Footnotes()
    assert [notes("b"), notes("a"), notes("b")] == ["[1]", "[2]", "[1]"]
    assert len(notes) == 2 and notes.render() == "\n[1] b\n\n[2] a\n"
    assert Footnotes().render() == ""
