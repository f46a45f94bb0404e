#!/usr/bin/env bash
# GPU check for a machine WITH network access and an NVIDIA GPU: set up a fresh virtual environment
# with the CUDA runtimes (torch CUDA, TensorRT 10, onnxruntime-gpu), run the GPU-gated tests, the
# CUDA benchmarks (TensorRT and ONNX Runtime CUDA included) and scripts/gpu_check.py, and save
# everything under $OUT (default: ./gpu_check_out).
# On an offline GPU machine with a preinstalled CUDA torch use scripts/gpu_check_offline.sh instead.
#
#   scripts/gpu_check.sh            # everything
#   QUICK=1 scripts/gpu_check.sh    # fewer benchmark rounds, resnet50 only
#   VENV=path SKIP_INSTALL=1 ...    # reuse an environment
#
# Versions: torch 2.14.1 from PyPI is built for CUDA 13, so TensorRT comes as tensorrt-cu13 10.x
# (the backend uses TensorRT 10's FP16/INT8 builder flags, removed in TensorRT 11); TRT_PACKAGE
# overrides it (e.g. "tensorrt-cu12>=10,<11" next to a CUDA 12 torch).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/gpu_check_out}
VENV=${VENV:-$ROOT/.venv-gpu}
PY=${PYTHON:-python3}
TRT_PACKAGE=${TRT_PACKAGE:-tensorrt-cu13>=10.13,<11}
ROUNDS=${ROUNDS:-50}
mkdir -p "$OUT"
export BOQ_VPR_CACHE=${BOQ_VPR_CACHE:-$OUT/cache}
status=0

step() { echo; echo "=== $*" | tee -a "$OUT/steps.log"; }

step "machine"
{ nvidia-smi || echo "nvidia-smi failed: no NVIDIA driver?"; } > "$OUT/nvidia-smi.txt" 2>&1
cat "$OUT/nvidia-smi.txt" | head -15

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  step "install into $VENV"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
  "$VENV/bin/pip" install -q -e '.[test,openvino]'
  "$VENV/bin/pip" install -q "$TRT_PACKAGE" || { echo "TensorRT install failed: $TRT_PACKAGE"; status=1; }
  # onnxruntime-gpu provides the same module as onnxruntime: replace the CPU build.
  "$VENV/bin/pip" uninstall -q -y onnxruntime && "$VENV/bin/pip" install -q onnxruntime-gpu \
    || { echo "onnxruntime-gpu install failed; putting the CPU build back"; "$VENV/bin/pip" install -q onnxruntime; }
fi
PYV="$VENV/bin/python"
BOQ="$VENV/bin/boq-vpr"

step "versions"
"$PYV" - <<'EOF' 2>&1 | tee "$OUT/versions.txt"
import torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
if torch.cuda.is_available():
    print('gpu', torch.cuda.get_device_name(0), 'capability', torch.cuda.get_device_capability(0))
try:
    import tensorrt
    print('tensorrt', tensorrt.__version__)
except Exception as err:
    print('tensorrt unavailable:', err)
import onnxruntime
print('onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())
EOF

step "tests (GPU-gated, then the export/backend/op tests and the static TensorRT check)"
"$PYV" -m pytest -q -rs test/test_gpu.py test/test_trt_ops.py test/test_trt_static.py test/test_trt_engine_build.py \
  test/test_export.py test/test_backends.py \
  --junitxml "$OUT/junit.xml" 2>&1 | tee "$OUT/pytest.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

DATA=${DATA:-$ROOT/../shared/data/nordland_trimmed}
IMAGES=()
[ -d "$DATA/summer" ] && IMAGES=(--images "$DATA/summer")
MODELS=(resnet50_16384 dinov2_12288)
[ "${QUICK:-0}" = 1 ] && MODELS=(resnet50_16384) && ROUNDS=20

step "benchmark on CUDA (eager PyTorch FP32 reference first, same process)"
"$BOQ" bench encoder --device cuda --models "${MODELS[@]}" \
  --backends tensorrt:fp16 tensorrt:fp32 onnxruntime:fp32 onnxruntime:fp16 torch:fp16 torch:fp32 \
  --batch-sizes 1 8 --rounds "$ROUNDS" --warmup 5 "${IMAGES[@]}" --out "$OUT/bench_encoder_cuda.json" \
  2>&1 | tee "$OUT/bench_encoder_cuda.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

if [ -d "$DATA/summer" ]; then
  step "verify on Nordland (summer database, winter queries)"
  for model in "${MODELS[@]}"; do
    "$BOQ" verify --model "$model" --device cuda --database "$DATA/summer" --queries "$DATA/winter" --limit 64 \
      --backends tensorrt:fp32 tensorrt:fp16 torch:fp16 onnxruntime:fp32 --min-top1 0.95 \
      --out "$OUT/verify_${model}_cuda.json" 2>&1 | tee "$OUT/verify_${model}_cuda.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
  done
fi

step "GPU check (scripts/gpu_check.py: torch CUDA variants, parity, training steps, node latency, training run)"
"$PYV" scripts/gpu_check.py --out "$OUT/check" --budget-s "${BUDGET_S:-900}" 2>&1 | tee "$OUT/gpu_check.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

step "done: status $status, results in $OUT"
exit $status
