#!/usr/bin/env bash
# Reproduce the shipped resnet18_nordland weights (boq_vpr/weights/resnet18_nordland.pt) on a CPU:
# build the Nordland split, train with boq-vpr train, store fp16 weights beside their record,
# then measure the held-out recall against the untrained model and the pixel baseline.
#   scripts/train_resnet18_nordland.sh [NORDLAND_DIR]   (default: ../shared/data/nordland_trimmed)
# About 30 minutes on 2 CPU cores. Environment: ./boq.sh test installs it (.venv).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/nordland_trimmed}
PY=${VENV:-.venv}/bin
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
"$PY/python" -m training.nordland --data "$DATA" --out runs/nordland_data --overwrite
"$PY/boq-vpr" train --config resnet18_nordland --data runs/nordland_data/gsv \
    --val pitts:runs/nordland_data/val --out runs/resnet18_nordland
"$PY/python" -m training.ship runs/resnet18_nordland --name resnet18_nordland \
    --images runs/nordland_data/val/queries
"$PY/boq-vpr" bench recall --data "$DATA" --out bench/recall_nordland.json
