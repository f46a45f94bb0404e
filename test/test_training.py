"""Training, from its configuration to a real run on Nordland frames.

Configuration precedence, schedule, freezing, backbone weights, CLI, and a real training run on
Nordland frames (CPU) whose weights load into the inference encoder.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip('lightning')
pytest.importorskip('pytorch_metric_learning')
pytest.importorskip('pandas')
pytest.importorskip('scipy')

from boq_vpr.errors import CheckpointError, ConfigError  # noqa: E402
from boq_vpr.models import ModelConfig, build_model, load_weights  # noqa: E402
from boq_vpr.models.checkpoint import check_state_dict, read_state_dict  # noqa: E402
from training.backbone import (count_parameters, enable_gradient_checkpointing, freeze_backbone,  # noqa: E402
                               load_backbone_weights)
from training.config import PRESETS, TrainConfig, load_config  # noqa: E402
from training.module import BoQTrainingModule, WarmupStepSchedule  # noqa: E402

# a ResNet-18 + BoQ small enough to train on two CPU cores in seconds (Nordland's native 32x64)
TINY = {'name': 'tiny_resnet18', 'backbone': 'resnet18', 'image_size': [32, 64], 'in_channels': 256,
        'proj_channels': 64, 'num_queries': 8, 'num_layers': 1, 'row_dim': 4}
TINY_VIT = ModelConfig('tiny_vit', 'dinov2_custom', (28, 56), 96, 64, 8, 1, 4,
                       vit={'embed_dim': 96, 'depth': 4, 'num_heads': 2, 'img_size': 56})


# ---------------------------------------------------------------- configuration

def test_presets_load_and_validate():
    assert {'resnet50_16384', 'dinov2_12288', 'cpu_small'} <= set(PRESETS)
    r50 = load_config('resnet50_16384')
    assert (r50.model, r50.trainable_blocks, r50.data.image_size, r50.data.images_per_place) == \
        ('resnet50_16384', 1, (320, 320), 4)
    assert (r50.loss.alpha, r50.loss.beta, r50.loss.base, r50.loss.miner_epsilon) == (1.0, 50.0, 0.0, 0.1)
    assert r50.data.randaugment_ops == 3
    vit = load_config('dinov2_12288')
    assert (vit.trainable_blocks, vit.data.image_size, vit.data.val_image_size) == (2, (280, 280), (322, 322))
    assert load_config('cpu_small').trainer.accelerator == 'cpu'


def test_config_precedence_command_line_over_file_over_defaults(tmp_path):
    f = tmp_path / 'mine.yaml'
    f.write_text('model: resnet18_1024\noptim:\n  lr: 0.001\n  warmup_steps: 7\ntrainer:\n  max_epochs: 3\n')
    c = load_config(f, overrides={'trainer': {'max_epochs': 9}},
                    assignments=['optim.lr=5e-4', 'data.image_size=64x128'])
    assert c.model == 'resnet18_1024'                       # file over default
    assert c.optim.warmup_steps == 7                        # file
    assert c.optim.lr == 5e-4                               # command line over file
    assert c.trainer.max_epochs == 9                        # command line over file
    assert c.data.image_size == (64, 128)
    assert c.optim.weight_decay == TrainConfig().optim.weight_decay   # default kept
    back = load_config(None, overrides=c.to_dict())         # the dumped form loads back to the same
    assert back == c


@pytest.mark.parametrize('assignment, message', [
    ('optim.learning_rate=1', 'unknown key.*optim.learning_rate.*valid: optim.lr'),
    ('trainer.max_epochs=many', 'trainer.max_epochs: expected an integer'),
    ('data.image_size=[1,2,3]', 'data.image_size: expected a size'),
    ('model=resnet1000', 'unknown model configuration .resnet1000.; valid:'),
    ('data.val_sets=[{layout: tokyo, root: /x}]', "layout 'tokyo' unknown; valid: msls, npy, pitts"),
    ('model.image_size=[30, 60]', 'model: a mapping needs the ModelConfig fields'),
])
def test_config_errors_name_the_key(assignment, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, assignments=[assignment])


def test_config_rejects_vit_sizes_off_the_patch_grid():
    with pytest.raises(ConfigError, match='multiples of 14'):
        load_config('dinov2_12288', assignments=['data.image_size=300'])
    with pytest.raises(ConfigError, match='no preset or file'):
        load_config('nonexistent_preset')


# ---------------------------------------------------------------- schedule, freezing, weights

def test_warmup_then_step_decay():
    s = WarmupStepSchedule(warmup_steps=4, milestones=[2, 3], gamma=0.5, steps_per_epoch=10)
    assert [s(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(19) == 1.0 and s(20) == 0.5 and s(29) == 0.5 and s(30) == 0.25 and s(99) == 0.25
    assert WarmupStepSchedule(0, [], 0.1, 5)(0) == 1.0


def test_resnet_freezing_keeps_only_layer3_trainable():
    model = build_model('resnet18_1024', seed=0)
    frozen = freeze_backbone(model, 1)
    trainable = {n.split('.')[1] for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {'6'}                                   # backbone.net.6 = layer3
    assert all(p.requires_grad for p in model.aggregator.parameters())
    module = BoQTrainingModule(model, TrainConfig().optim, TrainConfig().loss, frozen=frozen)
    module.train()
    bns = [m for m in model.backbone.net[:6].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)            # frozen batch norms keep their statistics
    assert all(m.training for m in model.backbone.net[6].modules())
    keys = set(model.state_dict())
    assert set(module.state_dict()) == {'model.' + k for k in keys}   # loss and miner add no state
    with pytest.raises(ConfigError, match='exceeds the 4 stages'):
        freeze_backbone(build_model('resnet18_1024', seed=0), 5)


def test_dinov2_freezing_keeps_last_two_blocks_and_checkpointing_is_exact():
    model = build_model(TINY_VIT, seed=0)
    freeze_backbone(model, 2)
    names = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(('dino.blocks.2.', 'dino.blocks.3.')) for n in names)
    x = torch.randn(2, 3, 28, 56)
    ref = build_model(TINY_VIT, seed=0)
    freeze_backbone(ref, 2)
    keys_before = list(model.state_dict())
    assert enable_gradient_checkpointing(model) == 2
    assert list(model.state_dict()) == keys_before
    out, out_ref = model(x), ref(x)
    torch.testing.assert_close(out, out_ref)
    out.pow(2).sum().backward()
    out_ref.pow(2).sum().backward()
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, msg=n)
    n_train, n_total = count_parameters(model)
    assert 0 < n_train < n_total


def test_backbone_weights_from_torchvision_and_dinov2_files(tmp_path):
    import torchvision
    tv = torchvision.models.resnet18(weights=None).state_dict()    # a torchvision file layout
    torch.save(tv, tmp_path / 'resnet18-imagenet.pth')
    model = build_model('resnet18_1024', seed=3)
    load_backbone_weights(model, tmp_path / 'resnet18-imagenet.pth')
    torch.testing.assert_close(model.backbone.net[6][1].conv2.weight, tv['layer3.1.conv2.weight'])
    torch.testing.assert_close(model.backbone.net[1].running_var, tv['bn1.running_var'])
    vit = build_model(TINY_VIT, seed=1)
    hub_style = {k[len('dino.'):]: v + 1 for k, v in vit.backbone.state_dict().items()}   # DINOv2 release keys
    torch.save(hub_style, tmp_path / 'dinov2_tiny.pth')
    other = build_model(TINY_VIT, seed=2)
    load_backbone_weights(other, tmp_path / 'dinov2_tiny.pth')
    torch.testing.assert_close(other.backbone.dino.blocks[3].mlp.fc2.weight, hub_style['blocks.3.mlp.fc2.weight'])
    with pytest.raises(CheckpointError, match='missing keys'):
        load_backbone_weights(build_model('resnet50_16384', seed=0), tmp_path / 'resnet18-imagenet.pth')


# ---------------------------------------------------------------- Nordland: build, train, encode

def nordland_name(i: int) -> str:
    return f'images-{(i + 1) * 10:05d}.png'


TRAIN_FRAMES = range(0, 1200)          # 240 places of 2 frames x 2 seasons (one place per 50 m)
VAL_FRAMES = range(3000, 3200)         # held out: 200 summer database images, 200 winter queries


@pytest.fixture(scope='module')
def nordland_sets(nordland_dir, tmp_path_factory):
    """Build a training set and a validation set from Nordland frames.

    A GSV-layout training set built with make-train-set from summer and winter traversals, and a
    held-out Pittsburgh-style validation set (10 m per frame: positives within 25 m = +-2 frames).
    """
    from training.make_train_set import Traversal, build_train_set
    root = tmp_path_factory.mktemp('nordland')
    for season in ('summer', 'winter'):
        lines = ['image,x,y'] + [f'{nordland_name(i)},{10.0 * i},0' for i in TRAIN_FRAMES]
        (root / f'{season}.csv').write_text('\n'.join(lines) + '\n')
    summary = build_train_set([Traversal(nordland_dir / s, root / f'{s}.csv') for s in ('summer', 'winter')],
                              root / 'gsv', city='Nordland', radius=10.0, min_spacing=50.0,
                              images_per_place=4, max_images_per_place=4)
    val = root / 'val'
    for sub, season in (('database', 'summer'), ('queries', 'winter')):
        (val / sub).mkdir(parents=True)
        for i in VAL_FRAMES:
            shutil.copy(nordland_dir / season / nordland_name(i),
                        val / sub / f'@{10.0 * i:09.2f}@0.00@{season}{i}@.png')
    return root, summary


def tiny_config(root: Path, out: Path, **trainer) -> TrainConfig:
    return load_config(None, overrides={
        'model': TINY, 'trainable_blocks': None,
        'data': {'train_root': str(root / 'gsv'), 'image_size': [32, 64], 'places_per_batch': 16,
                 'num_workers': 0, 'randaugment_ops': 3, 'randaugment_magnitude': 5,   # 32x64 grey frames
                 'val_sets': [{'layout': 'pitts', 'root': str(root / 'val'), 'name': 'nordland'}],
                 'val_batch_size': 200},
        'optim': {'lr': 1e-3, 'warmup_steps': 5, 'milestones': [100], 'gamma': 1.0},
        'trainer': {'max_epochs': 6, 'check_val_every_n_epoch': 2, 'accelerator': 'cpu', 'deterministic': True,
                    'seed': 1, 'out_dir': str(out), 'progress_bar': False, 'log_every_n_steps': 5, **trainer}})


def test_train_on_nordland_loss_down_recall_up_weights_load_into_encoder(nordland_sets, tmp_path):
    from boq_vpr.encoder import Encoder
    from boq_vpr.inputs.images import load_image
    from training.run import TrainingRun
    from training.valsets import ValSetConfig, load_valset

    root, built = nordland_sets
    assert built.places == 240 and built.images == 960
    assert built.per_traversal_images == {'summer': 480, 'winter': 480}
    config = tiny_config(root, tmp_path / 'run')
    run = TrainingRun(config)
    summary = run.summary()
    assert '240 places, 960 images in 1 cities' in summary and '16 places x 4 images = 64 images' in summary
    assert 'nordland (pitts): 200 database, 200 queries' in summary
    result = run.fit()

    losses = [h['train_loss'] for h in result.history]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    before = result.untrained_recalls['nordland']['R1']
    after = result.final_recalls['nordland']['R1']
    assert after >= before + 0.1, (before, after, [h.get('val') for h in result.history])
    # the figures quoted in the README (pytest -s shows them)
    print(f'\nnordland tiny training: loss {losses[0]:.3f} -> {losses[-1]:.3f}, held-out recall@1 '
          f'{before:.3f} -> {after:.3f}, {result.train_images_per_s:.1f} images/s in training steps')
    assert [i for i, h in enumerate(result.history) if 'val' in h] == [1, 3, 5]

    # the weights load strictly into the inference model and encode through the Encoder,
    # reproducing the validation recall of the training loop
    mc = ModelConfig.from_dict(json.loads((tmp_path / 'run' / 'model_config.json').read_text()))
    assert mc == config.model_config()
    load_weights(build_model(mc), result.weights)
    load_weights(build_model(mc), result.last_weights)
    for ckpt in (result.best_checkpoint, tmp_path / 'run' / 'checkpoints' / 'last.ckpt'):
        check_state_dict(build_model(mc), read_state_dict(ckpt), source=str(ckpt))   # 'model.' stripped
    vs = load_valset(ValSetConfig(layout='pitts', root=str(root / 'val'), name='nordland'))
    encoder = Encoder(mc, weights=result.last_weights, backend='torch', device='cpu', batch_size=100)
    desc = encoder.encode([load_image(p) for p in vs.images])
    assert desc.shape == (400, mc.descriptor_dim)
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)
    assert vs.recalls(desc)[1] == pytest.approx(after, abs=0.006)

    metrics = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    assert metrics['untrained']['nordland']['R1'] == before and len(metrics['history']) == 6
    assert metrics['best_val_R1'] == pytest.approx(max(h['val']['nordland']['R1'] for h in result.history
                                                       if 'val' in h))
    assert load_config(tmp_path / 'run' / 'config.yaml') == config



def test_resume_continues_steps_and_history(tmp_path):
    """Train 2 epochs on a small generated set, resume from last.ckpt for a third."""
    import cv2
    from training.run import TrainingRun
    rng = np.random.default_rng(0)
    city = tmp_path / 'gsv' / 'Images' / 'Gen'
    city.mkdir(parents=True)
    (tmp_path / 'gsv' / 'Dataframes').mkdir()
    rows = ['place_id,year,month,northdeg,city_id,lat,lon,panoid']
    from training.gsv import image_name
    for pid in range(8):
        for k in range(4):
            cv2.imwrite(str(city / image_name('Gen', pid, 2020, k + 1, 0, 1.5, 2.5, f'p{pid}k{k}')),
                        rng.integers(0, 256, (32, 64, 3), dtype=np.uint8))
            rows.append(f'{pid},2020,{k + 1},0,Gen,1.5,2.5,p{pid}k{k}')
    (tmp_path / 'gsv' / 'Dataframes' / 'Gen.csv').write_text('\n'.join(rows) + '\n')
    for sub in ('database', 'queries'):
        for i in range(4):
            (tmp_path / 'val' / sub).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(tmp_path / 'val' / sub / f'@{100 * i:06d}@0@{sub}{i}@.png'),
                        rng.integers(0, 256, (32, 64, 3), dtype=np.uint8))

    def config(epochs: int, resume: str | None = None) -> TrainConfig:
        c = tiny_config(tmp_path, tmp_path / 'run', max_epochs=epochs, check_val_every_n_epoch=1, resume=resume)
        c.data.places_per_batch = 4
        return c
    first = TrainingRun(config(2)).fit()
    assert [h['epoch'] for h in first.history] == [0, 1] and first.history[-1]['steps'] == 4
    last = tmp_path / 'run' / 'checkpoints' / 'last.ckpt'
    resumed = TrainingRun(config(3, str(last))).fit()
    assert resumed.untrained_recalls == {}                            # no untrained pass on resume
    assert [h['epoch'] for h in resumed.history] == [0, 1, 2]         # the earlier epochs come from the checkpoint
    assert resumed.history[:2] == first.history
    assert resumed.history[2]['steps'] == 6 and 'val' in resumed.history[2]
    metrics = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    assert [h['epoch'] for h in metrics['history']] == [0, 1, 2]
    load_weights(build_model(ModelConfig.from_dict(TINY)), resumed.weights)


# ---------------------------------------------------------------- command line

def test_cli_dry_run_prints_summary_and_resolved_config(nordland_sets, tmp_path, capsys):
    from training.cli import main
    root, _ = nordland_sets
    rc = main(['train', '--config', 'cpu_small', '--data', str(root / 'gsv'), '--val', f'pitts:{root / "val"}',
               '--set', 'optim.lr=1e-3', '--epochs', '3', '--image-size', '64x128', '--out', str(tmp_path / 'o'),
               '--dry-run'])
    out = capsys.readouterr().out
    assert rc == 0
    assert 'AdamW lr 0.001' in out and '3 epochs' in out and 'train 64x128' in out
    assert 'val (pitts): 200 database, 200 queries' in out
    assert 'max_epochs: 3' in out and not (tmp_path / 'o').exists()


def test_boq_vpr_cli_train_and_make_train_set(tmp_path, capsys):
    from boq_vpr.cli import main
    with pytest.raises(SystemExit) as e:
        main(['train', '--help'])
    assert e.value.code == 0
    assert '--config' in capsys.readouterr().out
    import cv2
    images = tmp_path / 'a'
    images.mkdir()
    lines = ['image,x,y']
    for i, x in enumerate([0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0]):
        cv2.imwrite(str(images / f'{i}.png'), np.full((16, 16, 3), 20 * i, np.uint8))
        lines.append(f'{i}.png,{x},0')
    (tmp_path / 'a.csv').write_text('\n'.join(lines) + '\n')
    rc = main(['make-train-set', '--traversal', str(images), str(tmp_path / 'a.csv'), '--out', str(tmp_path / 'gsv'),
               '--radius', '2.0', '--city', 'Yard'])
    assert rc == 0
    assert 'city Yard, 2 places, 8 images from 8 frames' in capsys.readouterr().out
    assert main(['make-train-set', '--out', str(tmp_path / 'x')]) == 2
    assert 'give at least one --traversal' in capsys.readouterr().err
    assert main(['train', '--data', str(tmp_path / 'missing'), '--model', 'resnet18_1024', '--dry-run']) == 2
    assert 'Dataframes' in capsys.readouterr().err


def test_boq_vpr_train_without_the_training_package_explains(monkeypatch):
    import argparse
    import importlib
    from boq_vpr.commands import train as command

    real = importlib.import_module

    def no_training(name, *args):
        if name.startswith('training'):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real(name, *args)
    monkeypatch.setattr(importlib, 'import_module', no_training)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(['--config', 'cpu_small', '--data', 'x'])   # options are accepted, then explained
    with pytest.raises(ConfigError, match=r"training module is not available.*pip install -e '.\[training\]'"):
        command.run(args)
