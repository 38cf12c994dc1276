#!/usr/bin/env bash
# Sets up everything maskserve needs in ./.venv, on a fresh machine or again
# (idempotent: a second run only checks). Used by scripts/run.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=2.13.0   # the CPU build; an unpinned torch pulls GBs of CUDA wheels
SAM2_VERSION=1.1.0

# PostgreSQL server binaries (Debian's package) for the shared-store tests and
# scale-out deployments; the embedded default itself uses SQLite.
if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  echo "[setup] installing PostgreSQL (Debian package)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi

# Chromium (Debian's package) for the playground's real-browser test, which Playwright
# drives as the system browser (no browser download from elsewhere).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "[setup] installing Chromium (Debian package)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)

stamp="$VENV/.maskserve-setup"
want="torch=$TORCH_VERSION sam2=$SAM2_VERSION $(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi

echo "[setup] installing torch==$TORCH_VERSION (CPU)"
"${PIP[@]}" --upgrade pip setuptools wheel
"${PIP[@]}" "torch==$TORCH_VERSION"

echo "[setup] installing maskserve and its dependencies (Triton wheel, ONNX, OpenVINO, ...)"
"${PIP[@]}" -e ".[export,test,dev]"

# sam2 is an sdist whose requirements name torchvision, which has no CPU build
# that loads beside this torch; the parts we use (build_sam, modeling) need
# only what pyproject.toml lists. Build it against the installed torch.
if ! "$PY" -c "import sam2.build_sam" 2>/dev/null; then
  echo "[setup] installing sam2==$SAM2_VERSION without its CUDA extension and torchvision"
  SAM2_BUILD_CUDA=0 "${PIP[@]}" --no-build-isolation --no-deps "sam2==$SAM2_VERSION"
fi

"$PY" - <<'PY'
import torch, sam2.build_sam, tritonclient.grpc, openvino, onnxruntime
import maskserve.frontend.app, maskserve.export.command
from maskserve.triton.server import find_distribution
find_distribution()
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"[setup] ok: torch {torch.__version__}, openvino {openvino.__version__}, onnxruntime {onnxruntime.__version__}")
PY
echo "$want" > "$stamp"
