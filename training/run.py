"""A training run: data, model and Lightning trainer from a TrainConfig.

It writes weights the inference side loads (``boq_vpr.models.load_weights``,
``boq_vpr.encoder.Encoder``, ``boq-vpr export``).

Output folder (``trainer.out_dir``)::

    config.yaml          the resolved configuration
    checkpoints/         Lightning checkpoints: the best validation recall@1 and last.ckpt (resume)
    model.pt             plain state_dict (backbone.*, aggregator.*): best recall@1, or the last
                         weights when there is no validation set
    model_last.pt        the weights after the last epoch
    model_config.json    the ModelConfig to build before loading model.pt
    metrics.json         per-epoch loss and recall@k, recall of the untrained model, throughput
    logs/                CSV logs of Lightning
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from boq_vpr.errors import ConfigError
from boq_vpr.models.checkpoint import load_weights, read_state_dict
from boq_vpr.models.vpr import build_model
from boq_vpr.preprocessing import Preprocessor

from .backbone import count_parameters, enable_gradient_checkpointing, freeze_backbone, load_backbone_weights
from .config import TrainConfig, dump_yaml
from .gsv import GSVCitiesDataset
from .transforms import train_transform
from .valsets import ImageListDataset, ValSet, load_valset

log = logging.getLogger(__name__)


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` -> ``16-mixed`` where CUDA trains, else ``32-true``; others unchanged."""
    if precision != 'auto':
        return precision
    on_gpu = accelerator in ('gpu', 'cuda') or (accelerator == 'auto' and torch.cuda.is_available())
    return '16-mixed' if on_gpu else '32-true'


class ThroughputMeter:
    """Training images per second between consecutive batch ends of an epoch.

    Data loading is included, validation and each epoch's first ``skip`` batches left out; CUDA is
    synchronized at each batch end so the time is the GPU's.
    """

    def __init__(self, skip: int = 2) -> None:
        self.skip = skip
        self.seconds = 0.0
        self.images = 0          # images of the measured batches
        self.total_images = 0    # images of all training batches of this fit
        self._last: float | None = None

    def callback(self):
        import lightning as L
        meter = self

        class _Meter(L.Callback):
            def on_train_epoch_start(self, trainer, pl_module) -> None:
                meter._last = None

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                if torch.cuda.is_available() and pl_module.device.type == 'cuda':
                    torch.cuda.synchronize(pl_module.device)
                now = time.perf_counter()
                n = int(batch[0].shape[0] * batch[0].shape[1])
                meter.total_images += n
                if batch_idx >= meter.skip and meter._last is not None:
                    meter.seconds += now - meter._last
                    meter.images += n
                meter._last = now
        return _Meter()

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float('nan')


@dataclass
class TrainResult:
    out_dir: Path
    weights: Path                   # model.pt
    last_weights: Path
    best_checkpoint: str | None
    untrained_recalls: dict = field(default_factory=dict)
    final_recalls: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    train_images_per_s: float = float('nan')   # steady training steps (ThroughputMeter), per process
    fit_images_per_s: float = float('nan')     # all of fit: start-up, validation and checkpoints included
    peak_gpu_memory_mib: float | None = None


class TrainingRun:
    """Everything one ``fit`` needs, built and checked up front.

    That way ``summary()`` can be printed before any training step.
    """

    def __init__(self, config: TrainConfig) -> None:
        import lightning as L
        config.validate()
        self.config = config
        c = config
        L.seed_everything(c.trainer.seed, workers=True, verbose=False)
        self.model_config = c.model_config()
        self.model = build_model(self.model_config, seed=c.trainer.seed)
        self.pretrained = None
        if c.init_weights:
            load_weights(self.model, c.init_weights)
            self.pretrained = f'BoQ weights {c.init_weights}'
        elif c.backbone_weights:
            load_backbone_weights(self.model, c.backbone_weights)
            self.pretrained = f'backbone weights {c.backbone_weights}'
        self.trainable_blocks = c.trainable_blocks
        self.frozen = freeze_backbone(self.model, c.trainable_blocks)
        if self.pretrained is None and self.frozen:
            log.warning('no pretrained weights (init_weights / backbone_weights) but %d backbone parts frozen: '
                        'they keep their random initialization; set trainable_blocks: null to train the whole '
                        'backbone, or give --backbone-weights', len(self.frozen))
        self.checkpointed = enable_gradient_checkpointing(self.model) if c.gradient_checkpointing else 0

        if not c.data.train_root:
            raise ConfigError('data.train_root is not set: give the GSV-Cities-layout dataset (--data DIR)')
        self.train_set = GSVCitiesDataset(
            c.data.train_root, c.data.cities, c.data.images_per_place,
            transform=train_transform(c.data.image_size, c.data.randaugment_ops, c.data.randaugment_magnitude),
            random_sample=c.data.random_sample_from_each_place)
        self.val_sets: list[ValSet] = [load_valset(v) for v in c.data.val_sets]
        names = [v.name for v in self.val_sets]
        if len(set(names)) != len(names):
            raise ConfigError(f'validation sets need distinct names, got {names}; set data.val_sets[i].name')
        val_size = c.data.val_image_size or self.model_config.image_size
        self.val_preprocessor = Preprocessor(tuple(val_size))
        self.precision = resolve_precision(c.trainer.precision, c.trainer.accelerator)
        self.out_dir = Path(c.trainer.out_dir)

    # ------------------------------------------------------------------ loaders
    def train_loader(self) -> DataLoader:
        d = self.config.data
        return DataLoader(self.train_set, batch_size=d.places_per_batch, shuffle=True,
                          num_workers=d.num_workers, pin_memory=torch.cuda.is_available(),
                          drop_last=len(self.train_set) > d.places_per_batch,
                          persistent_workers=d.num_workers > 0)

    def val_loaders(self) -> list[DataLoader]:
        d = self.config.data
        return [DataLoader(ImageListDataset(vs.images, self.val_preprocessor), batch_size=d.val_batch_size,
                           shuffle=False, num_workers=d.num_workers, pin_memory=torch.cuda.is_available())
                for vs in self.val_sets]

    def steps_per_epoch(self) -> int:
        d, t = self.config.data, self.config.trainer
        n = len(self.train_set)
        batches = n // d.places_per_batch if n > d.places_per_batch else 1
        if t.limit_train_batches is not None:
            lim = t.limit_train_batches
            batches = min(batches, int(lim)) if isinstance(lim, int) else max(1, int(batches * lim))
        return max(1, math.ceil(batches / t.accumulate_grad_batches))

    # ------------------------------------------------------------------ summary
    def summary(self) -> str:
        """Describe the data and hyperparameters, for printing before training."""
        c, d, o, t = self.config, self.config.data, self.config.optim, self.config.trainer
        mc = self.model_config
        n_train, n_total = count_parameters(self.model)
        s = self.train_set.summary
        steps = self.steps_per_epoch()
        lines = [
            f'model        {mc.name}: {mc.backbone} + BoQ ({mc.num_queries} queries, {mc.num_layers} blocks), '
            f'{mc.descriptor_dim}-D descriptors',
            f'parameters   {n_train / 1e6:.2f} M trainable of {n_total / 1e6:.2f} M; backbone: '
            + ('all blocks trained' if self.trainable_blocks is None else
               f'last {self.trainable_blocks} {"blocks" if mc.is_vit else "stage(s)"} trained')
            + (f'; gradient checkpointing on {self.checkpointed} blocks' if self.checkpointed else ''),
            f'init         {self.pretrained or "random weights (seed %d)" % t.seed}',
            f'train data   {s.root}: {s.places} places, {s.images} images in {len(s.cities)} cities'
            + (f'; skipped {s.skipped_places} places with < {s.images_per_place} images' if s.skipped_places else '')
            + (f'; skipped cities: {", ".join(s.skipped_cities)}' if s.skipped_cities else ''),
            f'batches      {d.places_per_batch} places x {d.images_per_place} images = '
            f'{d.places_per_batch * d.images_per_place} images, {steps} steps/epoch, {t.max_epochs} epochs',
            f'input        train {d.image_size[0]}x{d.image_size[1]} (RandAugment N={d.randaugment_ops}, '
            f'M={d.randaugment_magnitude}), validation {self.val_preprocessor.size[0]}x{self.val_preprocessor.size[1]}',
            f'loss         multi-similarity (alpha {c.loss.alpha:g}, beta {c.loss.beta:g}, base {c.loss.base:g}), '
            f'miner epsilon {c.loss.miner_epsilon:g}',
            f'optimizer    AdamW lr {o.lr:g} (backbone x{o.backbone_lr_mult:g}), weight decay {o.weight_decay:g}, '
            f'warmup {o.warmup_steps} steps, x{o.gamma:g} at epochs {o.milestones}',
            f'trainer      precision {self.precision}, accelerator {t.accelerator}, devices {t.devices}, '
            f'nodes {t.num_nodes}, strategy {t.strategy}, seed {t.seed}',
        ]
        if self.val_sets:
            lines += [f'validation   {vs.describe()}' for vs in self.val_sets]
        else:
            lines.append('validation   none: model.pt will be the last weights')
        lines.append(f'output       {self.out_dir}' + (f' (resuming {t.resume})' if t.resume else ''))
        return '\n'.join(lines)

    # ------------------------------------------------------------------ fit
    def fit(self) -> TrainResult:
        """Train; write the output folder; return the figures."""
        import lightning as L
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lightning.pytorch.loggers import CSVLogger

        from .module import BoQTrainingModule

        c, t = self.config, self.config.trainer
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / 'config.yaml').write_text(dump_yaml(c))
        module = BoQTrainingModule(self.model, c.optim, c.loss, self.val_sets, self.frozen,
                                   extra_checkpoint={'model_config': self.model_config.to_dict(),
                                                     'train_config': c.to_dict()})
        ckpt_dir = self.out_dir / 'checkpoints'
        # last.ckpt after every training epoch (resume); Lightning's save_last only follows top-k saves
        last_cb = ModelCheckpoint(dirpath=ckpt_dir, filename='last', monitor=None, save_top_k=1,
                                  save_on_train_epoch_end=True, enable_version_counter=False)
        callbacks = [last_cb]
        best_cb = None
        if self.val_sets:
            best_cb = ModelCheckpoint(dirpath=ckpt_dir, monitor='val_R1', mode='max', save_top_k=1,
                                      filename='best-epoch{epoch:02d}-R1_{val_R1:.4f}', auto_insert_metric_name=False)
            callbacks.append(best_cb)
        meter = ThroughputMeter()
        callbacks.append(meter.callback())
        trainer = L.Trainer(
            max_epochs=t.max_epochs, precision=self.precision, accelerator=t.accelerator, devices=t.devices,
            num_nodes=t.num_nodes, strategy=t.strategy, sync_batchnorm=t.sync_batchnorm,
            deterministic=t.deterministic, default_root_dir=self.out_dir, callbacks=callbacks,
            logger=CSVLogger(self.out_dir, name='logs'), num_sanity_val_steps=0,
            limit_train_batches=t.limit_train_batches, check_val_every_n_epoch=t.check_val_every_n_epoch,
            log_every_n_steps=t.log_every_n_steps, enable_progress_bar=t.progress_bar,
            enable_model_summary=False, gradient_clip_val=t.gradient_clip_val,
            accumulate_grad_batches=t.accumulate_grad_batches)
        val_loaders = self.val_loaders()
        untrained: dict = {}
        if self.val_sets and t.validate_before_training and not t.resume:
            trainer.validate(module, dataloaders=val_loaders, verbose=False)
            untrained = _recalls_json(module.last_recalls)
            module.last_recalls = {}
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        trainer.fit(module, train_dataloaders=self.train_loader(),
                    val_dataloaders=val_loaders if val_loaders else None, ckpt_path=t.resume)
        elapsed = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None

        best_path = best_cb.best_model_path if best_cb is not None and best_cb.best_model_path else None
        result = TrainResult(self.out_dir, self.out_dir / 'model.pt', self.out_dir / 'model_last.pt',
                             best_path, untrained, _recalls_json(module.last_recalls),
                             module.history, meter.images_per_s,
                             meter.total_images / elapsed if elapsed > 0 else float('nan'),
                             peak)
        if trainer.is_global_zero:
            last_state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            torch.save(last_state, result.last_weights)
            if best_path:
                best_state = read_state_dict(best_path)   # strips Lightning's 'model.' prefix
                torch.save(best_state, result.weights)
            else:
                torch.save(last_state, result.weights)
            (self.out_dir / 'model_config.json').write_text(json.dumps(self.model_config.to_dict(), indent=2) + '\n')
            metrics = {'untrained': untrained, 'final': result.final_recalls, 'history': module.history,
                       'best_checkpoint': result.best_checkpoint,
                       'best_val_R1': (float(best_cb.best_model_score)
                                       if best_cb is not None and best_cb.best_model_score is not None else None),
                       'weights': str(result.weights), 'train_images_per_s': result.train_images_per_s,
                       'train_images_measured': meter.images, 'fit_images_per_s': result.fit_images_per_s,
                       'fit_seconds': elapsed, 'precision': self.precision,
                       'batch': [c.data.places_per_batch, c.data.images_per_place],
                       'image_size': list(c.data.image_size), 'world_size': trainer.world_size,
                       'peak_gpu_memory_mib': peak, 'device': _device_name()}
            (self.out_dir / 'metrics.json').write_text(json.dumps(_json_safe(metrics), indent=2) + '\n')
        return result


def _json_safe(obj):
    """NaN and infinities -> None (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _recalls_json(recalls: dict) -> dict:
    return {name: {f'R{k}': float(v) for k, v in r.items()} for name, r in recalls.items()}


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return 'cpu'


def train(config: TrainConfig) -> TrainResult:
    """Build the run from ``config`` and fit it."""
    return TrainingRun(config).fit()
