"""Sampler and pruner options: the keywords of the chosen Optuna class's constructor that take
a plain value (a count, a weight, a flag, a name), within bounds.

Read from the constructor's signature, so a new Optuna keyword is an option without a line
here: a callable or a sampler cannot come from JSON, and the job sets the seed itself.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from automl.search.bounds import MAX_OPTION, MAX_OPTION_TEXT

_PLAIN = {"int": int, "float": float, "bool": bool, "str": str, "None": type(None)}
_SET_BY_THE_JOB = {"seed"}  # strategy.seed


def options_problem(field: str, kind: str, constructor: type, options: dict[str, Any]
                    ) -> str | None:
    """Why `options` (the spec's `strategy.<field>`) cannot go to `constructor` (the `kind`
    sampler or pruner) as keywords; None: they can."""
    takes = plain_keywords(constructor)
    for name, value in options.items():
        if name not in takes:
            offered = ", ".join(sorted(takes)) or "none"
            return (f"strategy.{field}.{name}: not an option of the {kind} "
                    f"{field.split('_')[0]}; it takes {offered}")
        problem = option_problem(value, takes[name])
        if problem:
            return f"strategy.{field}.{name}: {problem}"
    return None


@functools.cache
def plain_keywords(kind: type) -> dict[str, tuple[type, ...]]:
    """A constructor's keywords whose annotation is only plain types, with those types."""
    out = {}
    for name, parameter in inspect.signature(kind).parameters.items():
        if name in _SET_BY_THE_JOB or parameter.kind in (parameter.VAR_KEYWORD,
                                                         parameter.VAR_POSITIONAL):
            continue
        annotation = parameter.annotation
        words = [w.strip() for w in (annotation if isinstance(annotation, str)
                                     else getattr(annotation, "__name__", "?")).split("|")]
        if words and all(w in _PLAIN for w in words):
            out[name] = tuple(_PLAIN[w] for w in words)
    return out


def option_problem(value: Any, types: tuple[type, ...]) -> str | None:
    """Why `value` cannot be an option of these plain types (None: it can)."""
    wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
    if isinstance(value, bool):
        fits = bool in types
    elif isinstance(value, int):
        fits = int in types or float in types
    else:
        fits = isinstance(value, tuple(t for t in types if t is not bool))
    if not fits:
        kind = {bool: "true/false", int: "whole number", float: "number", str: "string",
                list: "list", dict: "mapping"}.get(type(value), type(value).__name__)
        return f"takes {wanted}, not a {kind}"
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > MAX_OPTION:
        return f"{value:g} is beyond +-{MAX_OPTION:,}; give a smaller value"
    if isinstance(value, str) and len(value) > MAX_OPTION_TEXT:
        return f"a string of {len(value):,} characters (at most {MAX_OPTION_TEXT})"
    return None
