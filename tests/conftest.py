"""Shared fixtures: an isolated cache directory, tiny generated image datasets."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import write_images

# The suite runs in two pytest-xdist workers (pyproject's addopts). Each gets its own TMPDIR,
# set before anything starts (its Ray included, whose workers inherit it): a test that checks a
# job left nothing in TMPDIR must not see the other worker's running trials.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:
    import tempfile

    _tmp = Path(tempfile.gettempdir()) / f"automl-tests-{_WORKER}-{os.getpid()}"
    _tmp.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(_tmp)
    tempfile.tempdir = None  # read TMPDIR again
    # two workers' trials share 2 cores: one thread each, not two fighting over each core
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import atexit
    import shutil

    atexit.register(shutil.rmtree, _tmp, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Digits and decoded images go to a per-session cache, never the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("automl-cache")
    previous = os.environ.get("AUTOML_CACHE_DIR")
    os.environ["AUTOML_CACHE_DIR"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("AUTOML_CACHE_DIR", None)
    else:
        os.environ["AUTOML_CACHE_DIR"] = previous


@pytest.fixture
def color_folder(tmp_path: Path) -> Path:
    """An ImageFolder tree with two classes (red, blue) of 12 images each."""
    root = tmp_path / "colors"
    write_images(root / "red", 12, (200, 30, 30), seed=1)
    write_images(root / "blue", 12, (30, 30, 200), seed=2)
    return root


@pytest.fixture(scope="session")
def local_ray(isolated_cache: Path) -> Iterator[None]:
    """One real local Ray for the session (2 CPUs), started after the cache dir is set so its
    workers inherit AUTOML_CACHE_DIR."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


PG_DEFAULT = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def pg_schema(label: str) -> Iterator[str]:
    """A database URL whose every table lives in a fresh schema, dropped afterwards."""
    import re
    import uuid

    from sqlalchemy import create_engine, text

    base = os.environ.get("AUTOML_TEST_DATABASE_URL", PG_DEFAULT)
    schema = "t_" + re.sub(r"\W", "_", label)[:40].lower() + "_" + uuid.uuid4().hex[:6]
    admin = create_engine(base, pool_pre_ping=True)  # survives the database-restart test
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    try:
        # tagged, so that the connections a test's engines pool (and keep: engines are cached
        # per URL) end with the test instead of filling PostgreSQL's 100 connection slots
        yield f"{base}{sep}options=-csearch_path%3D{schema}&application_name={schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE application_name = :tag"), {"tag": schema})
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with pg_schema(request.node.name) as url:
        yield url


@pytest.fixture(scope="module")
def pg_module_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with pg_schema(request.module.__name__.rpartition(".")[2]) as url:
        yield url
