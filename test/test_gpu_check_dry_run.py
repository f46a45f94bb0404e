"""The offline GPU check, run on the CPU (``DRY_RUN=1 scripts/gpu_check_offline.sh``).

So that a broken script is found before it runs on a GPU machine: its steps, the JSON layout, the skip reasons, the
files it leaves and the table printed last. Figures are not checked (no timing thresholds).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
gpu_check = load_script('gpu_check')
gpu_check_inference = load_script('gpu_check_inference')

STATUSES = {'ok', 'skipped', 'failed'}


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
    """Run the offline script once, dry, with a carried-wheels folder.

    The folder holds one wheel this Python has (numpy) and one it lacks.
    """
    tmp = tmp_path_factory.mktemp('gpu_check')
    wheels = tmp / 'wheels'
    wheels.mkdir()
    (wheels / 'numpy-1.0-py3-none-any.whl').write_bytes(b'')
    (wheels / 'boq_vpr_never_installed-1.0-py3-none-any.whl').write_bytes(b'')
    out = tmp / 'out'
    env = dict(os.environ, DRY_RUN='1', OUT=str(out), WHEELS=str(wheels), PYTHON=sys.executable,
               SITE=str(tmp / 'site'), BOQ_VPR_CACHE=str(tmp / 'cache'))
    proc = subprocess.run(['bash', str(ROOT / 'scripts' / 'gpu_check_offline.sh')], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    report = json.loads((out / gpu_check.JSON_NAME).read_text()) if (out / gpu_check.JSON_NAME).is_file() else None
    return proc, out, report, tmp


@pytest.mark.slow
def test_dry_run_succeeds_and_installs_nothing(dry_run):
    proc, out, report, tmp = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert 'would install into' in proc.stdout and 'boq_vpr_never_installed-1.0' in proc.stdout
    assert 'numpy-1.0' not in proc.stdout.split('would install into')[1].splitlines()[0]   # present: not installed
    assert 'would run' in proc.stdout and '--no-deps' in proc.stdout
    assert not (tmp / 'site').exists(), 'the dry run installed something'


@pytest.mark.slow
def test_dry_run_files_and_table_last(dry_run):
    proc, out, report, _ = dry_run
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8, files
    assert {gpu_check.JSON_NAME, gpu_check.TABLE_NAME, 'gpu_check.log'} <= set(files)
    table = (out / gpu_check.TABLE_NAME).read_text()
    assert proc.stdout.rstrip().endswith(table.rstrip()), 'the table is not the last thing printed'
    assert table.startswith('boq_vpr GPU check (cpu-dry-run)')
    for line in ('torch fp32 eager', 'torch bf16 graph', 'training steps, preset resnet50_16384',
                 'node pipeline without DDS', 'training run cpu_small', 'skipped tensorrt:'):
        assert line in table, line


@pytest.mark.slow
def test_dry_run_json_layout(dry_run):
    _, _, report, _ = dry_run
    assert report is not None
    assert report['format_version'] == gpu_check.FORMAT_VERSION and report['mode'] == 'cpu-dry-run'
    assert [s['name'] for s in report['steps']] == list(gpu_check.STEP_NAMES)
    for s in report['steps']:
        assert s['status'] in STATUSES and isinstance(s['seconds'], float)
        assert s['status'] != 'failed', s
        if s['status'] == 'skipped':
            assert s['reason'], s
    status = {s['name']: s['status'] for s in report['steps']}
    assert status['gpu_tests'] == 'skipped' and all(
        status[n] == 'ok' for n in gpu_check.STEP_NAMES if n != 'gpu_tests'), status
    r = report['results']
    assert r['images']['database'] == r['images']['queries'] > 0
    for key in ('inference:resnet50_16384', 'inference:dinov2_12288'):
        res = r[key]
        assert res['reference']['what'] == 'torch eager fp32 on the CPU'
        names = [v['variant'] for v in res['variants']]
        assert names[:9] == [f'torch {p} {m}' for p in gpu_check_inference.PRECISIONS
                             for m in gpu_check_inference.MODES]
        assert {'onnxruntime fp32', 'tensorrt fp16'} <= set(names)
        for v in res['variants']:
            assert v['status'] in STATUSES and v['status'] != 'failed', v
            if v['status'] == 'ok':
                assert set(v['timing']) == {str(b) for b in gpu_check_inference.BATCHES}
                assert v['timing']['1']['cpu_input']['x_eager_fp32'] > 0
                p = v['parity_vs_cpu_fp32']
                assert p['finite'] and 0.99 < p['min_cosine'] <= 1 + 1e-9 and 0 <= p['top1_agreement'] <= 1
                assert isinstance(v['correct'], bool)
            else:
                assert v['reason']
        by_name = {v['variant']: v for v in res['variants']}
        assert by_name['torch fp32 eager']['status'] == 'ok'
        assert by_name['torch fp32 eager']['timing']['8']['cpu_input']['x_eager_fp32'] == pytest.approx(1.0)
        assert 'CUDA' in by_name['torch fp32 cudagraph']['reason']
        assert 'fp16 on CPU' in by_name['torch fp16 graph']['reason']
        assert res['fastest_correct_b1'] in by_name
    ts = r['training_steps']
    assert ts['preset'] == 'resnet50_16384' and ts['images_per_s'] > 0 and ts['batch_images'] == 16
    assert all(np.isfinite(ts['losses']))
    node = r['node_latency']
    assert node['variants'] and all(v['frames'] == 12 and v['total']['p50_ms'] > 0 for v in node['variants'])
    assert all(sum(v['outcomes'].values()) == 12 for v in node['variants'])
    run = r['training_run']
    assert run['preset'] == 'cpu_small' and len(run['epoch_losses']) == 2 and isinstance(run['loss_went_down'], bool)
    comp = r['compile']['resnet50_16384'][0]
    assert comp['status'] == 'ok' and comp['compile_backend'] == 'eager'


@pytest.mark.slow
def test_dry_run_skip_reasons(dry_run):
    _, _, report, _ = dry_run
    skipped = report['skipped']
    assert 'dry run' in skipped['cuda'].lower()
    assert 'tensorrt' in skipped and 'offline' in skipped['tensorrt']
    assert 'onnxruntime-gpu' in skipped
    res = report['results']['inference:resnet50_16384']
    trt = next(v for v in res['variants'] if v['variant'] == 'tensorrt fp32')
    assert trt['status'] == 'skipped' and trt['reason'] == skipped['tensorrt']


# ---------------------------------------------------------------- pieces, fast

def test_generated_places_revisit_their_database_image():
    db, queries = gpu_check_inference.generated_places(3, (48, 64), seed=1)
    assert len(db) == len(queries) == 3
    assert all(im.shape == (48, 64, 3) and im.dtype == np.uint8 for im in db + queries)
    again, _ = gpu_check_inference.generated_places(3, (48, 64), seed=1)
    assert all((a == b).all() for a, b in zip(db, again))
    assert not (db[0] == db[1]).all()


def test_parity_counts_disagreements():
    rng = np.random.default_rng(0)
    ref = gpu_check_inference._normalize(rng.normal(size=(8, 16)))
    same = gpu_check_inference.parity(ref.copy(), ref, 4)
    assert same['min_cosine'] == pytest.approx(1.0) and same['top1_agreement'] == 1.0
    swapped = ref.copy()
    swapped[:4] = ref[[1, 0, 2, 3]]      # two database rows trade places: queries that chose them now disagree
    p = gpu_check_inference.parity(swapped, ref, 4)
    top = (ref[4:] @ ref[:4].T).argmax(1)
    assert p['top1_agreement'] == pytest.approx(1 - np.isin(top, [0, 1]).mean())


def _variant(name, precision, mode, ms1, ms8, cos=1.0, top1=1.0, backend='torch'):
    t = {b: {'cpu_input': {'p50_ms_per_image': ms}} for b, ms in (('1', ms1), ('8', ms8))}
    return {'variant': name, 'backend': backend, 'precision': precision, 'mode': mode, 'status': 'ok', 'timing': t,
            'parity_vs_cpu_fp32': {'min_cosine': cos, 'top1_agreement': top1, 'finite': True}}


def test_fastest_correct_skips_wrong_variants():
    result = {'variants': [
        _variant('torch fp32 eager', 'fp32', 'eager', 10, 5),
        _variant('torch fp16 graph', 'fp16', 'graph', 4, 2),
        _variant('torch fp16 cudagraph', 'fp16', 'cudagraph', 2, 1.5),
        _variant('torch bf16 graph', 'bf16', 'graph', 1, 1, cos=0.9),        # fast but wrong
        {'variant': 'tensorrt fp16', 'backend': 'tensorrt', 'precision': 'fp16', 'mode': '-',
         'status': 'skipped', 'reason': 'no TensorRT'},
    ]}
    gpu_check_inference._ratios_and_verdicts(result)
    v = {x['variant']: x for x in result['variants']}
    assert v['torch bf16 graph']['correct'] is False and v['torch fp16 graph']['correct'] is True
    assert v['torch fp16 graph']['timing']['1']['cpu_input']['x_eager_fp32'] == pytest.approx(2.5)
    assert result['fastest_correct_b1'] == 'torch fp16 cudagraph'
    assert result['fastest_correct_torch_backend_b1'] == 'torch fp16 graph'


def test_table_reports_skips_and_failures():
    data = {'mode': 'gpu', 'started': 'now', 'settings': {'weights': 'random (seeded)'},
            'results': {'environment': {'gpu': 'X', 'torch': '2', 'torch_cuda': '13'}},
            'steps': [{'name': 'training_steps', 'status': 'failed', 'reason': 'RuntimeError: boom'}],
            'skipped': {'tensorrt': 'not installed'}}
    text = gpu_check.table(data)
    assert 'step training_steps: failed: RuntimeError: boom' in text and 'skipped tensorrt: not installed' in text
