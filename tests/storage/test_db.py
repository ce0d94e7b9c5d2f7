"""The jobs database's schema (storage/db.py `migrate`): checked once per process, upgraded
only when behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sqlalchemy import event

from storage.db import engine_for
from storage.jobs import JobStore

# what a process that only reads jobs runs: its statements, as SQLAlchemy sends them
LIST_JOBS = """
import json, sys
from sqlalchemy import event
from storage.db import engine_for
from storage.jobs import JobStore

statements = []
event.listen(engine_for(sys.argv[1]), "before_cursor_execute",
             lambda _c, _cursor, statement, *_: statements.append(statement))
JobStore(sys.argv[1]).list_jobs(None, 10, 0)
print(json.dumps(statements))
"""
WRITES = ("CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE")


def test_the_schema_is_checked_once_per_process_and_migrated_only_when_behind(pg_url: str) -> None:
    statements: list[str] = []
    event.listen(engine_for(pg_url), "before_cursor_execute",
                 lambda _c, _cursor, statement, *_: statements.append(statement))
    JobStore(pg_url)  # a fresh schema: migrated
    assert any(s.lstrip().upper().startswith("CREATE TABLE") for s in statements)
    migrated = len(statements)
    JobStore(pg_url)
    JobStore(pg_url)
    assert len(statements) == migrated  # checked once in this process: not even read again

    listed = subprocess.run([sys.executable, "-c", LIST_JOBS, pg_url], capture_output=True,
                            text=True, check=True, env={**os.environ}, timeout=120)
    another = json.loads(listed.stdout)
    writes = [s for s in another if s.lstrip().upper().startswith(WRITES) or "advisory" in s]
    assert another and writes == []  # at head: its revision read, nothing locked or written
