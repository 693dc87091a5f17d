"""Stops the Ray processes a driver started if the driver dies without shutting them down.

``ray.init()`` on this machine (``--address local``) starts a raylet, a GCS server and agents.
A driver that exits normally stops them; one killed with SIGKILL cannot, and some of them
(the dashboard and runtime-env agents) then live on. ``watch(pids)`` starts this module as a
small process of its own that waits for the driver and, once it is gone, kills those
processes and everything they started. Linux only (it reads ``/proc``); elsewhere it does nothing.

    python -m modtrain.reaper DRIVER_PID PID...
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from modtrain.io import pid_alive

PROC = Path("/proc")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2:].split()[1])  # the command may hold spaces and ')'
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def watch(pids: list[int]) -> subprocess.Popen | None:
    """Start a reaper for this process's ``pids`` (the Ray processes it started)."""
    if not PROC.is_dir() or not pids:
        return None
    return subprocess.Popen([sys.executable, "-m", "modtrain.reaper", str(os.getpid()), *map(str, pids)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def main(argv: list[str]) -> None:
    driver, pids = int(argv[0]), [int(p) for p in argv[1:]]
    while pid_alive(driver):
        if not any(pid_alive(p) for p in pids):
            return  # Ray was shut down the normal way
        time.sleep(0.5)
    doomed = {q for p in pids if pid_alive(p) for q in (p, *descendants(p))}
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


if __name__ == "__main__":
    main(sys.argv[1:])
