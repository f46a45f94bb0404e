"""The Lightning module.

Multi-similarity loss and miner, AdamW, warmup then step decay, validation recall@k on each
validation set.
"""
from __future__ import annotations

import bisect
import logging
from typing import Sequence

import lightning as L
import numpy as np
import torch
from pytorch_metric_learning import distances, losses, miners

from boq_vpr.models.vpr import VPRModel

from .backbone import set_frozen_eval
from .config import LossConfig, OptimConfig
from .metrics import DEFAULT_K
from .valsets import ValSet

log = logging.getLogger(__name__)


class WarmupStepSchedule:
    """Learning-rate factor per optimizer step.

    Linear warmup over ``warmup_steps``, times ``gamma`` for each milestone epoch passed
    (``steps_per_epoch`` steps per epoch).
    """

    def __init__(self, warmup_steps: int, milestones: Sequence[int], gamma: float, steps_per_epoch: int) -> None:
        assert steps_per_epoch >= 1 and warmup_steps >= 0 and 0 < gamma <= 1
        self.warmup_steps = int(warmup_steps)
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        self.steps_per_epoch = int(steps_per_epoch)

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        epoch = step // self.steps_per_epoch
        return warm * self.gamma ** bisect.bisect_right(self.milestones, epoch)


def make_loss(cfg: LossConfig) -> tuple[losses.BaseMetricLossFunction, miners.BaseMiner]:
    """Multi-similarity loss on dot products and its miner on cosine similarity (GSV-Cities/BoQ)."""
    loss = losses.MultiSimilarityLoss(alpha=cfg.alpha, beta=cfg.beta, base=cfg.base,
                                      distance=distances.DotProductSimilarity())
    miner = miners.MultiSimilarityMiner(epsilon=cfg.miner_epsilon, distance=distances.CosineSimilarity())
    return loss, miner


class BoQTrainingModule(L.LightningModule):
    """Trains ``model`` (a ``VPRModel``; its state_dict is saved under ``model.``)."""

    def __init__(self, model: VPRModel, optim: OptimConfig, loss: LossConfig,
                 val_sets: Sequence[ValSet] = (), frozen: Sequence[torch.nn.Module] = (),
                 extra_checkpoint: dict | None = None, k_values: Sequence[int] = DEFAULT_K) -> None:
        super().__init__()
        self.model = model
        self.optim_cfg = optim
        self.loss_fn, self.miner = make_loss(loss)
        self.val_sets = list(val_sets)
        self.frozen = list(frozen)
        self.extra_checkpoint = extra_checkpoint or {}
        self.k_values = tuple(k_values)
        self.history: list[dict] = []        # one entry per finished training epoch
        self.last_recalls: dict[str, dict[int, float]] = {}   # of the latest validation
        self._epoch_recalls: dict[str, dict[int, float]] = {}  # of this training epoch's validation, if any
        self._epoch_losses: list[float] = []
        self._epoch_mined: list[float] = []
        self._val_outputs: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def train(self, mode: bool = True) -> 'BoQTrainingModule':
        super().train(mode)
        if mode:
            set_frozen_eval(self.frozen)
        return self

    # ------------------------------------------------------------------ training
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        p, k, c, h, w = images.shape
        descriptors = self.model(images.view(p * k, c, h, w))
        labels = labels.view(-1)
        loss, mined = self.compute_loss(descriptors, labels)
        self.log('train/loss', loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=p * k, sync_dist=True)
        self.log('train/mined_pairs', mined, on_step=False, on_epoch=True, batch_size=p * k, sync_dist=True)
        self._epoch_losses.append(float(loss.detach()))
        self._epoch_mined.append(float(mined))
        return loss

    @torch.compiler.disable()
    def compute_loss(self, descriptors: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss over the miner's pairs (in float32) and the fraction of positive pairs kept."""
        descriptors = descriptors.float()
        pairs = self.miner(descriptors, labels)
        loss = self.loss_fn(descriptors, labels, pairs)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        n_pos = max(1, int(same.sum()) - labels.numel())
        return loss, torch.tensor(pairs[0].numel() / n_pos)

    def on_train_epoch_start(self) -> None:
        self._epoch_losses.clear()
        self._epoch_mined.clear()

    def _epoch_entry(self) -> dict:
        """History entry of the current training epoch (its steps so far, its validation if run)."""
        entry = {'epoch': int(self.current_epoch),
                 'train_loss': float(np.mean(self._epoch_losses)) if self._epoch_losses else float('nan'),
                 'mined_pairs': float(np.mean(self._epoch_mined)) if self._epoch_mined else float('nan'),
                 'lr': float(self.trainer.optimizers[0].param_groups[-1]['lr']),
                 'steps': int(self.global_step)}
        if self._epoch_recalls:
            entry['val'] = {name: {f'R{k}': v for k, v in r.items()} for name, r in self._epoch_recalls.items()}
        return entry

    def on_train_epoch_end(self) -> None:
        if not self._epoch_losses:
            # resuming from a checkpoint written after this epoch's validation: Lightning ends the
            # epoch again without a step; the checkpoint's history holds it already
            self._epoch_recalls = {}
            return
        entry = self._epoch_entry()
        self._epoch_recalls = {}
        if self.history and self.history[-1]['epoch'] == entry['epoch']:
            self.history[-1] = entry          # resumed within this epoch: the full epoch replaces the part
        else:
            self.history.append(entry)
        self._epoch_losses, self._epoch_mined = [], []
        log.info('epoch %d: %s', self.current_epoch, entry)

    def configure_optimizers(self):
        o = self.optim_cfg
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
        aggregator = [p for p in self.model.aggregator.parameters() if p.requires_grad]
        groups = [{'params': aggregator, 'lr': o.lr}]
        if backbone:
            groups.insert(0, {'params': backbone, 'lr': o.lr * o.backbone_lr_mult})
        optimizer = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
        steps_per_epoch = max(1, int(self.trainer.estimated_stepping_batches) // max(1, self.trainer.max_epochs))
        schedule = WarmupStepSchedule(o.warmup_steps, o.milestones, o.gamma, steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {'optimizer': optimizer, 'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'}}

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_outputs = {}

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        images, index = batch
        desc = self.model(images).float()
        self._val_outputs.setdefault(dataloader_idx, []).append((desc.detach(), index.detach()))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        recalls_all: dict[str, dict[int, float]] = {}
        for i, vs in enumerate(self.val_sets):
            outs = self._val_outputs.get(i, [])
            desc = (torch.cat([d for d, _ in outs]) if outs
                    else torch.zeros(0, self.model.descriptor_dim, device=self.device))
            idx = torch.cat([j for _, j in outs]) if outs else torch.zeros(0, dtype=torch.long, device=self.device)
            if self.trainer.world_size > 1:     # every rank saw a shard (padded): gather and de-pad by index
                desc = self.all_gather(desc).flatten(0, 1)
                idx = self.all_gather(idx).flatten(0, 1)
            full = np.zeros((len(vs.images), desc.shape[1]), np.float32)
            seen = np.zeros(len(vs.images), bool)
            full[idx.cpu().numpy()] = desc.cpu().numpy()
            seen[idx.cpu().numpy()] = True
            if not seen.all():   # limit_val_batches or an interrupted loop: no honest recall
                log.warning('%s: %d of %d images were not encoded; recall not computed', vs.name,
                            int((~seen).sum()), len(seen))
                continue
            recalls = vs.recalls(full, self.k_values)
            recalls_all[vs.name] = recalls
            for k, v in recalls.items():
                self.log(f'val/{vs.name}/R{k}', v, rank_zero_only=True)
            if i == 0:
                self.log('val_R1', recalls[1] if 1 in recalls else recalls[min(recalls)])
        self.last_recalls = recalls_all
        self._epoch_recalls = recalls_all if self.trainer.state.fn == 'fit' else {}
        self._val_outputs = {}
        if recalls_all:
            log.info('validation: %s',
                     {n: {f'R{k}': round(v, 4) for k, v in r.items()} for n, r in recalls_all.items()})

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        history = list(self.history)
        if self._epoch_losses and (not history or history[-1]['epoch'] != self.current_epoch):
            history.append(self._epoch_entry())   # saved by a callback before this module's epoch end
        checkpoint['boq_vpr'] = dict(self.extra_checkpoint, history=history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get('boq_vpr', {}).get('history', []))   # resume: keep the earlier epochs
