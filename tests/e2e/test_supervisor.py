"""The supervisor owns its children: a SIGKILLed ``maskserve serve`` takes its Triton and the python-backend
stubs with it, and a ``serve`` never uses a Triton (or anything else) that already holds its ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from maskserve.triton.leftovers import group_members
from tests.plugins.stack import Served


def test_a_killed_supervisor_leaves_no_triton_behind(exported_repo, tmp_path, report):
    served = Served(exported_repo, tmp_path)
    try:
        triton = served.triton_pid()
        group = group_members(triton)
        assert len(group) >= 2, group  # the server and its stubs
        os.kill(served.proc.pid, signal.SIGKILL)  # the supervisor alone: no goodbye
        served.proc.wait()
        killed = time.monotonic()
        while group_members(triton) and time.monotonic() - killed < 15:
            time.sleep(0.05)
        gone = time.monotonic() - killed
        assert not group_members(triton), f"left running: {group_members(triton)}"
        with socket.socket() as sock:  # its ports are free for the next supervisor
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", served.triton_grpc_port))
        report(
            f"supervisor: `maskserve serve` SIGKILLed; its tritonserver and {len(group) - 1} stubs gone "
            f"{gone:.2f} s later"
        )
    finally:
        served.stop()


def test_serve_refuses_a_triton_port_that_is_taken(exported_repo, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "maskserve.cli",
                "serve",
                "--data-dir",
                str(tmp_path / "data"),
                "--model-repository",
                str(exported_repo),
                "--triton-grpc-port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HOME": str(tmp_path)},
        )
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"Triton's gRPC port 127.0.0.1:{port} is in use" in out.stderr
    assert "will not use one it did not start" in out.stderr
