"""Where exported models and built engines are kept, and how a cached one is known to fit.

ONNX exports are cached by what they hold (configuration, weights hash, input size, outputs).
TensorRT engines are cached by (ONNX sha256, TensorRT version, GPU name, precision, input shape
profile, builder settings: workspace, strongly typed, layer precision constraints; for INT8 the
digest of the calibration set): the key is written beside the engine as JSON; an engine whose key
does not match the current machine and request, or that has no key (built elsewhere), is rebuilt
with the reason logged. A key written before a field existed reads that field as None, so such an
engine does not fit and is rebuilt, with the missing field named.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ExportError
from ..models.config import ModelConfig

log = logging.getLogger(__name__)

CACHE_ENV = 'BOQ_VPR_CACHE'


def cache_dir() -> Path:
    """``$BOQ_VPR_CACHE``, else ``$XDG_CACHE_HOME/boq_vpr``, else ``~/.cache/boq_vpr``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'boq_vpr'


def cached_onnx(config: ModelConfig, weights: str | Path | None, *, dynamic_size: bool = False,
                attention: bool = False, model=None, directory: str | Path | None = None,
                precision: str = 'fp32') -> Path:
    """Return the ONNX export (FP32, or mixed FP16) of ``config`` + ``weights``, exported on first use."""
    from ..export import ExportSpec, export_onnx, read_onnx, weights_id
    wid = weights_id(weights)
    size = None if dynamic_size else (int(config.image_size[0]), int(config.image_size[1]))
    spec = ExportSpec(config=config, weights=wid, image_size=size,
                      attention=attention, precision=precision)
    path = Path(directory or cache_dir() / 'onnx') / f'{config.name}-{spec.key()}.onnx'
    if path.is_file():
        try:
            _, found = read_onnx(path)
            if found.to_metadata() == spec.to_metadata():
                log.info('using cached ONNX export %s', path)
                return path
            log.warning('cached ONNX %s does not match the requested export; exporting again', path)
        except ExportError as err:
            log.warning('cached ONNX unusable (%s); exporting again', err)
    log.info('exporting %s to %s (first use; cached for later runs)', config.name, path)
    export_onnx(model if model is not None else config, path, weights=weights, dynamic_size=dynamic_size,
                attention=attention, weights_fingerprint=wid, precision=precision)
    return path


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized TensorRT engine depends on."""

    onnx_sha256: str
    tensorrt: str
    gpu: str
    precision: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    # builder settings
    workspace_bytes: int | None = None
    strongly_typed: bool | None = None
    precision_constraints: str | None = None   # e.g. 'prefer:NORMALIZATION,REDUCE,SOFTMAX=fp32'; '' none
    # INT8: digest of the calibration images and settings (tensorrt_backend.calibration_digest); '' otherwise
    calibration: str | None = None

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def file_name(self, stem: str) -> str:
        gpu = re.sub(r'[^A-Za-z0-9]+', '-', self.gpu).strip('-').lower()
        return f'{stem}-{self.precision}-{gpu}-trt{self.tensorrt}-{self.digest()}.engine'

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ('min_shape', 'opt_shape', 'max_shape'):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_json(cls, d: dict) -> 'EngineKey':
        """Read the key from its JSON; fields missing in an older key read as None, unknown fields are an error."""
        d = dict(d)
        for k in ('min_shape', 'opt_shape', 'max_shape'):
            d[k] = tuple(d[k])
        return cls(**d)

    def mismatches(self, other: 'EngineKey') -> list[str]:
        """Human-readable differences ``self`` (wanted) vs ``other`` (found)."""
        return [f'{k}: engine has {getattr(other, k)!r}' + (' (key written before this field existed)'
                                                             if getattr(other, k) is None else '')
                + f', this machine/request needs {getattr(self, k)!r}'
                for k in asdict(self) if getattr(self, k) != getattr(other, k)]


def key_path(engine: Path) -> Path:
    return engine.with_suffix(engine.suffix + '.json')


def read_engine_key(engine: Path) -> EngineKey | None:
    """Return the key stored beside ``engine``; None if absent or unreadable."""
    try:
        return EngineKey.from_json(json.loads(key_path(engine).read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def write_engine(engine: Path, data: bytes, key: EngineKey) -> None:
    """Save an engine and its key atomically (a crash leaves the previous pair or none)."""
    engine.parent.mkdir(parents=True, exist_ok=True)
    for target, payload in ((engine, bytes(data)), (key_path(engine), json.dumps(key.to_json(), indent=2).encode())):
        fd, tmp = tempfile.mkstemp(dir=engine.parent, suffix='.tmp')
        with os.fdopen(fd, 'wb') as f:
            f.write(payload)
        os.replace(tmp, target)
