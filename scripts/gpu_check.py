#!/usr/bin/env python3
"""The GPU check: everything boq_vpr does on a CUDA GPU, measured in one run of a few minutes.

Runs on an offline GPU machine with a preinstalled CUDA torch (``scripts/gpu_check_offline.sh``
installs the project and the few wheels it lacks, then calls this), or on any CUDA machine:

    python scripts/gpu_check.py --out gpu_check_out            # on a GPU (about 4-7 minutes)
    python scripts/gpu_check.py --cpu-dry-run --out /tmp/dry   # here, on the CPU, tiny sizes (seconds)

What it measures, each against eager FP32 on the same GPU and in the same process:

- inference (``inference:<model>``): torch CUDA fp32, fp16 and bf16, each eager (the model as
  written, autocast), graph (``TorchBackend(mode='graph')``: the plain-op inference graph, what
  ``backend: torch`` runs), cudagraph (that graph captured in one CUDA graph per batch size and
  replayed), for ``resnet50_16384`` at 384x384 and ``dinov2_12288`` at 322x322, batch 1 and 8: ms per
  image from a CPU batch (what the Encoder hands a backend) and from a GPU-resident batch; parity of
  every variant with CPU FP32 on the same images (min cosine, top-1 agreement of queries against a
  database); TensorRT and ONNX Runtime CUDA variants where those are installed;
- ``training_steps``: training steps of the ``resnet50_16384`` preset (320x320, P x K = 160 x 4, or the
  largest P that fits, stated; 16-mixed: fp16 autocast and a gradient scaler; AdamW; only layer3 of the
  backbone trained; multi-similarity loss and miner): images/s (GPU steps on a GPU-resident batch,
  data loading excluded) and peak GPU memory;
- ``node_latency``: the node's per-frame pipeline without DDS (``Encoder`` with batch 1 ->
  ``LoopClosureDetector`` over a ``MapDatabase`` in slam mode, shipped detector defaults), 640x480
  frames at 10 Hz stamps, with the fastest correct variant: encode, detect and total per frame;
- ``training_run``: the real training code (``training.run.TrainingRun``, Lightning) on the
  ``cpu_small`` preset (resnet18_1024 at 160x160, 16 x 4) with 16-mixed on the GPU for a few hundred
  steps on generated places: loss per epoch (going down?) and throughput;
- ``gpu_tests``: ``pytest test/test_gpu.py`` (CUDA backends against CPU FP32 on generated images);
- ``compile``: ``torch.compile`` of the inference graph (fp16), last and only while the time budget
  lasts (each model compiles once per batch shape).

Weights are random (seeded) unless ``--weights-dir`` holds the official files: figures are about
speed, memory and numerical agreement, not recall. Test images are generated (places of random
texture; a query is a shifted, re-lit, noisy view of its database image) unless ``--images`` names
a folder.

Results under ``--out``: ``gpu_check.json`` (everything, rewritten after every step),
``gpu_check.txt`` (the short table, also printed last) and ``pytest_gpu.txt``; at most 3 files.
Steps that cannot run (no TensorRT, no onnxruntime-gpu, not enough time left) are skipped with
their reason, not failed. Exit status 1 when a step failed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / 'scripts'):   # a checkout without an installed project; the check's own modules
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402
from gpu_check_inference import folder_places, generated_places, run_compile, run_inference  # noqa: E402
from gpu_check_plan import (BATCHES, MIN_COSINE, MIN_TOP1, PRECISIONS, Budget, Plan, Skip, free_memory,  # noqa: E402
                            jsonable, make_plan)
from gpu_check_steps import run_node_latency, run_training_run, run_training_steps  # noqa: E402

log = logging.getLogger('gpu_check')

JSON_NAME = 'gpu_check.json'
TABLE_NAME = 'gpu_check.txt'
PYTEST_NAME = 'pytest_gpu.txt'
FORMAT_VERSION = 1
STEP_NAMES = ('environment', 'images', 'inference:resnet50_16384', 'inference:dinov2_12288', 'training_steps',
              'node_latency', 'training_run', 'gpu_tests', 'compile')



# ---------------------------------------------------------------- report

class Report:
    """The JSON document, built step by step."""

    def __init__(self, plan: Plan, args: argparse.Namespace) -> None:
        self.out: Path | None = args.out
        self.data: dict[str, Any] = {
            'check': 'boq_vpr gpu_check', 'format_version': FORMAT_VERSION,
            'mode': 'cpu-dry-run' if plan.dry_run else 'gpu',
            'started': dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds'),
            'settings': {'budget_s': args.budget_s, 'rounds': plan.rounds, 'warmup': plan.warmup,
                         'batches': list(BATCHES), 'min_cosine': MIN_COSINE, 'min_top1_agreement': MIN_TOP1,
                         'weights': 'random (seeded)' if not args.weights_dir else str(args.weights_dir),
                         'images': str(args.images) if args.images else 'generated places'},
            'steps': [], 'skipped': {}, 'results': {}}

    def step(self, name: str, fn: Callable[[], Any], budget: Budget, need_s: float = 0.0, store: bool = True) -> Any:
        """Run one step; record ok / skipped (with the reason) / failed (with the error).

        ``store``: its result goes into ``results``.
        """
        entry: dict[str, Any] = {'name': name}
        t0 = time.monotonic()
        print(f'=== {name}', flush=True)
        try:
            if budget.left() < need_s:
                raise Skip(f'time budget: {budget.left():.0f} s left, this step needs about {need_s:.0f} s')
            result = fn()
            entry['status'] = 'ok'
            if result is not None and store:
                self.data['results'][name] = result
        except Skip as err:
            entry['status'] = 'skipped'
            entry['reason'] = str(err)
            result = None
        except Exception as err:  # record and go on: one broken step must not hide the others
            entry['status'] = 'failed'
            entry['reason'] = f'{type(err).__name__}: {err}'
            entry['traceback'] = traceback.format_exc(limit=6)
            result = None
            print(entry['traceback'], file=sys.stderr, flush=True)
        entry['seconds'] = round(time.monotonic() - t0, 2)
        self.data['steps'].append(entry)
        self.save()
        print(f'    {entry["status"]}{": " + entry["reason"] if "reason" in entry else ""} ({entry["seconds"]} s)',
              flush=True)
        return result

    def save(self) -> None:
        """Write the JSON and the table as they stand.

        After every step, so a run stopped from outside keeps what it measured.
        """
        if self.out is not None:
            data = jsonable(self.data)
            (self.out / JSON_NAME).write_text(json.dumps(data, indent=2) + '\n')
            (self.out / TABLE_NAME).write_text(table(data))

    @property
    def failed(self) -> bool:
        return any(s['status'] == 'failed' for s in self.data['steps'])


# ---------------------------------------------------------------- environment and skips

def environment(plan: Plan, report: Report) -> dict:
    from boq_vpr.backends.capabilities import has_module
    env: dict[str, Any] = {'python': platform.python_version(), 'platform': platform.platform(),
                           'cpu_count': os.cpu_count(), 'torch': torch.__version__, 'torch_cuda': torch.version.cuda,
                           'cuda_available': torch.cuda.is_available(), 'cudnn': torch.backends.cudnn.version()}
    if plan.device == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeError(f'no CUDA device visible to torch {torch.__version__} (use --cpu-dry-run on a CPU)')
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, capability=f'sm_{props.major}{props.minor}',
                   gpu_memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count)
    packages = {}
    for name in ('numpy', 'faiss', 'cv2', 'onnx', 'onnxruntime', 'lightning', 'pytorch_metric_learning',
                 'torchvision', 'openvino', 'tensorrt'):
        packages[name] = has_module(name)
    env['packages'] = packages
    try:
        from importlib import metadata
        env['versions'] = {n: metadata.version(d) for n, d in (
            ('faiss', 'faiss-cpu'), ('lightning', 'lightning'), ('pytorch_metric_learning', 'pytorch-metric-learning'),
            ('onnxruntime', 'onnxruntime'), ('torchvision', 'torchvision')) if packages.get(n)}
    except Exception as err:  # versions are informative only
        env['versions'] = f'unknown: {err}'
    skipped = report.data['skipped']
    if plan.dry_run:
        skipped['cuda'] = 'CPU dry run (--cpu-dry-run): tiny models and sizes, no GPU figures'
    try:
        from boq_vpr.backends.tensorrt_backend import import_tensorrt
        trt = import_tensorrt()
        env['tensorrt'] = str(trt.__version__)
        if plan.device != 'cuda':
            skipped['tensorrt'] = 'TensorRT needs a CUDA GPU (dry run)'
    except Exception as err:
        skipped['tensorrt'] = (f'{err} -- TensorRT cannot be installed on an offline machine (the PyPI packages '
                               'fetch NVIDIA\'s libraries at install time); the static check '
                               '(scripts/check_tensorrt_types.py) and test/test_trt_ops.py stand in for it')
    try:
        import onnxruntime
        providers = onnxruntime.get_available_providers()
        env['onnxruntime_providers'] = providers
        if 'CUDAExecutionProvider' not in providers:
            skipped['onnxruntime-gpu'] = (f'onnxruntime {onnxruntime.__version__} is the CPU build (providers: '
                                          f'{", ".join(providers)}); onnxruntime-gpu is not installed')
        elif plan.device != 'cuda':
            skipped['onnxruntime-gpu'] = 'ONNX Runtime CUDA needs a CUDA GPU (dry run)'
    except ImportError as err:
        skipped['onnxruntime-gpu'] = f'onnxruntime not importable: {err}'
    for name, module in (('faiss', 'faiss'), ('pytorch-metric-learning', 'pytorch_metric_learning'),
                         ('lightning', 'lightning')):
        if not packages.get(module):
            skipped[name] = (f'{name} is not installed: steps that need it fail; carry its wheel '
                             '(scripts/gpu_check_offline.sh download)')
    return env


def run_gpu_tests(plan: Plan, out: Path, budget: Budget) -> dict:
    if plan.dry_run:
        raise Skip('dry run: test/test_gpu.py runs in the ordinary test suite, where its GPU tests skip')
    cmd = [sys.executable, '-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider', 'test/test_gpu.py']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=max(30.0, min(240.0, budget.left() - 10)))
    (out / PYTEST_NAME).write_text(proc.stdout + proc.stderr)
    last = [ln for ln in proc.stdout.splitlines() if ln.strip()][-1:] or ['']
    if proc.returncode not in (0, 5):
        raise RuntimeError(f'pytest test/test_gpu.py: exit status {proc.returncode}: {last[0]}')
    return {'command': ' '.join(cmd[2:]), 'exit_status': proc.returncode, 'summary': last[0]}


# ---------------------------------------------------------------- table

def _fmt(v: Any, spec: str) -> str:
    return '-' if v is None else format(v, spec)


def table(data: dict) -> str:
    """Summarize the results in a short table, printed last."""
    r = data['results']
    env = r.get('environment', {})
    head = (f'boq_vpr GPU check ({data["mode"]}), {data["started"]}: {env.get("gpu", "no GPU")} '
            f'{env.get("capability", "")}, torch {env.get("torch")} (CUDA {env.get("torch_cuda")}), '
            f'weights {data["settings"]["weights"]}')
    lines = [head, '']
    lines.append(f'{"model":15s} {"variant":24s} {"b1 ms":>8s} {"x eager":>7s} {"b8 ms/img":>9s} {"x eager":>7s} '
                 f'{"min cos":>8s} {"top1":>5s}  ok')
    for key in ('inference:resnet50_16384', 'inference:dinov2_12288', 'compile'):
        res = r.get(key)
        if not res:
            continue
        groups = res.items() if key == 'compile' else [(key.split(':', 1)[1], res['variants'])]
        for model, variants in groups:
            for v in variants:
                if v.get('status') != 'ok':
                    lines.append(f'{model:15s} {v["variant"]:24s} {v.get("status")}: {v.get("reason", "")[:70]}')
                    continue
                t1 = v['timing'].get('1', {}).get('cpu_input', {})
                t8 = v['timing'].get('8', {}).get('cpu_input', {})
                p = v['parity_vs_cpu_fp32']
                lines.append(f'{model:15s} {v["variant"]:24s} {_fmt(t1.get("p50_ms_per_image"), "8.2f")} '
                             f'{_fmt(t1.get("x_eager_fp32"), "7.2f")} {_fmt(t8.get("p50_ms_per_image"), "9.2f")} '
                             f'{_fmt(t8.get("x_eager_fp32"), "7.2f")} {p["min_cosine"]:8.5f} '
                             f'{p["top1_agreement"]:5.2f}  {"yes" if v.get("correct", True) else "NO"}')
        if key != 'compile':
            lines.append(f'{"":15s} fastest correct: b1 {res.get("fastest_correct_b1")}, '
                         f'b8 {res.get("fastest_correct_b8")}; '
                         f'of backend torch today: b1 {res.get("fastest_correct_torch_backend_b1")}')
    lines.append('(ms per image from a CPU batch, the Encoder\'s path; p50; x eager = eager fp32 on the same device '
                 'and batch / this; parity against CPU fp32 eager)')
    ts = r.get('training_steps')
    if ts:
        lines.append(f'training steps, preset {ts["preset"]} ({ts["model"]}, '
                     f'{ts["image_size"][0]}x{ts["image_size"][1]}, '
                     f'P x K = {ts["places_per_batch"]} x {ts["images_per_place"]}, {ts["precision"]}): '
                     f'{ts["images_per_s"]:.0f} images/s, peak GPU memory {_fmt(ts["peak_gpu_memory_gib"], ".1f")} GiB')
    node = r.get('node_latency')
    if node:
        for v in node['variants']:
            lines.append(f'node pipeline without DDS, {node["model"]} {v["variant"]}: '
                         f'encode p50 {v["encode"]["p50_ms"]:.2f} ms, '
                         f'detect p50 {v["detect"]["p50_ms"]:.2f} ms, total p50/p99 {v["total"]["p50_ms"]:.2f} / '
                         f'{v["total"]["p99_ms"]:.2f} ms ({v["frames"]} frames)')
    tr = r.get('training_run')
    if tr:
        lines.append(f'training run {tr["preset"]} ({tr["model"]}, {tr["image_size"][0]}x{tr["image_size"][1]}, '
                     f'{tr["batch"][0]} x {tr["batch"][1]}, {tr["precision"]}, {tr["steps"]} steps): loss '
                     f'{_fmt(tr["loss_first_epoch"], ".4f")} -> {_fmt(tr["loss_last_epoch"], ".4f")} '
                     f'({"down" if tr["loss_went_down"] else "NOT down"}), '
                     f'{_fmt(tr["train_images_per_s"], ".0f")} images/s')
    for s in data['steps']:
        if s['status'] != 'ok':
            lines.append(f'step {s["name"]}: {s["status"]}: {s.get("reason", "")[:150]}')
    for name, reason in data['skipped'].items():
        lines.append(f'skipped {name}: {reason[:150]}')
    return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', type=Path, default=Path(os.environ.get('OUT') or ROOT / 'gpu_check_out'),
                        help='results folder (default: $OUT, else ./gpu_check_out)')
    parser.add_argument('--cpu-dry-run', action='store_true',
                        help='run every step on the CPU with tiny models and sizes (checks the script, not the GPU)')
    parser.add_argument('--budget-s', type=float, default=420.0,
                        help='time budget in seconds (default 420); optional parts are skipped when it runs short')
    parser.add_argument('--images', type=Path, default=None, help='a folder of images instead of generated ones')
    parser.add_argument('--weights-dir', type=Path, default=None,
                        help='folder with resnet50_16384.pth / dinov2_12288.pth (default: random weights)')
    parser.add_argument('--compile-precisions', nargs='*', default=None, choices=PRECISIONS,
                        help='precisions of the torch.compile variants (default: fp16 on a GPU, fp32 in the dry '
                             'run, where the "eager" compile backend only checks the tracing; none: no compile)')
    parser.add_argument('--skip', nargs='*', default=[], choices=STEP_NAMES, help='steps not to run')
    parser.add_argument('--work', type=Path, default=None, help='scratch folder (default: a temporary one)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    # the random-weights warning, once per model
    logging.getLogger('boq_vpr.models.checkpoint').setLevel(logging.ERROR)
    for name in ('lightning', 'lightning.pytorch', 'lightning.fabric'):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.cpu_dry_run:
        os.environ['CUDA_VISIBLE_DEVICES'] = ''
        # one thread: on a shared CPU, a parallel region waits for every thread's core (seen: 10 ms -> 800 ms)
        torch.set_num_threads(1)
    plan = make_plan(args.cpu_dry_run)
    if args.compile_precisions is None:
        args.compile_precisions = ['fp32'] if plan.dry_run else ['fp16']
    args.out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    report = Report(plan, args)
    report.data['plan'] = {'device': plan.device, 'models': {k: {'config': c.name, 'image_size': list(c.image_size)}
                                                               for k, c in plan.models.items()}}
    with tempfile.TemporaryDirectory(prefix='boq_gpu_check_') as tmp:
        args.work = args.work or Path(tmp)
        os.environ.setdefault('BOQ_VPR_CACHE', str(Path(args.work) / 'cache'))

        def skippable(name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
            def run() -> Any:
                if name in args.skip:
                    raise Skip('--skip')
                return fn()
            return run

        report.step('environment', lambda: environment(plan, report), budget)
        images = report.step('images', skippable('images', lambda: folder_places(args.images, plan.places)
                                                 if args.images else generated_places(plan.places, plan.frame_size)),
                             budget, store=False)
        if images is not None:
            report.data['results']['images'] = {
                'database': len(images[0]), 'queries': len(images[1]), 'frame_size': list(images[0][0].shape[:2]),
                'source': str(args.images) if args.images else 'generated: a random texture per place; the query '
                          'is a shifted, re-lit, noisy view of its database image'}
        compile_queue: list = []
        inference: dict[str, dict] = {}
        for name, config in plan.models.items():
            step = f'inference:{name}'

            def infer(name: str = name, config: Any = config) -> dict:
                if images is None:
                    raise Skip('no images')
                return run_inference(name, config, plan, images, budget, args, report.data['skipped'],
                                     compile_queue)
            res = report.step(step, skippable(step, infer), budget, need_s=30)
            if res:
                inference[name] = res
        report.step('training_steps', skippable('training_steps', lambda: run_training_steps(plan, budget)), budget,
                    need_s=40)

        def node() -> dict:
            if images is None:
                raise Skip('no images')
            return run_node_latency(plan, images, inference, args)
        report.step('node_latency', skippable('node_latency', node), budget, need_s=20)
        report.step('training_run', skippable('training_run', lambda: run_training_run(plan, Path(args.work))), budget,
                    need_s=90 if not plan.dry_run else 0)
        report.step('gpu_tests', skippable('gpu_tests', lambda: run_gpu_tests(plan, args.out, budget)), budget,
                    need_s=60)
        report.step('compile', skippable('compile', lambda: run_compile(compile_queue, plan, budget, inference)),
                    budget)
        compile_queue.clear()
        free_memory()
    report.data['seconds'] = round(time.monotonic() - budget.start, 1)
    report.data['finished'] = dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')
    report.save()
    report.data = jsonable(report.data)
    text = table(report.data)
    print(f'\nsaved {args.out / JSON_NAME} ({report.data["seconds"]} s)\n')
    print(text, end='')
    return 1 if report.failed else 0


if __name__ == '__main__':
    sys.exit(main())
