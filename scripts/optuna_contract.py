"""Optuna's own storage and pruner tests, run against this project's storage and pruners.

    .venv/bin/python scripts/optuna_contract.py [--postgres URL] [-- PYTEST_ARGS...]

`TrialCache` (storage/optuna_storage.py) and the fast pruners (automl/search/_optuna.py) replace parts
of Optuna with cheaper code that must keep Optuna's contract: what Optuna's storage test suite
(`optuna.testing.pytest_storages.StorageTestCase`, run by tests/storages_tests/test_storages.py)
and its pruner tests check. Those tests ship in the sdist of the installed Optuna version, not in
its wheel; the sdist is downloaded once into ~/.cache/automl/optuna-sdist and its tests run
unchanged. This file is also the pytest plugin (`-p optuna_contract`) that points them at ours:

* storage: Optuna's tests build each storage with `optuna.testing.storages.StorageSupplier(mode)`,
  for each mode of `STORAGE_MODES`. The plugin narrows `STORAGE_MODES` to one extra mode,
  `automl_sqlite` or `automl_postgres`, for which the supplier returns `optuna_storage(url)`
  (a fresh SQLite file, or a fresh PostgreSQL schema dropped afterwards). Optuna's own modes are
  Optuna's concern and are not run.
* pruners: `optuna.pruners.SuccessiveHalvingPruner` and `optuna.pruners.HyperbandPruner` are
  replaced by `FastSuccessiveHalvingPruner` and `FastHyperbandPruner`, so every test that
  constructs Optuna's gets ours (and `mock.patch("optuna.pruners.HyperbandPruner...")` patches
  ours). Hyperband's per-bracket pruners stay Optuna's own, as in a job. The pruner tests run
  three times: on Optuna's in-memory storage (what they create; ours take Optuna's path there,
  as in the replay benchmark), and with a study created without a storage getting
  `optuna_storage(url)` on SQLite and on PostgreSQL, where the fast pruner asks the database.

Not run, as not part of the contract of `optuna_storage(url)`: tests/storages_tests/
test_heartbeat.py (Optuna's heartbeat is an RDBStorage option that `optuna_storage` does not
offer; jobs keep their own heartbeat), rdb_tests/ (RDBStorage itself, which `TrialCache` wraps
unchanged) and test_cached_storage.py (Optuna's `_CachedStorage` class itself: it checks which
RDBStorage method each write calls, where `TrialCache` writes with one statement of its own by
design; what those writes store is checked by test_storages.py here and tests/storage/
test_trial_cache.py).

`optuna.testing.storages` imports `fakeredis` (for Optuna's Redis mode, not run here); when it is
not installed the plugin puts an empty stand-in in its place rather than install it into the
project's environment.

The summary lists passed/failed/skipped per file and run; the exit status is 0 only if nothing
failed. A developer tool, not part of `make test` (it takes a few minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import types
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "automl" / "optuna-sdist"
STORAGE_FILES = ("tests/storages_tests/test_storages.py",)
PRUNER_FILES = ("tests/pruners_tests/test_successive_halving.py", "tests/pruners_tests/test_hyperband.py")
# a test that hangs fails instead (a bracket view that let `optimize` through ran it forever)
TIMEOUT_S = 120

# set by main() for the pytest run it starts; the plugin reads them
MODE_ENV = "AUTOML_CONTRACT_MODE"  # inmemory, sqlite or postgres
POSTGRES_ENV = "AUTOML_CONTRACT_POSTGRES"
REPORT_ENV = "AUTOML_CONTRACT_REPORT"


# ---------------------------------------------------------------- the command


def sdist_tests(version: str) -> Path:
    """The extracted sdist of Optuna `version` (its tests/ inside), downloaded on first use."""
    folder = CACHE / f"optuna-{version}"
    if (folder / "tests" / "storages_tests").is_dir():
        return folder
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as download:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"optuna=={version}", "--no-binary", ":all:",
             "--no-deps", "-d", download],
            check=True,
        )
        (archive,) = Path(download).glob("optuna-*.tar.gz")
        with tempfile.TemporaryDirectory(dir=CACHE) as unpacked:
            with tarfile.open(archive) as tar:
                tar.extractall(unpacked, filter="data")
            (Path(unpacked) / f"optuna-{version}").rename(folder)
    return folder


def run_pytest(
    sdist: Path, mode: str, files: tuple[str, ...], postgres: str | None, extra: list[str]
) -> dict[str, Counter[str]]:
    """One pytest run of `files` in `mode`; outcomes counted per file."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as report:
        report_path = Path(report.name)
    env = dict(os.environ)
    env[MODE_ENV] = mode
    env[REPORT_ENV] = str(report_path)
    if postgres:
        env[POSTGRES_ENV] = postgres
    # this project and this plugin importable
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "scripts"), str(ROOT)])
    # -P: not the sdist's own copy of optuna (the working directory), the installed one
    command = [sys.executable, "-P", "-m", "pytest", "-p", "optuna_contract", "-p", "no:cacheprovider",
               "--import-mode=importlib", "-q", "--color=no", f"--timeout={TIMEOUT_S}", *files, *extra]
    print(f"\n== {mode}: {' '.join(command[4:])}", flush=True)
    subprocess.run(command, cwd=sdist, env=env, check=False)
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    try:
        for nodeid, outcome in json.loads(report_path.read_text() or "{}").items():
            outcomes[nodeid.split("::")[0]][outcome] += 1
    finally:
        report_path.unlink(missing_ok=True)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", metavar="URL",
                        help="also run on PostgreSQL (each test in a fresh schema of this database)")
    parser.add_argument("pytest_args", nargs="*", help="passed on to pytest (after --)")
    args = parser.parse_args(argv)

    import optuna

    sdist = sdist_tests(optuna.__version__)
    runs: list[tuple[str, tuple[str, ...]]] = [("inmemory", PRUNER_FILES),
                                                ("sqlite", STORAGE_FILES + PRUNER_FILES)]
    if args.postgres:
        runs.append(("postgres", STORAGE_FILES + PRUNER_FILES))
    results = {mode: run_pytest(sdist, mode, files, args.postgres, args.pytest_args)
               for mode, files in runs}

    print(f"\nOptuna {optuna.__version__}'s tests against this project's storage and pruners")
    failed = 0
    for mode, files in runs:
        for file in files:
            counts = results[mode].get(file, Counter())
            failed += counts["failed"] + counts["error"]
            line = ", ".join(f"{counts[k]} {k}" for k in ("passed", "failed", "error", "skipped")
                             if counts[k] or k in ("passed", "failed"))
            print(f"  {mode:9} {file:48} {line}")
        if not results[mode]:
            failed += 1
            print(f"  {mode:9} no test ran (see pytest's output above)")
    return 1 if failed else 0


# ---------------------------------------------------------------- the pytest plugin


def _mode() -> str:
    return os.environ.get(MODE_ENV, "inmemory")


def _stand_in_fakeredis() -> None:
    try:
        import fakeredis  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("fakeredis")

        class FakeStrictRedis:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                raise RuntimeError("fakeredis is not installed: Optuna's Redis mode is not run here")

        stand_in.FakeStrictRedis = FakeStrictRedis  # type: ignore[attr-defined]
        sys.modules["fakeredis"] = stand_in


@contextlib.contextmanager
def _database_url(mode: str) -> Iterator[str]:
    """A URL of an empty database: a new SQLite file, or a new PostgreSQL schema (dropped after)."""
    if mode == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/optuna.db"
        return
    from sqlalchemy import create_engine, text

    base = os.environ[POSTGRES_ENV]
    schema = f"optuna_contract_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        separator = "&" if "?" in base else "?"
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def _ours(mode: str) -> tuple[Any, contextlib.ExitStack]:
    """`optuna_storage(url)` on a fresh database, and what disposes of both."""
    from storage.optuna_storage import TrialCache, optuna_storage

    stack = contextlib.ExitStack()
    url = stack.enter_context(_database_url(mode))
    storage = optuna_storage(url, retry_seconds=5)
    assert isinstance(storage, TrialCache)
    stack.callback(storage._backend.engine.dispose)
    return storage, stack


def pytest_configure(config: pytest.Config) -> None:
    mode = _mode()
    if mode == "postgres" and not os.environ.get(POSTGRES_ENV):
        raise pytest.UsageError(f"{MODE_ENV}=postgres needs {POSTGRES_ENV}")
    _stand_in_fakeredis()

    import optuna
    import optuna.testing.storages as supplied

    from automl.search.strategy import FastHyperbandPruner, FastSuccessiveHalvingPruner

    optuna.pruners.SuccessiveHalvingPruner = FastSuccessiveHalvingPruner  # type: ignore[misc]
    optuna.pruners.HyperbandPruner = FastHyperbandPruner  # type: ignore[misc, assignment]
    if mode == "inmemory":
        return
    ours = f"automl_{mode}"
    # test modules read this list when they are collected, after this hook
    supplied.STORAGE_MODES[:] = [ours]
    supplier = supplied.StorageSupplier
    enter, leave = supplier.__enter__, supplier.__exit__

    def __enter__(self: Any) -> Any:
        if self.storage_specifier != ours:
            return enter(self)
        if self.extra_args:
            pytest.skip(f"optuna_storage(url) takes no RDBStorage options ({sorted(self.extra_args)})")
        self.storage, self._automl_stack = _ours(mode)
        return self.storage

    def __exit__(self: Any, *exc: Any) -> None:
        stack = getattr(self, "_automl_stack", None)
        if stack is None:
            leave(self, *exc)
        else:
            stack.close()

    supplier.__enter__ = __enter__  # type: ignore[method-assign]
    supplier.__exit__ = __exit__  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _pruner_studies_on_our_storage(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """In the database modes, a pruner test's study made without a storage gets ours."""
    mode = _mode()
    if mode == "inmemory" or "pruners_tests" not in Path(str(request.node.path)).parts:
        yield
        return
    import optuna

    get_storage = optuna.storages.get_storage
    with contextlib.ExitStack() as cleanup:

        def fresh_or_given(storage: Any) -> Any:
            if storage is not None:
                return get_storage(storage)
            ours, stack = _ours(mode)
            cleanup.push(stack)
            return ours

        monkeypatch.setattr(optuna.storages, "get_storage", fresh_or_given)
        yield


_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        _outcomes[report.nodeid] = "failed" if report.when == "call" else "error"
    elif report.skipped:
        _outcomes.setdefault(report.nodeid, "skipped")
    elif report.when == "call":
        _outcomes.setdefault(report.nodeid, "passed")


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get(REPORT_ENV)
    if path:
        # a test's nodeid names its file relative to the rootdir: the sdist
        Path(path).write_text(json.dumps({re.sub(r"^\./", "", k): v for k, v in _outcomes.items()}))


if __name__ == "__main__":
    sys.exit(main())
