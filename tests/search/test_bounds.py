"""Every value anywhere in a spec stays within bounds: finite, free of control characters."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from automl.errors import SpecError
from automl.search.spec import parse_spec
from tests.support import MINIMAL_JOB


@given(path=st.sampled_from([("budget", "time_limit"), ("budget", "target"), ("space", "lr"),
                             ("space", "weight_decay"), ("strategy", "sampler_options", "x"),
                             ("resources", "cpu"), ("dataset", "val_fraction")]),
       value=st.sampled_from([float("nan"), float("inf"), float("-inf")]))
def test_a_non_finite_number_anywhere_is_refused_by_name(path: tuple[str, ...], value: float) -> None:
    payload: dict[str, Any] = {**MINIMAL_JOB, "dataset": dict(MINIMAL_JOB["dataset"])}
    node = payload
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(SpecError) as caught:
        parse_spec({"name": "t", **{k: v for k, v in payload.items() if k != "name"}})
    message = str(caught.value)
    assert ".".join(path[:2]) in message, message


CONTROL = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.sampled_from(
    ["\x7f", "\x85", "\x9f"])


STRING_FIELDS = [("dataset", "source"), ("dataset", "image_column"), ("dataset", "label_column"),
                 ("tracking", "mlflow"), ("tracking", "experiment"), ("name",),
                 ("space", "backbone"), ("space", "pretrained"), ("strategy", "sampler_options", "x")]


@given(path=st.sampled_from(STRING_FIELDS), before=st.text(max_size=20),
       control=CONTROL, after=st.text(max_size=20))
@hypothesis_settings(max_examples=200, deadline=None)
def test_a_control_character_in_any_string_is_refused_by_name(
    path: tuple[str, ...], before: str, control: str, after: str
) -> None:
    """A NUL in a path reached `Path.resolve()` (a 500 over HTTP); every string of a spec is
    refused at validation with its field, never another exception."""
    payload: dict[str, Any] = {**MINIMAL_JOB, "dataset": dict(MINIMAL_JOB["dataset"])}
    node = payload
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = before + control + after
    with pytest.raises(SpecError) as caught:
        parse_spec(payload)
    message = str(caught.value)
    assert "holds a control character" in message, message
    assert ".".join(path) in message.replace(": a key", ""), message
