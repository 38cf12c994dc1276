#!/usr/bin/env bash
# The two entry points of the README:
#   bash scripts/run.sh serve   set up, export a model if none is there, run Triton + the REST API
#   bash scripts/run.sh test    set up and run the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate

case "${1:-}" in
  serve)
    shift
    repo=${MASKSERVE_MODEL_REPOSITORY:-model_repository}
    if ! ls "$repo"/sam2_image_encoder/*/model.onnx >/dev/null 2>&1; then
      if [ -n "${MASKSERVE_CHECKPOINT:-}" ]; then
        maskserve export --model "${MASKSERVE_MODEL:-sam2.1_hiera_tiny}" --checkpoint "$MASKSERVE_CHECKPOINT" --out "$repo"
      else
        echo "[serve] no exported model and no MASKSERVE_CHECKPOINT: exporting with RANDOM WEIGHTS"
        maskserve export --model "${MASKSERVE_MODEL:-sam2.1_hiera_tiny}" --random-weights --out "$repo"
      fi
    fi
    exec maskserve serve --model-repository "$repo" "$@"
    ;;
  test)
    shift
    set +e
    python -m pytest -ra "$@"
    code=$?
    set -e
    if [ "$code" -eq 5 ]; then
      echo "pytest collected no tests: failing on purpose" >&2
      exit 1
    fi
    exit "$code"
    ;;
  *)
    echo "usage: bash scripts/run.sh serve|test [args...]" >&2
    exit 2
    ;;
esac
