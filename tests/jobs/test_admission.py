"""What a job sent over HTTP may name."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from automl.errors import SpecError
from automl.search.spec import parse_spec
from tests.support import MINIMAL_JOB


@given(path=st.text(max_size=40) | st.sampled_from(["/", "/..", "/\x00", "/a/../../b"]),
       uri=st.none() | st.text(max_size=40))
@hypothesis_settings(max_examples=300, deadline=None)
def test_the_http_checks_refuse_by_name_or_pass_never_fail_otherwise(
    tmp_path_factory: pytest.TempPathFactory, path: str, uri: str | None
) -> None:
    """Whatever a spec could hold (checked here without validation's own refusals), the roots
    and the tracking check answer with a SpecError or let it through."""
    from automl.jobs.admission import require_tracking_server, require_under_roots
    from automl.search.spec import JobSpec

    root = tmp_path_factory.getbasetemp().resolve()
    spec = parse_spec(MINIMAL_JOB)
    unchecked = JobSpec.model_construct(**{
        **dict(spec), "dataset": spec.dataset.model_construct(**{**dict(spec.dataset),
                                                                 "source": path}),
        "tracking": spec.tracking.model_construct(**{**dict(spec.tracking), "mlflow": uri})})
    unchecked._space = spec.search_space()
    for check in (lambda: require_under_roots(unchecked, (root,)),
                  lambda: require_under_roots(unchecked, ()),
                  lambda: require_tracking_server(unchecked, "http://mlflow:5000"),
                  lambda: require_tracking_server(unchecked, None)):
        try:
            check()
        except SpecError as error:
            assert str(error).strip()
