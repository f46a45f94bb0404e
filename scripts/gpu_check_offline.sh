#!/usr/bin/env bash
# The GPU check on an offline GPU machine that has a CUDA build of torch preinstalled (for example
# NVIDIA's torch 2.11 cu130, onnx, onnxruntime (CPU build), lightning, opencv,
# numpy, scipy, pandas, pytest, ... and no network). Nothing is downloaded there: it uses that torch,
# installs this project with `pip install --no-deps` and only the carried wheels the machine lacks,
# then runs scripts/gpu_check.py (generated test images, about 4-7 minutes, table printed last).
#
#   scripts/gpu_check_offline.sh download    # on a machine with network: fill .gpu_wheels/ (git-ignored, carried)
#   scripts/gpu_check_offline.sh             # on the GPU machine: install, check; results in $OUT (default ./gpu_check_out)
#   DRY_RUN=1 scripts/gpu_check_offline.sh   # any machine, on the CPU: every step with tiny sizes, nothing installed
#
# `download` runs (the GPU machine's Python is 3.12, x86-64; PY_VERSION overrides):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .gpu_wheels faiss-cpu==1.15.1 pytorch-metric-learning==2.9.0
# (faiss-cpu 18 MiB: the map database; pytorch-metric-learning 0.1 MiB: the training loss. Their own
# needs, numpy, packaging, scikit-learn, tqdm and torch, are there already.) The working tree plus
# the wheels must stay under the machine's 64 MiB limit; carry the folder: run(carry=['.gpu_wheels']).
#
# Files in $OUT (at most 8): gpu_check.json (everything), gpu_check.txt (the table), gpu_check.log
# (all output), pytest_gpu.txt (test/test_gpu.py), nvidia-smi.txt.
# Environment: OUT, PYTHON (default python3), WHEELS (default .gpu_wheels), SITE (where the carried
# wheels go, default /tmp/boq_vpr_site, put on PYTHONPATH), LIMIT_S (hard stop of the check, default
# 470 s; its own budget is BUDGET_S, default 400 s), DRY_RUN=1, CHECK_ARGS (more gpu_check.py arguments).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-$ROOT/.gpu_wheels}
CARRIED=(faiss-cpu==1.15.1 pytorch-metric-learning==2.9.0)

if [ "${1:-}" = download ]; then
  mkdir -p "$WHEELS"
  exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$WHEELS" "${CARRIED[@]}"
fi
[ $# -eq 0 ] || { echo "usage: $0 [download]" >&2; exit 2; }

OUT=${OUT:-$ROOT/gpu_check_out}
SITE=${SITE:-/tmp/boq_vpr_site}
DRY=${DRY_RUN:-0}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }
t_start=$(date +%s)

say "=== machine"
if [ "$DRY" = 1 ]; then
  say "dry run on the CPU: no nvidia-smi"
else
  { nvidia-smi || echo "nvidia-smi failed: no NVIDIA driver?"; } > "$OUT/nvidia-smi.txt" 2>&1
  head -12 "$OUT/nvidia-smi.txt" | tee -a "$LOG"
fi
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], sys.executable); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 | tee -a "$LOG"

say "=== install: carried wheels this Python lacks, then the project (--no-deps)"
mapfile -t MISSING < <("$PY" - "$WHEELS" 2>>"$LOG" <<'EOF'
import sys
from importlib import metadata
from pathlib import Path
folder = Path(sys.argv[1])
wheels = sorted(folder.glob('*.whl')) if folder.is_dir() else []
if not wheels:
    print(f'no wheels in {folder} (fill it with: scripts/gpu_check_offline.sh download)', file=sys.stderr)
for whl in wheels:
    name, version = whl.name.split('-')[:2]
    try:
        print(f'have {name} {metadata.version(name)} (carried {version}: not installed)', file=sys.stderr)
    except metadata.PackageNotFoundError:
        print(whl)
EOF
)
if [ "${#MISSING[@]}" -gt 0 ]; then
  if [ "$DRY" = 1 ]; then
    say "dry run: would install into $SITE: ${MISSING[*]##*/}"
  else
    say "installing into $SITE: ${MISSING[*]##*/}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${MISSING[@]}" \
      2>&1 | tee -a "$LOG" || say "installing the carried wheels failed: the steps that need them will fail"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
if [ "$DRY" = 1 ]; then
  say "dry run: would run $PY -m pip install --no-deps --no-build-isolation --no-index -e $ROOT"
else
  "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e "$ROOT" 2>&1 | tee -a "$LOG"
  [ "${PIPESTATUS[0]}" = 0 ] && say "project installed (editable, --no-deps)" \
    || say "editable install failed; the project is imported from $ROOT (PYTHONPATH)"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
say "install took $(( $(date +%s) - t_start )) s"

say "=== check (scripts/gpu_check.py)"
ARGS=(--out "$OUT" --budget-s "${BUDGET_S:-400}")
[ "$DRY" = 1 ] && ARGS+=(--cpu-dry-run)
# shellcheck disable=SC2206
[ -n "${CHECK_ARGS:-}" ] && ARGS+=(${CHECK_ARGS})
PYTHONUNBUFFERED=1 timeout -k 10 "${LIMIT_S:-470}" "$PY" "$ROOT/scripts/gpu_check.py" "${ARGS[@]}" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
  echo "=== the check ran past LIMIT_S=${LIMIT_S:-470} s and was stopped; the table and $OUT/gpu_check.json hold the steps done" | tee -a "$LOG"
  cat "$OUT/gpu_check.txt" 2>/dev/null || echo "(no table: the check stopped before its first step ended)"
fi
echo "=== done in $(( $(date +%s) - t_start )) s, exit status $status; files: $(ls "$OUT" | tr '\n' ' ')" >> "$LOG"
exit "$status"
