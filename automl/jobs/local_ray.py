"""A local Ray that lives exactly as long as the process that started it.

A runner with no `AUTOML_RAY_ADDRESS` starts its own Ray. Started in the runner's own process,
part of it outlives a runner killed with SIGKILL: Ray ties its GCS and raylet to their parent
(PR_SET_PDEATHSIG), but the agents the raylet starts (`ray::DashboardAgent`,
`ray::RuntimeEnvAgent`) ignore SIGTERM and are orphaned, holding ports and memory forever.

So the runner starts Ray through this keeper process instead. The keeper is a child subreaper
(orphans of its descendants become its children, not init's), starts Ray, prints the address,
and waits for its standard input to close: that happens however the runner ends, SIGKILL
included, because the kernel closes the runner's end of the pipe. Then it shuts Ray down and
kills whatever is left below it. Ctrl-C is the runner's to handle; the keeper ignores it.

    python -m automl.jobs.local_ray      (stdin: a pipe from the owner; stdout: the GCS address)
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def die_with_parent() -> None:
    """For a child process: SIGKILL when the process that started it ends (Linux)."""
    if sys.platform.startswith("linux"):
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (children before grandchildren)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:  # gone meanwhile
            continue
        # the command name is in parentheses and may hold spaces; ppid follows the state
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        for child in parents.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def _kill_descendants() -> None:
    for _ in range(50):
        left = descendants(os.getpid())
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap_children()
        time.sleep(0.1)


def _reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def own_ray_auth(address: str | None) -> None:
    """A Ray cluster automl starts itself keeps Ray's default, token authentication, but chosen
    explicitly, which spares every run Ray's warning about that default. Ray reads the mode once,
    when it is imported, so this must come first in a process that starts or connects to a
    local Ray (set later, it cannot reach its own cluster: "InvalidAuthToken ... RAY_AUTH_MODE
    is currently 'disabled'"); the processes it starts inherit it. A cluster at an address is
    left as its owner set it up."""
    if address in (None, "local") and "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def main() -> None:
    if sys.platform.startswith("linux"):
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    own_ray_auth(None)  # the owner's choice, inherited; else the same default, said explicitly
    import ray

    try:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        print(ray.get_runtime_context().gcs_address, flush=True)
        sys.stdin.buffer.read()  # returns once the owner is gone, however it ended
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        _kill_descendants()


def _start_keeper() -> tuple[subprocess.Popen[bytes], str]:
    # its own session: a signal to the caller's process group (Ctrl-C, a killpg) must not end
    # it before it has cleaned up; the pipe alone says when
    keeper = subprocess.Popen(
        [sys.executable, "-m", "automl.jobs.local_ray"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, start_new_session=True,
    )
    assert keeper.stdout is not None
    address = keeper.stdout.readline().decode().strip()
    if not address:
        raise RuntimeError(f"the local Ray did not start (exit code {keeper.wait()})")
    return keeper, address


def _stop_keeper(keeper: subprocess.Popen[bytes]) -> None:
    assert keeper.stdin is not None
    keeper.stdin.close()
    try:
        keeper.wait(timeout=60)
    except subprocess.TimeoutExpired:
        keeper.kill()


@contextlib.contextmanager
def local_ray() -> Iterator[str]:
    """Start a keeper; yields the GCS address of its Ray, which ends with the block (or with
    the caller, however it ends)."""
    keeper, address = _start_keeper()
    try:
        yield address
    finally:
        _stop_keeper(keeper)


_KEEPER: subprocess.Popen[bytes] | None = None  # this process's own, for its whole life
_ADDRESS = ""


def connect_local_ray() -> str:
    """The GCS address of a local Ray that ends with this process, started on first use."""
    if "RAY_AUTH_MODE" not in os.environ:  # Ray, imported without it, could not connect
        raise RuntimeError("connect_local_ray: call own_ray_auth(None) before Ray is imported")
    global _KEEPER, _ADDRESS
    if _KEEPER is None or _KEEPER.poll() is not None:
        _KEEPER, _ADDRESS = _start_keeper()
    return _ADDRESS


if __name__ == "__main__":
    main()
