"""The files a job's trials read, as its spec names them, and the check that its weights files
load before any trial is started."""

from __future__ import annotations

from automl.errors import SpecError, UserError
from automl.search.spec import JobSpec


def paths_read(spec: JobSpec) -> list[tuple[str, str]]:
    """(field, path) of every file or folder the job's trials read: the spec names no other."""
    out = []
    if not spec.dataset.source.startswith("builtin:"):
        out.append(("dataset.source", spec.dataset.source))
    out.extend(("space.pretrained", value) for value in spec.search_space().pretrained()
               if isinstance(value, str))
    return out


def check_weights(spec: JobSpec) -> None:
    """Each weights file the space names loads as a state dict, or a SpecError naming it.

    Not part of validation, which reads no file: a job file's weights are checked when it is
    loaded, a job sent over HTTP's once its paths are found under the dataset roots (before,
    what the check says would tell what is on the server's disk), and every job's again on its
    driver, so that a bad file fails the job once rather than each of its trials. Once per
    process: a spec whose files were checked is not checked again.
    """
    from workers.model.weights import check_weights_file

    if spec._weights_checked:
        return
    for field, value in paths_read(spec):
        if field == "space.pretrained":
            try:
                check_weights_file(value)
            except UserError as error:
                raise SpecError(f"{field}: {error}") from None
    spec._weights_checked = True
