"""A pydantic validation error as a user's error: one line per problem, each naming its field,
names and quoted values cut short (the input may be anything a client sent)."""

from __future__ import annotations

import re

from pydantic import ValidationError

MAX_ERRORS = 20  # problems listed of one spec; a spec with more has a bigger one to fix first
MAX_FIELD_PART = 64  # characters of one part of a field's name, in a list of problems


def format_errors(error: ValidationError) -> str:
    """One line per problem, each naming its field; names cut short, at most `MAX_ERRORS`."""
    lines = []
    problems = error.errors()
    for item in problems[:MAX_ERRORS]:
        field = ".".join(field_part(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field; check the spelling (see examples/ for every field)"
        elif item["type"] == "missing":
            message = "required field is missing"
        elif item["type"] == "string_type" and isinstance(item["input"], bool | int | float):
            message += (f", got {item['input']!r} (YAML reads an unquoted yes/no/on/off/true/false "
                        "or number as that type: put the value in quotes)")
        names_itself = re.match(r"(?:\(top level\)|[a-z_.]+)[:=]", message) and (
            not item["loc"] or message.startswith(f"{field}."))
        if names_itself:
            lines.append(f"  {message}")
        else:
            lines.append(f"  {field}: {message}")
    if len(problems) > MAX_ERRORS:
        lines.append(f"  ... and {len(problems) - MAX_ERRORS} more")
    return "\n".join(lines)


def field_part(part: str | int) -> str:
    """One part of a field's name as an error gives it: an unknown key may be any size."""
    text = str(part)
    return text if len(text) <= MAX_FIELD_PART else text[:MAX_FIELD_PART] + "..."


def excerpt(value: str, limit: int = 120) -> str:
    """A value the user gave, quoted for a message and cut to `limit` characters."""
    return repr(value if len(value) <= limit else value[:limit] + "...")
