"""The driver's heartbeat (automl/jobs/heartbeat.py), on its own in a process as a driver runs
it: a beat that never returns stops the job as failing beats do."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from storage.jobs import JobStore
from tests.support import wait_for

HEARTBEAT_ONLY = """
import sys, time
from automl.jobs.heartbeat import Heartbeat, give_up_seconds
from automl.settings import Settings
from storage.jobs import JobStore
from storage.optuna_storage import optuna_storage

settings = Settings()
beat = Heartbeat(JobStore(settings.storage_url), optuna_storage(settings.storage_url),
                 sys.argv[1], int(sys.argv[2]), give_up_seconds(settings))
beat.start()
try:
    while True:
        time.sleep(0.1)
except KeyboardInterrupt:  # how the heartbeat stops a driver
    print(time.monotonic(), "stopped:", beat.lost, flush=True)  # the exit itself takes seconds
    sys.exit(75)
"""


def test_a_driver_whose_heartbeat_write_hangs_stops_before_another_runner_may_take_over(
    pg_url: str
) -> None:
    """Another transaction holds the job's row, so a heartbeat's UPDATE waits for it, with no
    end of its own: the driver's heartbeat (here on its own, as the driver runs it) stops the
    job all the same, half the stale window after its last written beat, as when writes fail."""
    from sqlalchemy import create_engine, text

    stale_after = 12.0
    store = JobStore(pg_url)
    store.submit("hung-beat", "hung-beat", {}, state="running")
    first_beat = store.get("hung-beat").heartbeat_at
    env = {**os.environ, "AUTOML_DATABASE_URL": pg_url, "AUTOML_STALE_AFTER": str(stale_after)}
    beating = subprocess.Popen([sys.executable, "-c", HEARTBEAT_ONLY, "hung-beat", "0"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    engine = create_engine(pg_url)
    try:
        wait_for(lambda: store.get("hung-beat").heartbeat_at != first_beat, 120, "a heartbeat")
        with engine.connect() as holder:
            holder.execute(text("SELECT id FROM automl_jobs WHERE id = 'hung-beat' FOR UPDATE"))
            locked_at = time.monotonic()  # one clock for every process on the machine
            output = beating.communicate(timeout=stale_after * 2)[0]
            holder.rollback()
    finally:
        beating.kill()
        engine.dispose()
    assert beating.returncode == 75, output
    stopped = next(line for line in output.splitlines() if " stopped: " in line)
    stopped_after = float(stopped.split()[0]) - locked_at
    assert stale_after / 2 - 2 < stopped_after < stale_after / 2 + 2, stopped_after
    assert "stopped: no heartbeat could be written for 6 s (the last write did not return" in (
        stopped), output
