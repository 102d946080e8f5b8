"""Answer accuracy of a model (or a quant of it) on a small set of questions with exact, checkable answers.

Reply and answers are normalised alike (whitespace stripped and collapsed, one trailing period and one pair of
surrounding quotes dropped; no lead-in such as "The answer is" is removed), then judged by the question's ``match``:
- ``contains``: case-insensitive; an accepted answer must occur as a whole word or number ("42" is not in "142",
  "4.2", "-42", "42.5" or "42nd"). Used for arithmetic, facts and extraction, where small models add words;
- ``exact``: case-sensitive equality with the whole reply ("Yes" is not "YES"). Used for format items: there the
  format, case included, is what is tested. A reply of None (a failed generation) is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml

MATCHES = ("exact", "contains")
CATEGORIES = ("arithmetic", "facts", "extraction", "format")
Z95 = 1.959964
_QUOTES = {'"': '"', "'": "'", "`": "`", "\u201c": "\u201d", "\u2018": "\u2019"}


@dataclass(frozen=True)
class Question:
    id: str
    category: str
    question: str
    answers: tuple[str, ...]
    match: str
    max_tokens: int


def _problem(item: dict[str, Any]) -> str | None:
    answers, max_tokens = item.get("answers"), item.get("max_tokens")
    if item.get("category") not in CATEGORIES:
        return f"category {item.get('category')!r} is not one of {CATEGORIES}"
    if item.get("match") not in MATCHES:
        return f"match {item.get('match')!r} is not one of {MATCHES}"
    if not isinstance(item.get("question"), str) or not item["question"].strip():
        return "needs a non-empty 'question'"
    # Unquoted numbers load from YAML as int; requiring strings keeps an answer like "007" from silently becoming 7.
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        return "needs 'answers', a non-empty list of non-empty strings (quote numbers)"
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        return f"max_tokens {max_tokens!r} is not a positive integer"
    return None


def load_questions(path: str | Path) -> list[Question]:
    """Read and validate a question file; a ValueError names the offending question and what is wrong with it."""
    doc = yaml.safe_load(Path(path).read_text())
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("questions"), list):
        raise ValueError(f"{path}: expected a mapping with 'version: 1' and a list of 'questions'")
    questions: list[Question] = []
    for index, item in enumerate(doc["questions"]):
        qid = item.get("id") if isinstance(item, dict) else None
        if not isinstance(qid, str) or not qid:
            raise ValueError(f"question #{index + 1}: needs an 'id' (a non-empty string)")
        problem = "duplicate id" if qid in {q.id for q in questions} else _problem(item)
        if problem:
            raise ValueError(f"question {qid!r}: {problem}")
        fields = (item["category"], item["question"].strip(), tuple(item["answers"]), item["match"], item["max_tokens"])
        questions.append(Question(qid, *fields))
    return questions


def normalise(text: str, case_sensitive: bool = False) -> str:
    """Strip, collapse whitespace, drop a trailing period and a pair of surrounding quotes; lower-case unless asked."""
    t = " ".join(text.split()).removesuffix(".")
    if len(t) >= 2 and _QUOTES.get(t[0]) == t[-1]:
        # The period may sit inside the quotes ("YES.") as well as outside them ("YES".).
        t = t[1:-1].strip().removesuffix(".")
    return t if case_sensitive else t.lower()


def is_correct(question: Question, reply: str | None) -> bool:
    if reply is None:
        return False
    if question.match == "exact":
        return normalise(reply, case_sensitive=True) in {normalise(a, case_sensitive=True) for a in question.answers}
    text = normalise(reply)
    # \b alone would let "42" match "-42", "4.2" or "42.5": a sign or a decimal point is part of a number.
    return any(re.search(rf"(?<![\w.-]){re.escape(normalise(a))}(?!\w|[.,]\d)", text) for a in question.answers)


def _wilson(k: Any, n: Any, z: float) -> tuple[Any, Any]:
    # Written with operators only (** 0.5, not sqrt) so that the same formula serves floats and polars expressions.
    p, denominator = k / n, 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = z * (p * (1 - p) / n + z**2 / (4 * n**2)) ** 0.5 / denominator
    return centre - half, centre + half


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion k/n (95 % by default); (None, None) when n is 0."""
    if n == 0:
        return None, None
    low, high = _wilson(k, n, z)
    # Clipped because rounding can leave the bound for k = 0 a hair below 0, and for k = n a hair below 1.
    return min(max(low, 0.0), k / n), max(min(high, 1.0), k / n)


def score(rows: pl.DataFrame | list[dict[str, Any]], questions: list[Question]) -> pl.DataFrame:
    """Add a boolean ``correct`` to rows with ``question_id`` and ``reply``; an unknown question id is an error."""
    df = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows)
    by_id = {q.id: q for q in questions}
    unknown = sorted(set(df["question_id"].to_list()) - by_id.keys())
    if unknown:
        raise ValueError(f"replies to unknown question ids: {unknown}")
    correct = [is_correct(by_id[i], r) for i, r in zip(df["question_id"], df["reply"], strict=True)]
    return df.with_columns(pl.Series("correct", correct, dtype=pl.Boolean))


def accuracy_table(df: pl.DataFrame, by: list[str], z: float = Z95) -> pl.DataFrame:
    """n, correct, accuracy and Wilson bounds per group of [*by, question_id, correct]; null verdicts are not counted.

    Every row counts as an independent trial; repeats of one question are not, so with repeats the interval is narrow.
    """
    table = df.group_by(by).agg(
        pl.col("correct").count().cast(pl.Int64).alias("n"),
        pl.col("correct").sum().cast(pl.Int64).alias("correct"),
    )
    # n = 0 becomes null, so that an empty group gets null accuracy and bounds rather than NaN.
    k, n = pl.col("correct").cast(pl.Float64), pl.when(pl.col("n") > 0).then(pl.col("n").cast(pl.Float64))
    low, high = _wilson(k, n, z)
    return table.with_columns(
        (k / n).alias("accuracy"), low.clip(0.0, k / n).alias("wilson_low"), high.clip(k / n, 1.0).alias("wilson_high")
    ).sort(by)


ANSWER_SCHEMA: dict[str, pl.DataType] = {
    "tool": pl.String, "model": pl.String, "quant": pl.String, "split": pl.String, "status": pl.String,
    "status_reason": pl.String, "question_id": pl.String, "category": pl.String, "reply": pl.String,
    "correct": pl.Boolean, "generated_tokens": pl.Int64, "finish_reason": pl.String, "engine_build": pl.String,
}


def ask_all(engine, questions: list[Question], seed: int, group: dict[str, str]) -> pl.DataFrame:
    """Every question through a started engine, greedy (temperature 0): one scored row per question."""
    build = engine.facts().get("engine_build")
    rows = []
    for q in questions:
        g = engine.generate(q.question, q.max_tokens, 0.0, seed)
        rows.append({**group, "status": "ok", "question_id": q.id, "category": q.category, "reply": g.text,
                     "generated_tokens": g.generated_tokens, "finish_reason": g.finish_reason,
                     "engine_build": build})
    replies = pl.DataFrame(rows, schema={k: v for k, v in ANSWER_SCHEMA.items() if k != "correct"})
    return score(replies, questions).select(list(ANSWER_SCHEMA))


def not_asked(group: dict[str, str], reason: str, status: str = "skipped") -> pl.DataFrame:
    """One row saying the tool could not run here (``skipped``) or its engine failed (``failed``), so that the
    table lists it with the reason."""
    from llmbench.engines.runs import shareable_reason

    return pl.DataFrame([{**group, "status": status, "status_reason": shareable_reason(reason)}], schema=ANSWER_SCHEMA)
