"""Timed runs start on a quiet machine: wait until the 1-minute load average is low, and record it."""

import os
import subprocess
import time
from pathlib import Path

QUIET_LOAD = 0.8
POLL_SECONDS = 30
GIVE_UP_SECONDS = 40 * 60


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_for_quiet(
    *, threshold: float = QUIET_LOAD, poll: float = POLL_SECONDS, give_up: float = GIVE_UP_SECONDS
) -> dict:
    """Block until the 1-minute load average is below `threshold` (or `give_up` seconds have passed)."""
    started = time.monotonic()
    while (load := load_average()) >= threshold and time.monotonic() - started < give_up:
        print(f"load average {load:.2f} >= {threshold}; waiting", flush=True)
        time.sleep(poll)
    return {
        "waited_s": round(time.monotonic() - started),
        "quiet": load < threshold,
        "load_at_start": load,
    }


def environment() -> dict:
    """What a result depends on besides the code: commit, CPUs."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    return {"commit": commit + ("+dirty" if dirty else ""), "cpus": os.cpu_count()}
