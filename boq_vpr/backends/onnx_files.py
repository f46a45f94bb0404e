"""The ONNX file a backend runs: a given file or the cached export, and its calibrated INT8 copy.

``resolve_onnx`` is how the ONNX Runtime, OpenVINO and TensorRT backends find their graph;
``int8_onnx`` makes (once, then cached) the INT8 copy of an FP32 file from a folder of calibration
images, which ``folder_digest`` identifies by file names and sizes.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from ..errors import BackendError
from ..export import ExportSpec, check_spec_matches, read_onnx
from ..models.config import ModelConfig
from ..values import file_sha256
from .engine_cache import cache_dir, cached_onnx

log = logging.getLogger(__name__)


def folder_digest(folder: Path) -> str:
    """Hash of a folder's image file names and sizes (identifies a calibration set)."""
    from ..inputs.images import list_images
    h = hashlib.sha256()
    for p in list_images(folder, recursive=True):
        h.update(f'{p.relative_to(folder)}:{p.stat().st_size};'.encode())
    return h.hexdigest()[:16]


def calibration_files(folder: Path, max_images: int) -> list[Path]:
    """At most ``max_images`` image files of ``folder`` (recursive), spread evenly over its sorted list."""
    from ..inputs.images import list_images
    files = list_images(folder, recursive=True)
    return files[::max(1, len(files) // max_images)][:max_images]


def int8_onnx(config: ModelConfig, weights: str | Path | None, fp32_onnx: Path, calibration: str | Path,
              max_images: int = 64) -> Path:
    """Return the INT8 copy of ``fp32_onnx`` calibrated on a folder of images (cached by folder content)."""
    from ..export import calibration_batches, quantize_int8
    from ..export.quantize import QUANT_RECIPE
    from ..inputs.images import load_image
    from ..preprocessing import Preprocessor
    folder = Path(calibration)
    files = calibration_files(folder, max_images)
    # keyed by the FP32 model's content too: a re-export with other weights under the same file
    # name must not reuse the old INT8 model
    # and by the quantization recipe: an INT8 model made with other settings is not reused
    out = cache_dir() / 'onnx' / (f'{fp32_onnx.stem}-int8-{QUANT_RECIPE}-{file_sha256(fp32_onnx)[:16]}-'
                                  f'{folder_digest(folder)}-{len(files)}.onnx')
    if out.is_file():
        log.info('using cached INT8 model %s', out)
        return out
    images = [load_image(p) for p in files]
    pre = Preprocessor(tuple(config.image_size), 'fixed', config.stride if config.is_vit else 1)
    quantize_int8(fp32_onnx, out, calibration_batches(images, pre))
    return out


def resolve_onnx(backend: str, config: ModelConfig, weights: str | Path | None, onnx_path: str | Path | None, *,
                 precision: str, export_precision: str = 'fp32', calibration: str | Path | None = None,
                 dynamic_size: bool = False, attention: bool = False) -> tuple[Path, ExportSpec]:
    """Return the ONNX file ``backend`` runs, and the export spec of the file it starts from.

    ``onnx_path`` when given (refused when made for another model, input size or weights), else the
    cached export of ``config`` + ``weights`` at ``export_precision`` (exported on first use). For
    ``precision='int8'`` from a file that is not INT8, its calibrated INT8 copy (``int8_onnx``), which
    needs ``calibration`` images. Each backend then checks the spec's precision against its own.
    """
    if onnx_path is not None:
        path = Path(onnx_path)
        _, spec = read_onnx(path)
        check_spec_matches(spec, config, weights, str(path))
    else:
        path = cached_onnx(config, weights, dynamic_size=dynamic_size, attention=attention,
                           precision=export_precision)
        _, spec = read_onnx(path)
    if precision == 'int8' and spec.precision != 'int8':
        if calibration is None:
            given = f'{path} is {spec.precision.upper()}; ' if onnx_path is not None else ''
            raise BackendError(f'{given}{backend} int8 needs calibration images of the deployment camera: pass '
                               'calibration=FOLDER (--calibration), or an INT8 ONNX from '
                               '`boq-vpr export --precision int8`')
        path = int8_onnx(config, weights, path, calibration)
    return path, spec
