"""A killed driver leaves no local Ray processes behind.

Ray ties its head processes (GCS, raylet) to the driver with the kernel's parent-death signal, but the
raylet's own children (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`, idle workers) only notice that the
raylet is gone by polling, and the agents then spend a minute trying to report that to the dead GCS (Ray
2.60: a fixed 60 s timeout) before they exit. After `kill -9` of the driver they linger as orphans of init.

So a local cluster gets a watchdog: a small process that holds the read end of a pipe whose write end only
the driver has. It notes the driver's descendants every second; when the pipe reaches end-of-file (the
driver is gone, however it ended) it terminates whichever of them are still alive, checking each one's
start time so that a reused process id is never hit. After a normal exit Ray has stopped them already.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys

REFRESH_S = 1.0
GRACE_S = 3.0


def start() -> subprocess.Popen:
    """Start the watchdog of the calling process's local Ray cluster (call it after `ray.init`)."""
    read_end, write_end = os.pipe()  # both non-inheritable: Ray's processes never hold the write end
    try:
        watchdog = subprocess.Popen(
            [sys.executable, "-m", "harness.ray_watchdog", str(os.getpid())], stdin=read_end,
            stdout=subprocess.DEVNULL, start_new_session=True,  # a Ctrl-C in the terminal is for the driver
        )
    finally:
        os.close(read_end)
    # write_end stays open, unused, for the rest of the driver's life: its closing at exit is the signal.
    return watchdog


def _descendants(pid: int, seen: dict[int, float]) -> bool:
    """Add the live descendants of `pid` (with their start times) to `seen`; False once `pid` is gone."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    for child in children:
        if child.pid != os.getpid():
            try:
                seen[child.pid] = child.create_time()
            except psutil.NoSuchProcess:
                continue
    return True


def _end(seen: dict[int, float]) -> None:
    """Terminate, then kill, every recorded process that is still the same process."""
    import psutil

    alive = []
    for pid, started in seen.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == started:
                process.terminate()
                alive.append(process)
        except psutil.NoSuchProcess:
            continue
    _, stubborn = psutil.wait_procs(alive, timeout=GRACE_S)
    for process in stubborn:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue


def watch(driver_pid: int) -> None:
    seen: dict[int, float] = {}
    while _descendants(driver_pid, seen):
        ready, _, _ = select.select([sys.stdin.fileno()], [], [], REFRESH_S)
        if ready and not os.read(sys.stdin.fileno(), 1):
            break  # end of file: the driver has exited
    _end(seen)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
