"""Turn a finished training run into shipped package weights.

``python -m training.ship RUN_DIR --name resnet18_nordland`` reads ``RUN_DIR/model.pt`` (the best
validation checkpoint, fp32), writes ``boq_vpr/weights/<name>.pt`` with every floating-point tensor
stored as fp16 (the model computes in fp32 after loading), checks that the file loads strictly into
the configuration ``name``, measures the descriptor difference between the fp32 and the stored
weights on ``--images``, and copies the run's record beside the weights:
``<name>.train.yaml`` (resolved training config), ``<name>.log.csv`` (loss and validation recall per
epoch) and ``<name>.metrics.json`` (training metrics and the fp16 check).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from boq_vpr.inputs.images import list_images, load_image
from boq_vpr.models import build_model, get_config, load_weights
from boq_vpr.models.checkpoint import WEIGHTS_DIR, read_state_dict
from boq_vpr.values import file_sha256
from boq_vpr.preprocessing import Preprocessor

MAX_BYTES = 20 * 2 ** 20


def to_fp16(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors as fp16; integer ones (BatchNorm's counters) unchanged."""
    return {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
            for k, v in state.items()}


def descriptor_difference(name: str, fp32: Path, stored: Path, images: list[Path]) -> dict:
    """Compare the descriptors of the fp32 weights and of the stored (fp16) weights.

    The cosine between them, and whether both retrieve the same nearest neighbour among the images.
    """
    config = get_config(name)
    models = [load_weights(build_model(config), p).eval() for p in (fp32, stored)]
    pre = Preprocessor(config.image_size)
    batch = pre.batch([load_image(p) for p in images])
    with torch.inference_mode():
        a, b = (m(batch).numpy() for m in models)
    cos = np.sum(a * b, axis=1)
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -2)
    np.fill_diagonal(sb, -2)
    return {'images': len(images), 'min_cosine': float(cos.min()), 'mean_cosine': float(cos.mean()),
            'max_abs_difference': float(np.abs(a - b).max()),
            'nearest_neighbour_agreement': float(np.mean(sa.argmax(1) == sb.argmax(1)))}


def write_log(history: list[dict], path: Path) -> None:
    """Write the per-epoch training log (kept across resumes in metrics.json) as CSV."""
    rows = ['epoch,steps,lr,train_loss,mined_pairs,val_R1,val_R5,val_R10']
    for h in history:
        val = next(iter(h.get('val', {}).values()), {})
        rows.append(','.join(str(v) for v in (h['epoch'], h.get('steps', ''), f'{h["lr"]:.6g}',
                                             f'{h["train_loss"]:.5f}',
                                             f'{h.get("mined_pairs", float("nan")):.4f}',
                                             *(f'{val[k]:.4f}' if k in val else '' for k in ('R1', 'R5', 'R10')))))
    path.write_text('\n'.join(rows) + '\n')


def ship(run_dir: Path, name: str, images: list[Path], out_dir: Path = WEIGHTS_DIR) -> dict:
    run_dir = Path(run_dir)
    source = run_dir / 'model.pt'
    state = read_state_dict(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f'{name}.pt'
    tmp = target.with_suffix('.pt.tmp')
    torch.save(to_fp16(state), tmp)
    tmp.replace(target)
    size = target.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f'{target}: {size / 2 ** 20:.1f} MiB, over the {MAX_BYTES / 2 ** 20:.0f} MiB limit')
    load_weights(build_model(name), target)            # strict
    check = descriptor_difference(name, source, target, images)
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    write_log(metrics.get('history', []), out_dir / f'{name}.log.csv')
    shutil.copy(run_dir / 'config.yaml', out_dir / f'{name}.train.yaml')
    record = {'weights': target.name, 'bytes': size, 'sha256': file_sha256(target), 'storage': 'fp16',
              'fp16_vs_fp32': check, 'training': metrics}
    (out_dir / f'{name}.metrics.json').write_text(json.dumps(record, indent=2) + '\n')
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m training.ship', description=__doc__.split('\n\n')[0])
    p.add_argument('run_dir', type=Path, help='finished training run (model.pt, metrics.json, config.yaml, logs/)')
    p.add_argument('--name', required=True, help='model configuration the weights belong to')
    p.add_argument('--images', type=Path, required=True, help='folder of images for the fp16 check')
    p.add_argument('--out-dir', type=Path, default=WEIGHTS_DIR, help=f'default: {WEIGHTS_DIR}')
    a = p.parse_args(argv)
    record = ship(a.run_dir, a.name, list_images(a.images), a.out_dir)
    print(json.dumps({k: v for k, v in record.items() if k != 'training'}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
