#!/usr/bin/env bash
# The two entry points of the README:
#   bash scripts/run.sh serve   set up, export a model if none is there, run Triton + the REST API
#   bash scripts/run.sh test    set up, run the gates, then the unit, integration and e2e tiers
# and two quicker ones:
#   bash scripts/run.sh unit    set up and run the unit tier alone (seconds: no export, no Triton)
#   bash scripts/run.sh lint    set up and run the gates alone (ruff, mypy, import contracts)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate

gates() {
  echo "[gates] ruff (lint), ruff (format), mypy, import contracts"
  ruff check .
  ruff format --check .
  mypy
  lint-imports --no-cache
}

tests() {
  set +e
  python -m pytest -ra "$@"
  local code=$?
  set -e
  if [ "$code" -eq 5 ]; then
    echo "pytest collected no tests in $1: failing on purpose" >&2
    exit 1
  fi
  [ "$code" -eq 0 ] || exit "$code"
}

case "${1:-}" in
  serve)
    shift
    repo=${MASKSERVE_MODEL_REPOSITORY:-model_repository}
    if ! ls "$repo"/sam2_image_encoder_v*/1/model.onnx "$repo"/sam2_session_v*/1/model.py >/dev/null 2>&1; then
      model=${MASKSERVE_MODEL:-sam2.1_hiera_tiny}
      if [ -n "${MASKSERVE_CHECKPOINT:-}" ]; then
        maskserve export --model "$model" --checkpoint "$MASKSERVE_CHECKPOINT" --out "$repo"
      else
        # MASKSERVE_WEIGHTS: auto (the official checkpoint, verified and cached; random weights only
        # when it cannot be fetched), download (the checkpoint or fail), random (random weights)
        case "${MASKSERVE_WEIGHTS:-auto}" in
          auto) weights=--auto-weights ;;
          download) weights=--download ;;
          random) weights=--random-weights ;;
          *) echo "[serve] MASKSERVE_WEIGHTS must be auto, download or random" >&2; exit 2 ;;
        esac
        mirror=()
        [ -n "${MASKSERVE_CHECKPOINT_URL:-}" ] && mirror=(--checkpoint-url "$MASKSERVE_CHECKPOINT_URL")
        [ -n "${MASKSERVE_CHECKPOINT_SHA256:-}" ] && mirror+=(--checkpoint-sha256 "$MASKSERVE_CHECKPOINT_SHA256")
        maskserve export --model "$model" "$weights" "${mirror[@]}" \
          --download-dir "${MASKSERVE_CHECKPOINT_DIR:-$HOME/.cache/maskserve/checkpoints}" --out "$repo"
      fi
      if grep -qs '"kind": "random"' "$repo"/sam2_image_encoder_v*/1/manifest.json; then
        echo "[serve] the model was exported with RANDOM WEIGHTS: masks are meaningless" >&2
      fi
    fi
    exec maskserve serve --model-repository "$repo" "$@"
    ;;
  lint)
    gates
    ;;
  unit)
    shift
    tests tests/unit "$@"
    ;;
  test)
    shift
    gates
    tests tests/unit "$@"
    # one session for both slower tiers: they share one export and one Triton
    tests tests/integration tests/e2e "$@"
    ;;
  *)
    echo "usage: bash scripts/run.sh serve|test|unit|lint [args...]" >&2
    exit 2
    ;;
esac
