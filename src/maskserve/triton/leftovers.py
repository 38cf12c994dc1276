"""What a python-backend Triton leaves behind when it dies: its process group's members and its shared-memory
regions in /dev/shm (the supervisor and the reaper clean both up)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"


def mapped_regions(pids: list[str] | None = None) -> set[str]:
    """The python-backend regions these processes (default: all) map."""
    names: set[str] = set()
    for pid in pids if pids is not None else [p.name for p in Path("/proc").glob("[0-9]*")]:
        with contextlib.suppress(OSError):
            lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
            names.update(line.rsplit("/", 1)[-1].split()[0] for line in lines if SHM_PREFIX in line)
    return names


def group_members(pgid: int) -> list[str]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":  # a zombie holds no memory any more
                members.append(stat.parent.name)
    return members


def release_leaked_shm(only: set[str] | None = None, min_age_s: float = 30.0) -> int:
    """Remove python-backend shared-memory regions that no live process maps; → how many.

    ``only``: just these regions (those of a server that just ended), whatever their age.
    Otherwise a region younger than ``min_age_s`` is kept: a server starting now may not have
    mapped it yet.
    """
    if not SHM_DIR.is_dir():
        return 0
    mapped = mapped_regions()
    removed = 0
    now = time.time()
    for region in SHM_DIR.glob(SHM_PREFIX + "*"):
        with contextlib.suppress(OSError):
            if region.name in mapped:
                continue
            if (only is not None and region.name in only) or (
                only is None and now - region.stat().st_mtime > min_age_s
            ):
                region.unlink()
                removed += 1
    return removed
