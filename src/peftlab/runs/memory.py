"""Peak resident memory, measured per job: sequential sweeps run every job in one process."""

from __future__ import annotations

import ctypes
import re
import resource
import sys
from pathlib import Path

_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak_rss() -> bool:
    """Start a new peak-memory measurement: on Linux the kernel's high-water mark (VmHWM) is reset
    to the current resident size, so that each job of a sequential sweep, which shares one process
    with the jobs before it, reports its own peak. Returns False where that is not possible."""
    try:  # first hand freed heap memory back to the system, so earlier jobs' garbage is not counted
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory in MiB since the last ``reset_peak_rss`` (or since the process began)."""
    try:
        found = re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text())
        if found:
            return int(found.group(1)) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
