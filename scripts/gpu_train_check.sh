#!/usr/bin/env bash
# GPU training check: a short real training run of the ResNet-50 BoQ configuration (preset
# resnet50_16384: 320x320, P=160 places x K=4 images, mixed precision, only layer3 trained) on a
# generated GSV-Cities-layout set, with a Pittsburgh-style validation set. Prints and saves the
# training throughput (images/s in training steps, data loading included) and the peak GPU memory
# (torch.cuda.max_memory_allocated), with and without gradient checkpointing.
#
#   scripts/gpu_train_check.sh                      # synthetic set (no data needed, nothing downloaded)
#   NORDLAND=../shared/data/nordland_trimmed scripts/gpu_train_check.sh   # places from Nordland frames
#   DINO=1 scripts/gpu_train_check.sh               # also the dinov2_12288 preset (280x280)
#   VENV=path SKIP_INSTALL=1 ...                    # reuse an environment
#
# Results: $OUT/gpu_train_check.json (default OUT: ./gpu_train_check_out) and each run's metrics.json.
# Needs network (it installs torch 2.14.1 into a fresh environment). On an offline GPU machine,
# scripts/gpu_check_offline.sh measures the same preset's training steps (step training_steps) and a
# short cpu_small training run (step training_run) with the torch that is there.
# The backbone starts from random weights (no network access for ImageNet weights): the figures
# are about speed and memory, not accuracy.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/gpu_train_check_out}
VENV=${VENV:-$ROOT/.venv-gpu}
PY=${PYTHON:-python3}
WORK=${WORK:-$(mktemp -d /tmp/boq_train_check.XXXXXX)}
PLACES=${PLACES:-1600}          # 10 batches of 160 places per epoch
STEPS=${STEPS:-10}              # training steps per epoch
EPOCHS=${EPOCHS:-2}
WORKERS=${WORKERS:-$(nproc)}
PRECISION=${PRECISION:-16-mixed}
VAL_N=${VAL_N:-400}             # validation database and query images each
EXTRA=${EXTRA:-}                # more train arguments (e.g. a CPU smoke run: "--accelerator cpu --places-per-batch 4")
mkdir -p "$OUT"
status=0

step() { echo; echo "=== $*"; }

step "machine"
nvidia-smi 2>&1 | head -15 || echo "nvidia-smi failed: no NVIDIA driver?"

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  step "install into $VENV"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
  "$VENV/bin/pip" install -q -e '.[training,test]' || { echo "install failed"; exit 1; }
fi
PYV="$VENV/bin/python"

step "data in $WORK"
"$PYV" - "$WORK" "$PLACES" "$VAL_N" "${NORDLAND:-}" <<'EOF' || exit 1
import csv, shutil, sys
from pathlib import Path
import cv2
import numpy as np
from training.gsv import COLUMNS, image_name

work, places, val_n, nordland = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
gsv, val = work / 'gsv', work / 'val'
if nordland:     # places: 2 frames x 2 seasons; validation: held-out frames, summer -> winter
    from training.make_train_set import Traversal, build_train_set
    n = min(3000, 5 * places // 2)
    for season in ('summer', 'winter'):
        rows = ['image,x,y'] + [f'images-{(i + 1) * 10:05d}.png,{10.0 * i},0' for i in range(n)]
        (work / f'{season}.csv').write_text('\n'.join(rows) + '\n')
    s = build_train_set([Traversal(Path(nordland) / s, work / f'{s}.csv') for s in ('summer', 'winter')],
                        gsv, city='Nordland', radius=10.0, min_spacing=20.0, images_per_place=4, max_images_per_place=4)
    print(f'Nordland set: {s.places} places, {s.images} images')
    for sub, season in (('database', 'summer'), ('queries', 'winter')):
        (val / sub).mkdir(parents=True)
        for i in range(3100, 3100 + min(val_n, 470)):
            shutil.copy(Path(nordland) / season / f'images-{(i + 1) * 10:05d}.png', val / sub / f'@{10.0 * i:09.2f}@0.00@{i}@.png')
else:            # synthetic: each place a random texture, its views shifted, scaled and re-lit
    def texture(seed):
        r = np.random.default_rng(seed)
        small = r.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        return cv2.resize(small, (400, 400), interpolation=cv2.INTER_CUBIC)
    def view(tex, r):
        x, y = r.integers(0, 80, 2)
        crop = tex[y:y + 320, x:x + 320].astype(np.float32) * r.uniform(0.6, 1.4)
        return np.clip(crop + r.normal(0, 8, crop.shape), 0, 255).astype(np.uint8)
    img_dir = gsv / 'Images' / 'Synthetic'
    img_dir.mkdir(parents=True)
    (gsv / 'Dataframes').mkdir()
    with open(gsv / 'Dataframes' / 'Synthetic.csv', 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for pid in range(places):
            tex = texture(pid)
            for k in range(4):
                lat, lon = 45.0 + pid * 1e-3, -73.0 - k * 1e-5
                row = [pid, 2010 + k, 1 + k, 90 * k, 'Synthetic', lat, lon, f'p{pid}-{k}']
                cv2.imwrite(str(img_dir / image_name('Synthetic', *row[:4], lat, lon, row[7])), view(tex, rng))
                w.writerow(row)
    for sub, start in (('database', 0), ('queries', 1)):
        (val / sub).mkdir(parents=True)
        for i in range(val_n):
            tex = texture(10_000_000 + i)
            cv2.imwrite(str(val / sub / f'@{100.0 * i:09.2f}@0.00@{i}@.jpg'), view(tex, np.random.default_rng(2 * i + start)))
    print(f'synthetic set: {places} places x 4 images, validation {val_n} + {val_n} images')
EOF

run_train() {  # name, extra arguments...
  local name=$1; shift
  step "train $name"
  "$PYV" -m training train --out "$WORK/$name" --data "$WORK/gsv" --val "pitts:$WORK/val" \
    --epochs "$EPOCHS" --set "trainer.limit_train_batches=$STEPS" --set trainer.validate_before_training=false \
    --set trainer.progress_bar=false --set trainer.log_every_n_steps=1 \
    --workers "$WORKERS" --devices 1 --precision "$PRECISION" "$@" $EXTRA 2>&1 | tee "$OUT/train_$name.txt"
  if [ "${PIPESTATUS[0]}" != 0 ]; then status=1; return; fi
  cp "$WORK/$name/metrics.json" "$OUT/metrics_$name.json"
}

run_train resnet50 --config resnet50_16384
run_train resnet50_ckpt --config resnet50_16384 --gradient-checkpointing
if [ "${DINO:-0}" = 1 ]; then
  run_train dinov2 --config dinov2_12288
  run_train dinov2_ckpt --config dinov2_12288 --gradient-checkpointing
fi

step "summary"
"$PYV" - "$OUT" <<'EOF' || status=1
import json, sys
from pathlib import Path
import torch
out = Path(sys.argv[1])
runs = {}
for f in sorted(out.glob('metrics_*.json')):
    m = json.loads(f.read_text())
    runs[f.stem[len('metrics_'):]] = {k: m.get(k) for k in (
        'train_images_per_s', 'train_images_measured', 'fit_images_per_s', 'peak_gpu_memory_mib', 'precision',
        'batch', 'image_size', 'device', 'best_val_R1')}
summary = {'torch': torch.__version__, 'cuda': torch.version.cuda,
           'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, 'runs': runs}
for name, r in runs.items():
    print(f'{name:16s} {r["train_images_per_s"] or float("nan"):8.1f} images/s  peak GPU memory {r["peak_gpu_memory_mib"] or 0:8.0f} MiB  '
          f'({r["precision"]}, batch {r["batch"]}, {r["image_size"]})')
(out / 'gpu_train_check.json').write_text(json.dumps(summary, indent=2) + '\n')
print(f'saved {out / "gpu_train_check.json"}')
EOF

step "done: status $status, results in $OUT"
exit $status
