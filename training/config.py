"""Training configuration: dataclasses with defaults, YAML presets, command-line overrides.

Precedence: command line > YAML file (or preset) > defaults. Unknown keys and wrong types raise
ConfigError naming the key. Presets are YAML files in ``training/configs`` (``PRESETS``).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from boq_vpr.errors import ConfigError
from boq_vpr.models.config import MODEL_CONFIGS, ModelConfig, get_config

CONFIG_DIR = Path(__file__).resolve().parent / 'configs'
# preset name -> YAML file
PRESETS: dict[str, Path] = {p.stem: p for p in sorted(CONFIG_DIR.glob('*.yaml'))}

Size = tuple[int, int]


@dataclass
class ValSetConfig:
    """One validation set: ``layout`` is a key of ``training.valsets.LAYOUTS``."""

    layout: str = 'pitts'
    root: str = ''
    name: Optional[str] = None          # shown in logs; default: the folder name
    prefix: Optional[str] = None        # npy layout: file prefix, e.g. 'pitts30k_val'
    radius_m: float = 25.0              # pitts and msls layouts: positives within this distance
    cities: Optional[list[str]] = None  # msls layout: default cph and sf


@dataclass
class DataConfig:
    train_root: Optional[str] = None     # GSV-Cities layout: Dataframes/<city>.csv, Images/<city>/
    cities: Union[str, list[str]] = 'all'
    images_per_place: int = 4            # K
    places_per_batch: int = 160          # P (a batch holds P x K images)
    image_size: Size = (320, 320)        # training input (H, W)
    randaugment_ops: int = 3             # RandAugment N; 0 disables it
    randaugment_magnitude: int = 9
    random_sample_from_each_place: bool = True
    num_workers: int = 8
    val_sets: list[ValSetConfig] = field(default_factory=list)
    val_image_size: Optional[Size] = None  # default: the model configuration's inference size
    val_batch_size: int = 32


@dataclass
class OptimConfig:
    lr: float = 4e-4
    weight_decay: float = 1e-3
    backbone_lr_mult: float = 1.0        # learning rate of the trainable backbone blocks = lr x this
    warmup_steps: int = 1500             # linear warmup over optimizer steps
    milestones: list[int] = field(default_factory=lambda: [5, 10, 20, 30])  # epochs
    gamma: float = 0.25                  # learning-rate factor at each milestone


@dataclass
class LossConfig:
    alpha: float = 1.0                   # multi-similarity loss
    beta: float = 50.0
    base: float = 0.0
    miner_epsilon: float = 0.1           # multi-similarity miner


@dataclass
class TrainerConfig:
    max_epochs: int = 40
    precision: str = 'auto'              # auto: 16-mixed on CUDA, 32-true on CPU
    accelerator: str = 'auto'
    devices: Union[int, str, list[int]] = 'auto'
    num_nodes: int = 1
    strategy: str = 'auto'               # e.g. ddp, ddp_find_unused_parameters_true
    sync_batchnorm: bool = False
    seed: int = 1
    deterministic: bool = False
    out_dir: str = 'runs/train'
    resume: Optional[str] = None         # a Lightning .ckpt (e.g. <out_dir>/checkpoints/last.ckpt)
    limit_train_batches: Optional[Union[int, float]] = None
    check_val_every_n_epoch: int = 1
    validate_before_training: bool = True
    log_every_n_steps: int = 50
    progress_bar: bool = True
    gradient_clip_val: Optional[float] = None
    accumulate_grad_batches: int = 1


@dataclass
class TrainConfig:
    model: Union[str, dict] = 'resnet50_16384'   # a name of boq_vpr.models.MODEL_CONFIGS or ModelConfig fields
    init_weights: Optional[str] = None           # BoQ weights to start from (fine-tuning), loaded strictly
    backbone_weights: Optional[str] = None       # ImageNet weights of the backbone (torchvision / DINOv2 file)
    trainable_blocks: Optional[int] = 1          # ResNet: last residual stages; DINOv2: last blocks; null: all
    gradient_checkpointing: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def model_config(self) -> ModelConfig:
        """Return the ModelConfig named or described by ``model``."""
        if isinstance(self.model, str):
            return get_config(self.model)
        try:
            cfg = ModelConfig.from_dict(self.model)
        except TypeError as err:
            names = [f.name for f in dataclasses.fields(ModelConfig)]
            raise ConfigError(f'model: a mapping needs the ModelConfig fields {names}: {err}') from None
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        """Plain types only (YAML, JSON and weights_only checkpoints)."""
        return _plain(dataclasses.asdict(self))

    def validate(self) -> None:
        mc = self.model_config()
        d, o, t = self.data, self.optim, self.trainer
        if d.images_per_place < 2:
            raise ConfigError(f'data.images_per_place must be >= 2 (positives need pairs), got {d.images_per_place}')
        if d.places_per_batch < 2:
            raise ConfigError('data.places_per_batch must be >= 2 (negatives need other places), '
                              f'got {d.places_per_batch}')
        for key, size in (('data.image_size', d.image_size), ('data.val_image_size', d.val_image_size)):
            if size is None:
                continue
            if min(size) <= 0:
                raise ConfigError(f'{key} must be positive, got {size}')
            if mc.is_vit and (size[0] % mc.stride or size[1] % mc.stride):
                raise ConfigError(f'{key} {size[0]}x{size[1]}: DINOv2 sides must be multiples of {mc.stride}')
        if o.lr <= 0 or o.warmup_steps < 0 or not 0 < o.gamma <= 1:
            raise ConfigError(f'optim: need lr > 0, warmup_steps >= 0, 0 < gamma <= 1; got {o}')
        if sorted(o.milestones) != list(o.milestones):
            raise ConfigError(f'optim.milestones must be increasing epochs, got {o.milestones}')
        if self.trainable_blocks is not None and self.trainable_blocks < 0:
            raise ConfigError(f'trainable_blocks must be >= 0 or null (all), got {self.trainable_blocks}')
        if t.max_epochs < 1:
            raise ConfigError(f'trainer.max_epochs must be >= 1, got {t.max_epochs}')
        from .valsets import LAYOUTS
        for i, v in enumerate(d.val_sets):
            if v.layout not in LAYOUTS:
                raise ConfigError(f'data.val_sets[{i}].layout {v.layout!r} unknown; '
                                  f'valid: {", ".join(sorted(LAYOUTS))}')
            if not v.root:
                raise ConfigError(f'data.val_sets[{i}].root is empty')


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# ---------------------------------------------------------------- building from dicts

def _type_name(tp: Any) -> str:
    return getattr(tp, '__name__', None) or str(tp).replace('typing.', '')


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp`` (light conversions: int->float, sizes)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f'{key}: {value!r} is not a valid {_type_name(tp)}')
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f'{key}: expected a mapping, got {value!r}')
        return from_dict(tp, value, prefix=key + '.')
    if tp is Size or (origin is tuple and args == (int, int)):
        if isinstance(value, str) and 'x' in value.lower():
            value = value.lower().split('x')
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            value = [value, value]
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ConfigError(f'{key}: expected a size N, [H, W] or "HxW", got {value!r}')
        try:
            return (int(value[0]), int(value[1]))
        except (TypeError, ValueError):
            raise ConfigError(f'{key}: expected integer sides, got {value!r}') from None
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{key}: expected a list, got {value!r}')
        return [_coerce(v, args[0], f'{key}[{i}]') for i, v in enumerate(value)] if args else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f'{key}: expected a mapping, got {value!r}')
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f'{key}: expected true or false, got {value!r}')
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f'{key}: expected an integer, got {value!r}')
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f'{key}: expected a number, got {value!r}')
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f'{key}: expected a string, got {value!r}')
    raise ConfigError(f'{key}: unsupported type {_type_name(tp)}')


def from_dict(cls: type, data: dict, prefix: str = '') -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys raise ConfigError listing valid ones."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f'{prefix or "config"}: expected a mapping, got {data!r}')
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f'unknown key(s) {", ".join(prefix + u for u in unknown)}; '
                          f'valid: {", ".join(prefix + n for n in names)}')
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def merge(base: dict, update: dict) -> dict:
    """Recursive dict update (mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != 'model':
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def set_dotted(data: dict, key: str, value: Any) -> dict:
    """Return ``data`` with ``a.b.c = value`` (intermediate mappings created)."""
    parts = key.split('.')
    if not all(parts):
        raise ConfigError(f'bad key {key!r}; use dotted names like optim.lr')
    out = dict(data)
    node = out
    for p in parts[:-1]:
        child = node.get(p)
        child = dict(child) if isinstance(child, dict) else {}
        node[p] = child
        node = child
    node[parts[-1]] = value
    return out


def parse_assignment(text: str) -> tuple[str, Any]:
    """``'optim.lr=1e-3'`` -> ``('optim.lr', 0.001)``; the value is parsed as YAML."""
    if '=' not in text:
        raise ConfigError(f'expected KEY=VALUE, got {text!r}')
    key, raw = text.split('=', 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f'{key}: value {raw!r} is not valid YAML: {err}') from None
    # YAML 1.1 reads 1e-3 as a string; numbers written that way are meant as floats
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in '.eE') and value.strip() not in ('.', 'e', 'E') else value
        except ValueError:
            pass
    return key.strip(), value


def read_yaml(source: str | Path) -> dict:
    """Read a preset name (``PRESETS``) or a YAML file path into a mapping."""
    path = PRESETS.get(str(source), Path(source))
    if not path.is_file():
        raise ConfigError(f'no preset or file {str(source)!r}; presets: {", ".join(sorted(PRESETS))}')
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f'{path}: not valid YAML: {err}') from None
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: expected a mapping at the top level')
    return data


def load_config(source: str | Path | None = None, overrides: dict | None = None,
                assignments: list[str] | None = None) -> TrainConfig:
    """Load a configuration: defaults, then the preset or YAML file, then assignments, then overrides.

    ``assignments`` are ``KEY=VALUE`` strings, ``overrides`` a nested mapping (e.g. from command-line
    flags).
    """
    data: dict = read_yaml(source) if source is not None else {}
    for text in assignments or []:
        key, value = parse_assignment(text)
        data = set_dotted(data, key, value)
    if overrides:
        data = merge(data, overrides)
    config = from_dict(TrainConfig, data)
    config.validate()
    return config


def dump_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def model_names() -> list[str]:
    return sorted(MODEL_CONFIGS)
