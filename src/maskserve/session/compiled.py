"""OpenVINO's compiled graphs for the ``cpu`` target, cached beside the version they belong to.

Compiling a graph for this CPU takes seconds (SAM 2.1 tiny's encoder about 2 s, its decoder
about 1 s on a 2-core machine, more on shared cores), and loading a version that was compiled
before takes a fraction of that. The export compiles each OpenVINO graph once into
``<version dir>/compiled/`` (``precompile``), so the first load of a new version, the moment a
promote waits for, reads the compiled graph instead of building it.

OpenVINO keys a cached graph by the model file's absolute path, the compile properties and the
CPU: a repository moved elsewhere, a changed ``num_threads`` or another CPU compiles again (and
keeps that too). Where the version's directory is not writable, the server's own cache
(``MASKSERVE_COMPILE_CACHE``, which ``maskserve triton`` sets to its work directory) is used.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIRNAME = "compiled"


def openvino_properties(precision: str, threads: int, cache_dir: str | None) -> dict[str, str]:
    """The compile properties of one graph model: the same at export and in Triton, or the cache misses."""
    props = {
        "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision],
        "PERFORMANCE_HINT": "LATENCY",
    }
    if threads > 0:
        props["INFERENCE_NUM_THREADS"] = str(threads)
    if cache_dir:
        props["CACHE_DIR"] = cache_dir
    return props


def cache_dir(version_dir: str | Path) -> str | None:
    """Where a graph model of ``version_dir`` keeps its compiled graph, if anywhere."""
    own = os.path.join(version_dir, CACHE_DIRNAME)
    if os.path.isdir(own) and os.access(own, os.W_OK):
        return own
    return os.environ.get("MASKSERVE_COMPILE_CACHE") or None


def precompile(version_dir: Path, precision: str, threads: int) -> None:
    """Compile every graph of ``version_dir`` (``model.onnx`` and any beside it) for this CPU into its own cache."""
    import openvino as ov

    where = version_dir.resolve()
    (where / CACHE_DIRNAME).mkdir(exist_ok=True)
    props = openvino_properties(precision, threads, str(where / CACHE_DIRNAME))
    core = ov.Core()
    for graph in sorted(where.glob("*.onnx")):
        core.compile_model(str(graph), "CPU", props)
