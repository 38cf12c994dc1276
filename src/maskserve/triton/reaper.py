"""The embedded Triton's reaper: a small process that ends Triton's process group when its supervisor dies.

``maskserve serve`` starts ``tritonserver`` in a session of its own, and this
process beside it (``TritonServer.start``). It watches its parent: when the
supervisor is gone, however it went (a SIGKILL, a crash, the OOM killer), the
reaper is reparented, and it kills the whole group (the server and its
python-backend stubs), frees their shared memory, and exits. It also exits
when the group is gone. It watches its parent's pid rather than relying on
``PR_SET_PDEATHSIG``, which follows the thread that started a child, and
the supervisor starts Triton from a worker thread.

    python -m maskserve.triton.reaper SUPERVISOR_PID TRITON_PGID
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

POLL_S = 0.2


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        pass
    return True


def watch(supervisor: int, pgid: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the supervisor is not ours
    while True:
        if os.getppid() != supervisor:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            from maskserve.triton.leftovers import release_leaked_shm

            release_leaked_shm(min_age_s=0.0)
            return 0
        if not group_alive(pgid):
            return 0
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(watch(int(sys.argv[1]), int(sys.argv[2])))
