"""The bounds a job spec's data stays within, anywhere in it, and the check against them.

A spec is a few KB of names, numbers and paths; these bounds are far above any real one and
far below what would stall a validator, a JSON column or the file system.
"""

from __future__ import annotations

import math
import re
from typing import Any

MAX_STRING = 4096  # longer than any path or timm name; a spec is a few KB
MAX_ITEMS = 1000  # choices in one list, keys in one mapping
MAX_KEY = 200  # characters of one mapping key: far longer than any field or option name
MAX_DEPTH = 32  # levels of nesting: a spec has four or five
MAX_VALUES = 100_000  # values a YAML spec stands for, aliases expanded: a spec has a few hundred
MAX_TIME_LIMIT = 365 * 86400.0
MAX_OPTION = 10_000  # |x| of a sampler or pruner option: far above any useful count or weight
MAX_OPTION_TEXT = 64  # characters of a string option ("auto", a restart strategy's name)
# C0, DEL and C1: no path, URI, name or choice has one, and a NUL cannot reach the file system
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def first_unfit(value: Any, where: str, depth: int = 0) -> str | None:
    """The first value a spec may not hold, as `field: problem`; None when all are fine. The
    field is named in at most `MAX_KEY` characters, and no value is quoted."""
    name = _field(where)
    if depth > MAX_DEPTH:
        return f"{name}: nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name}: {value} is not a finite number; give a finite value"
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            return f"{name}: a string of {len(value):,} characters (at most {MAX_STRING:,})"
        return _control_character(name, value)
    if isinstance(value, dict | list) and len(value) > MAX_ITEMS:
        return f"{name}: {len(value):,} entries (at most {MAX_ITEMS:,})"
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                if len(key) > MAX_KEY:
                    return f"{name}: a key of {len(key):,} characters (at most {MAX_KEY})"
                if (problem := _control_character(f"{name}: a key", key)) is not None:
                    return problem
            found = first_unfit(item, f"{where}.{key}" if where else str(key), depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = first_unfit(item, f"{name}[{index}]", depth + 1)
            if found is not None:
                return found
    return None


def _control_character(name: str, text: str) -> str | None:
    found = _CONTROL.search(text)
    if found is None:
        return None
    return (f"{name}{'' if name.endswith(': a key') else ':'} holds a control character "
            f"(U+{ord(found.group()):04X}, character {found.start() + 1}); no path, URI or name "
            "has one: remove it")


def _field(where: str) -> str:
    """A field's dotted name for a message, cut to `MAX_KEY` characters."""
    if not where:
        return "(top level)"
    return where if len(where) <= MAX_KEY else where[:MAX_KEY] + "..."
