from collections import Counter

import polars as pl
import pytest
import yaml

from conftest import REPO
from llmbench.study.accuracy import (
    CATEGORIES,
    Question,
    accuracy_table,
    is_correct,
    load_questions,
    normalise,
    score,
    wilson_interval,
)

QUESTIONS = REPO / "workflow" / "data" / "accuracy-questions.yaml"


def q(answers, match="contains", category="facts"):
    return Question("q", category, "?", tuple(answers), match, 8)


def write(tmp_path, questions):
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "description": "t", "questions": questions}))
    return path


def item(**over):
    return {"id": "a", "category": "facts", "question": "?", "answers": ["x"], "match": "exact", "max_tokens": 8} | over


def test_real_question_file_loads_with_30_unique_ids_in_four_balanced_categories():
    questions = load_questions(QUESTIONS)
    assert len(questions) == 30
    assert len({x.id for x in questions}) == 30
    counts = Counter(x.category for x in questions)
    assert set(counts) == set(CATEGORIES)
    assert all(7 <= c <= 8 for c in counts.values())
    assert all(8 <= x.max_tokens <= 24 for x in questions)
    # The format is what format items test, so they must be judged exactly.
    assert {x.match for x in questions if x.category == "format"} == {"exact"}


def test_every_accepted_answer_is_judged_correct():
    for question in load_questions(QUESTIONS):
        for answer in question.answers:
            assert is_correct(question, answer), (question.id, answer)


@pytest.mark.parametrize(
    ("over", "problem"),
    [
        ({"match": "fuzzy"}, "match 'fuzzy'"),
        ({"answers": []}, "answers"),
        ({"answers": [42]}, "answers"),
        ({"category": "trivia"}, "category 'trivia'"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"question": " "}, "question"),
    ],
)
def test_invalid_items_name_the_id_and_the_problem(tmp_path, over, problem):
    with pytest.raises(ValueError, match=rf"question 'a'.*{problem}"):
        load_questions(write(tmp_path, [item(**over)]))


def test_duplicate_and_missing_ids_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="question 'a': duplicate id"):
        load_questions(write(tmp_path, [item(), item()]))
    with pytest.raises(ValueError, match="question #2: needs an 'id'"):
        load_questions(write(tmp_path, [item(), item(id=None)]))
    with pytest.raises(ValueError, match="version: 1"):
        (tmp_path / "v.yaml").write_text("version: 2\nquestions: []\n")
        load_questions(tmp_path / "v.yaml")


def test_normalise():
    assert normalise('  "The   Answer."  ') == "the answer"
    assert normalise("'YES'.", case_sensitive=True) == "YES"
    assert normalise("\u201cParis.\u201d") == "paris"
    # Only one matching pair of quotes is dropped, and leading phrases are kept.
    assert normalise("'a\"") == "'a\""
    assert normalise("The answer is 42.") == "the answer is 42"


def test_contains_is_whole_word_and_case_insensitive():
    forty_two = q(["42"])
    assert is_correct(forty_two, "The answer is 42.")
    assert is_correct(forty_two, "17 + 25 = 42")
    for wrong in ["142", "420", "4.2", "-42", "42.5", "42nd", "forty-two", ""]:
        assert not is_correct(forty_two, wrong), wrong
    gold = q(["Au"])
    assert is_correct(gold, "The symbol is AU")
    assert not is_correct(gold, "Gaudy")
    assert is_correct(q(["INV-2291"]), "The invoice number is inv-2291.")
    assert not is_correct(q(["INV-2291"]), "INV-22910")
    assert not is_correct(forty_two, None)


def test_exact_is_case_sensitive_on_the_whole_reply():
    yes = q(["YES"], match="exact", category="format")
    assert is_correct(yes, " YES\n")
    assert is_correct(yes, '"YES."')
    for wrong in ["Yes", "yes", "YES!", "YES, sure", "The answer is YES"]:
        assert not is_correct(yes, wrong), wrong
    abc = q(["a,b,c"], match="exact", category="format")
    assert is_correct(abc, "a,b,c.")
    assert not is_correct(abc, "a, b, c")


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(8, 10, 0.4902, 0.9433), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (50, 100, 0.4038, 0.5962)],
)
def test_wilson_interval_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_interval_of_nothing():
    assert wilson_interval(0, 0) == (None, None)


def test_accuracy_table_counts_and_bounds_per_group():
    df = pl.DataFrame(
        {
            "quant": ["Q8_0"] * 10 + ["Q2_K"] * 4,
            "question_id": [f"q{i}" for i in range(10)] + ["q0", "q1", "q2", "q3"],
            "correct": [True] * 8 + [False] * 2 + [True, False, False, None],
        }
    )
    t = accuracy_table(df, ["quant"])
    assert t.columns == ["quant", "n", "correct", "accuracy", "wilson_low", "wilson_high"]
    rows = {r["quant"]: r for r in t.iter_rows(named=True)}
    # A null (no verdict) is left out of n.
    assert (rows["Q2_K"]["n"], rows["Q2_K"]["correct"]) == (3, 1)
    assert rows["Q2_K"]["accuracy"] == pytest.approx(1 / 3)
    assert (rows["Q8_0"]["n"], rows["Q8_0"]["correct"], rows["Q8_0"]["accuracy"]) == (10, 8, 0.8)
    for quant, (k, n) in {"Q8_0": (8, 10), "Q2_K": (1, 3)}.items():
        low, high = wilson_interval(k, n)
        assert rows[quant]["wilson_low"] == pytest.approx(low)
        assert rows[quant]["wilson_high"] == pytest.approx(high)


def test_accuracy_table_bounds_reach_exactly_0_and_1():
    df = pl.DataFrame(
        {
            "quant": ["all", "all", "none", "none"],
            "question_id": ["a", "b", "a", "b"],
            "correct": [True, True, False, False],
        }
    )
    rows = {r["quant"]: r for r in accuracy_table(df, ["quant"]).iter_rows(named=True)}
    assert (rows["all"]["accuracy"], rows["all"]["wilson_high"]) == (1.0, 1.0)
    assert (rows["none"]["accuracy"], rows["none"]["wilson_low"]) == (0.0, 0.0)
    assert rows["all"]["wilson_low"] == pytest.approx(wilson_interval(2, 2)[0])


def test_accuracy_table_of_a_group_without_verdicts_has_null_accuracy():
    df = pl.DataFrame(
        {"quant": ["Q4_0"], "question_id": ["q0"], "correct": [None]}, schema_overrides={"correct": pl.Boolean}
    )
    row = accuracy_table(df, ["quant"]).row(0, named=True)
    assert row == {"quant": "Q4_0", "n": 0, "correct": 0, "accuracy": None, "wilson_low": None, "wilson_high": None}


def test_score_judges_replies_and_feeds_the_table():
    questions = load_questions(QUESTIONS)
    rows = [
        {"quant": "Q8_0", "question_id": "ar-add-2", "category": "arithmetic", "reply": "42"},
        {"quant": "Q8_0", "question_id": "fo-yes-caps", "category": "format", "reply": "Yes"},
        {"quant": "Q8_0", "question_id": "fa-gold", "category": "facts", "reply": None},
        {"quant": "Q8_0", "question_id": "fa-capital-fr", "category": "facts", "reply": "It is Paris."},
    ]
    scored = score(rows, questions)
    assert scored["correct"].to_list() == [True, False, False, True]
    t = accuracy_table(scored, ["quant", "category"])
    assert t.select("category", "n", "correct").rows() == [("arithmetic", 1, 1), ("facts", 2, 1), ("format", 1, 0)]
    with pytest.raises(ValueError, match="unknown question ids: \\['nope'\\]"):
        score([{"question_id": "nope", "reply": "x"}], questions)
