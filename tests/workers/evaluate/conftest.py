"""One tiny trained checkpoint for the evaluation tests of a session (a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.workers.evaluate.tiny import train_tiny


@pytest.fixture(scope="session")
def checkpoint(isolated_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("tiny-trial"))
