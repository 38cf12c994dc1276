"""Running the pip-installed ``tritonserver`` (from the ``nvidia-pytriton`` wheel).

The wheel ships the server binary, its shared libraries and one python-backend
stub per Python version. We assemble a backend directory of our own (links to
the wheel's files plus the stub matching the running interpreter) instead of
editing the installed package, put the wheel's libraries on
``LD_LIBRARY_PATH`` and this interpreter's environment on ``PATH``/``PYTHONPATH``
so the backend stub sees the same packages we do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import util as importlib_util
from pathlib import Path

from maskserve.core import signatures as sig
from maskserve.triton.leftovers import group_members, mapped_regions, release_leaked_shm

log = logging.getLogger("maskserve.triton")


class TritonSetupError(RuntimeError):
    """Something the server needs is missing; the message says how to fix it."""


@dataclass(frozen=True)
class TritonDistribution:
    binary: Path
    libs: Path
    python_backend: Path  # folder with libtriton_python.so
    stub: Path


@dataclass(frozen=True)
class TritonOptions:
    model_repository: Path = Path("model_repository")
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    models: tuple[str, ...] = ()
    """The served models to load at start (``signatures.served_name``); empty: the newest exported versions."""
    work_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "maskserve" / "triton")
    log_verbose: int = 0

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @classmethod
    def on_free_ports(cls, model_repository: Path, work_dir: Path, **options: object) -> TritonOptions:
        """A loopback Triton on three free ports (tests and benchmarks run several side by side)."""
        return cls(
            model_repository=model_repository,
            grpc_port=free_port(),
            http_port=free_port(),
            metrics_port=free_port(),
            work_dir=work_dir,
            **options,  # type: ignore[arg-type]
        )


def free_port() -> int:
    """A TCP port free on loopback now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_distribution() -> TritonDistribution:
    spec = importlib_util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonSetupError(
            "Triton Inference Server is not installed: `pip install nvidia-pytriton` "
            "provides the tritonserver binary (scripts/setup.sh installs it)."
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    server = root / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    dist = TritonDistribution(
        binary=server / "bin" / "tritonserver",
        libs=root.parent / "nvidia_pytriton.libs",
        python_backend=server / "backends" / "python",
        stub=server / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    for what, path in (
        ("tritonserver binary", dist.binary),
        ("Triton's libraries", dist.libs),
        ("the python backend", dist.python_backend / "libtriton_python.so"),
        (f"a python-backend stub for Python {version}", dist.stub),
    ):
        if not path.exists():
            raise TritonSetupError(
                f"The nvidia-pytriton wheel at {root} lacks {what} ({path}). "
                "Reinstall it, on a Python version it ships a stub for."
            )
    return dist


STARTUP_VERSIONS = 2
"""Versions loaded at start when none are named: the newest and the one before it (ready to roll back to)."""


def exported_versions(repo: Path) -> list[str]:
    """The versions of which every lifecycle model is exported in ``repo``, oldest first."""
    held = sig.releases(p.name for p in (repo.iterdir() if repo.is_dir() else ()) if (p / "config.pbtxt").is_file())
    return sorted((v for v, models in held.items() if models == set(sig.LIFECYCLE_MODELS)), key=int)


def startup_models(repo: Path, models: tuple[str, ...] = ()) -> tuple[str, ...]:
    """``models``, or the served models of the newest ``STARTUP_VERSIONS`` exported versions."""
    if models:
        return models
    versions = exported_versions(repo)[-STARTUP_VERSIONS:]
    served = []
    for version in versions:
        served += [sig.served_name(model, version) for model in sig.LIFECYCLE_MODELS]
        video = [sig.served_name(model, version) for model in sig.VIDEO_MODELS]
        if all((repo / name / "config.pbtxt").is_file() for name in video):  # exported with its video graphs
            served += video
    return tuple(served)


def check_repository(repo: Path, models: tuple[str, ...]) -> None:
    """Refuse early, with the command to run, when the served ``models`` (``startup_models``) are missing."""
    hint = (
        "Export them first, e.g. `maskserve export --model sam2.1_hiera_tiny "
        f"--random-weights --out {repo}` (or --checkpoint PATH for real weights)."
    )
    if not repo.is_dir():
        raise TritonSetupError(f"Model repository {repo} does not exist. {hint}")
    if not models:
        raise TritonSetupError(f"{repo} holds no exported version of {', '.join(sig.LIFECYCLE_MODELS)}. {hint}")
    for model in models:
        model_dir = repo / model
        if not (model_dir / "config.pbtxt").is_file():
            raise TritonSetupError(f"{model_dir}/config.pbtxt is missing. {hint}")
        if not (model_dir / sig.TRITON_VERSION).is_dir():
            raise TritonSetupError(f"{model_dir} has no exported files. {hint}")


def prepare_backends(dist: TritonDistribution, work_dir: Path) -> Path:
    """A backend directory whose python backend uses this interpreter's stub."""
    backends = work_dir / "backends"
    python_dir = backends / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    links = {
        "libtriton_python.so": dist.python_backend / "libtriton_python.so",
        "triton_python_backend_utils.py": dist.python_backend / "triton_python_backend_utils.py",
        "triton_python_backend_stub": dist.stub,
    }
    for name, target in links.items():
        link = python_dir / name
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        tmp = python_dir / f".{name}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(link)
    return backends


def server_env(dist: TritonDistribution) -> dict[str, str]:
    env = os.environ.copy()
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(dist.libs), env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    site_paths = [p for p in sys.path if p and Path(p).is_dir()]
    env["PYTHONPATH"] = os.pathsep.join(site_paths)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # keep the model repository free of __pycache__
    return env


def server_command(dist: TritonDistribution, opts: TritonOptions, backends: Path, models: tuple[str, ...]) -> list[str]:
    cmd = [
        str(dist.binary),
        f"--model-repository={opts.model_repository.resolve()}",
        f"--backend-directory={backends}",
        "--model-control-mode=explicit",
        f"--grpc-address={opts.host}",
        f"--grpc-port={opts.grpc_port}",
        f"--http-address={opts.host}",
        f"--http-port={opts.http_port}",
        f"--metrics-address={opts.host}",
        f"--metrics-port={opts.metrics_port}",
        "--allow-gpu-metrics=false",
        # our configurations are complete; asking the python backend to complete them starts a stub process
        # per model just for that, and made loading a version 3x slower (benchmarks/README.md, "Releases")
        "--disable-auto-complete-config",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--exit-timeout-secs=30",
        f"--log-verbose={opts.log_verbose}",
        # each stub's shared memory starts big enough for a batch of embeddings
        # (16 MiB each) instead of growing 1 MiB at a time
        "--backend-config=python,shm-default-byte-size=134217728",
        "--backend-config=python,shm-growth-byte-size=67108864",
    ]
    cmd += [f"--load-model={m}" for m in models]
    return cmd


def check_ports_free(opts: TritonOptions) -> None:
    """Refuse to start where something already listens: we would talk to a Triton we do not supervise."""
    for what, port in (("gRPC", opts.grpc_port), ("HTTP", opts.http_port), ("metrics", opts.metrics_port)):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((opts.host, port))
            except OSError as exc:
                raise TritonSetupError(
                    f"Triton's {what} port {opts.host}:{port} is in use ({exc.strerror}): another Triton (perhaps "
                    "one left running by a supervisor that was killed) or another program listens there. "
                    "`maskserve serve` runs and supervises its own Triton and will not use one it did not start: "
                    "stop that process, choose other ports (--triton-grpc-port, --triton-http-port, "
                    "--triton-metrics-port), or use an external Triton with `maskserve frontend --triton-url`."
                ) from None


class TritonServer:
    """One supervised ``tritonserver`` process with its logs forwarded to ours.

    It runs in a session of its own (our signals reach it only through
    ``stop``), and a reaper process (``maskserve.triton.reaper``) ends that
    session if we die without stopping it, so no Triton outlives its supervisor.
    """

    def __init__(self, opts: TritonOptions) -> None:
        self.opts = opts
        self.process: subprocess.Popen[bytes] | None = None
        self.reaper: subprocess.Popen[bytes] | None = None
        self._log_thread: threading.Thread | None = None
        self.models: tuple[str, ...] = ()
        """The served models this start loads (and ``wait_ready`` waits for), chosen once per start."""

    def start(self) -> None:
        dist = find_distribution()
        self.models = startup_models(self.opts.model_repository, self.opts.models)
        check_repository(self.opts.model_repository, self.models)
        check_ports_free(self.opts)
        backends = prepare_backends(dist, self.opts.work_dir)
        cmd = server_command(dist, self.opts, backends, self.models)
        log.info("starting %s", " ".join(cmd))
        env = server_env(dist)
        # OpenVINO keeps each graph it compiles here (keyed by the graph and its settings), so loading a
        # version again (a rollback, a restart) skips the compile
        env["MASKSERVE_COMPILE_CACHE"] = str(self.opts.work_dir / "compiled")
        self.process = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # our signals reach it only through stop()
        )
        self._stop_reaper()
        self.reaper = subprocess.Popen(
            [sys.executable, "-m", "maskserve.triton.reaper", str(os.getpid()), str(self.process.pid)],
            env=server_env(dist),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._log_thread = threading.Thread(target=self._forward_logs, daemon=True)
        self._log_thread.start()

    def _forward_logs(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                log.info("%s", line)

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until every model is READY; raise if the server dies or times out."""
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + timeout
        client = grpcclient.InferenceServerClient(self.opts.grpc_url)
        try:
            while True:
                if self.process is None or self.process.poll() is not None:
                    code = None if self.process is None else self.process.returncode
                    raise TritonSetupError(
                        f"tritonserver exited (code {code}) before its models were ready; see its log above"
                    )
                try:
                    if client.is_server_live() and all(client.is_model_ready(m) for m in self.models):
                        return
                except Exception:  # not listening yet
                    pass
                if time.monotonic() > deadline:
                    raise TritonSetupError(f"models not READY after {timeout:.0f} s")
                time.sleep(0.25)
        finally:
            client.close()

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop in %.0f s; killing it", timeout)
                proc.kill()
                proc.wait()
        if self._log_thread is not None:
            self._log_thread.join(timeout=5)
        self.reap()
        return proc.returncode

    def reap(self) -> None:
        """After the server ended, however it ended: end what it left behind.

        A tritonserver killed with SIGKILL leaves its python-backend stubs running
        (they hold the models' memory) and its shared-memory regions in /dev/shm.
        The stubs are in the server's session (``start_new_session``), so one
        signal to its process group ends them; then every python-backend region
        that no live process maps any more is removed.
        """
        proc = self.process
        if proc is None or proc.poll() is None:
            return
        members = group_members(proc.pid)
        regions = mapped_regions(members)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        release_leaked_shm(only=regions)
        self._stop_reaper()

    def _stop_reaper(self) -> None:
        reaper, self.reaper = self.reaper, None
        if reaper is not None and reaper.poll() is None:
            reaper.kill()
            reaper.wait()

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_forever(opts: TritonOptions) -> int:
    """``maskserve triton``: serve until SIGINT/SIGTERM, then shut down cleanly."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server = TritonServer(opts)
    server.start()
    try:
        server.wait_ready()
        log.info(
            "models READY: %s; gRPC %s, HTTP %s:%d, metrics %s:%d",
            ", ".join(server.models),
            opts.grpc_url,
            opts.host,
            opts.http_port,
            opts.host,
            opts.metrics_port,
        )
        while not stop.is_set():
            if server.process is not None and server.process.poll() is not None:
                log.error("tritonserver exited with code %s", server.process.returncode)
                return 1
            stop.wait(0.5)
        log.info("shutting down")
        return 0
    finally:
        code = server.stop()
        log.info("tritonserver stopped (exit code %s)", code)
