"""Rule params in one canonical form, so that an equal config reruns nothing.

Snakemake records each job's params as the `repr` of every value (`Persistence._serialize_param_builtin`) and,
with its `params` rerun trigger (on by default), reruns a job whose recorded texts differ from today's. A dict's
repr follows its key order, which is the order of the keys in the YAML file: the same study written by a tool that
sorts keys would rerun every job. With the keys of every mapping sorted, at every depth and inside lists, the text
depends on the values alone. Lists and tuples keep their order: the order of prompts or of cloud prices is
meaningful.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any


def canonical(value: Any) -> Any:
    """The value with the keys of every mapping in it sorted (by their repr, so keys of any type sort); mappings
    become plain dicts, lists and tuples keep their order and type, anything else is returned as it is."""
    if isinstance(value, Mapping):
        return {key: canonical(value[key]) for key in sorted(value, key=repr)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    if isinstance(value, tuple):
        return tuple(canonical(item) for item in value)
    return value


def canonical_param(param: Any) -> Any:
    """A rule's param in canonical form: a value is made canonical now; a function (a param computed per job) is
    wrapped so that what it returns is, keeping its signature, which Snakemake reads to know what to pass it."""
    if callable(param):

        @functools.wraps(param)
        def canonical_result(*args: Any, **kwargs: Any) -> Any:
            return canonical(param(*args, **kwargs))

        return canonical_result
    return canonical(param)

