#!/usr/bin/env bash
# One-command set-up and run on a fresh machine without a ROS install.
#   ./boq.sh demo   set up .venv and run the main job (see README)
#   ./boq.sh test   set up .venv and run the test suite
# VENV=path to use another virtual environment; SKIP_INSTALL=1 to reuse it as it is.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    "$VENV/bin/pip" install -q --upgrade pip
    # torch first, pinned to the release the project is tested with; JetPack users keep their own.
    "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
    "$VENV/bin/pip" install -q -e '.[ros,training,test]'
    # TensorRT's Python API as type stubs, for the static TensorRT check (test/test_trt_static.py). With
    # --no-deps (they name TensorRT itself as a dependency) and outside site-packages, where their
    # tensorrt/ folder of .pyi files would import as an empty tensorrt package.
    [ -d "$VENV/trt-stubs/tensorrt_stubs-10.13.0.35.1.dist-info" ] || \
      "$VENV/bin/pip" install -q --no-deps --upgrade --target "$VENV/trt-stubs" tensorrt-stubs==10.13.0.35.1
  fi
}

cmd=${1:-}
shift || true
case "$cmd" in
  demo)
    setup
    exec "$VENV/bin/python" -m boq_vpr.demo "$@"
    ;;
  test)
    setup
    # A unique DDS domain per run so parallel runs on one host do not hear each other.
    export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 100 ))}
    exec "$VENV/bin/python" -m pytest -q "$@"
    ;;
  *)
    echo "usage: $0 demo|test [args]" >&2
    exit 2
    ;;
esac
