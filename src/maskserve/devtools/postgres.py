"""A real PostgreSQL server for tests and benchmarks: a throw-away cluster on loopback (Debian's binaries)."""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from maskserve.triton.server import free_port


class PostgresCluster:
    """A real PostgreSQL server on loopback, in a throw-away cluster (Debian's binaries)."""

    def __init__(self) -> None:
        self.url = ""
        self._stop: list[str] = []
        self._start: list[str] = []

    @staticmethod
    def bindir() -> Path | None:
        found = shutil.which("pg_ctl")
        if found:
            return Path(os.path.realpath(found)).parent
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        return Path(candidates[-1]) if candidates else None

    def start(self) -> PostgresCluster:
        bindir = self.bindir()
        if bindir is None:
            raise FileNotFoundError(
                "PostgreSQL is not installed: scripts/setup.sh installs Debian's postgresql package"
            )
        root = Path(tempfile.mkdtemp(prefix="maskserve-pg-"))
        run_as: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            user = pwd.getpwnam("postgres")
            os.chmod(root, 0o755)
            os.chown(root, user.pw_uid, user.pw_gid)
            run_as = ["runuser", "-u", "postgres", "--"]
        data, port = root / "data", free_port()
        subprocess.run(
            [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "maskserve", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off"
        pg_ctl = [*run_as, str(bindir / "pg_ctl"), "-D", str(data)]
        self._start = [*pg_ctl, "-w", "-l", str(root / "log"), "-o", options, "start"]
        subprocess.run(self._start, check=True, capture_output=True)
        self._stop = [*pg_ctl, "-m", "fast", "stop"]
        self.url = f"postgresql://maskserve@127.0.0.1:{port}"
        return self

    def create_database(self, name: str) -> str:
        """A new, empty database; → its URL."""

        import asyncpg

        async def create() -> None:
            conn = await asyncpg.connect(f"{self.url}/postgres")
            await conn.execute(f"CREATE DATABASE {name}")
            await conn.close()

        asyncio.run(create())
        return f"{self.url}/{name}"

    def halt(self) -> None:
        """Stop the server (fast: clients are disconnected, open transactions roll back); ``resume`` starts it."""
        subprocess.run(self._stop, check=True, capture_output=True)

    def resume(self) -> None:
        subprocess.run(self._start, check=True, capture_output=True)

    def stop(self) -> None:

        if self._stop:
            subprocess.run(self._stop, capture_output=True)
