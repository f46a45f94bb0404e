"""INT8 post-training quantization of an exported ONNX model for CPU inference (ONNX Runtime).

Static quantization with ``onnxruntime.quantization``: QDQ format, weights int8 per channel,
activations uint8 calibrated on real images (MinMax), only Conv, MatMul and Gemm quantized
(LayerNorm, Softmax and the final normalization stay float32).
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import ExportError, ImageError
from .onnx_export import INPUT_NAME, ExportSpec, _set_metadata, read_onnx

log = logging.getLogger(__name__)

MIN_CALIBRATION_IMAGES = 8


def calibration_batches(images: Sequence[np.ndarray], preprocessor, batch_size: int = 1) -> list[np.ndarray]:
    """RGB uint8 images -> normalized float32 batches as the network sees them."""
    if len(images) < MIN_CALIBRATION_IMAGES:
        raise ImageError(f'INT8 calibration needs at least {MIN_CALIBRATION_IMAGES} images of the deployment '
                         f'camera, got {len(images)}; point --calibration at a folder with more')
    return [preprocessor.batch(images[i:i + batch_size]).numpy()
            for i in range(0, len(images), batch_size)]


def quantize_int8(src: str | Path, dst: str | Path, batches: Iterable[np.ndarray]) -> ExportSpec:
    """Write an INT8 (QDQ) copy of the FP32 ONNX model ``src`` to ``dst``, calibrated on ``batches``."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    import onnx

    _, spec = read_onnx(src)
    if spec.precision != 'fp32':
        raise ExportError(f'{src} is already {spec.precision}; quantize the FP32 export')
    batches = list(batches)
    if not batches:
        raise ImageError('no calibration batches')

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {INPUT_NAME: batch}

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        pre = Path(tmp) / 'pre.onnx'
        out = Path(tmp) / 'int8.onnx'
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=['Conv', 'MatMul', 'Gemm'],
                            calibrate_method=CalibrationMethod.MinMax)
        except Exception as err:
            raise ExportError(f'INT8 quantization of {src} failed: {err}') from err
        proto = onnx.load(str(out))
        qspec = replace(spec, precision='int8')
        _set_metadata(proto, qspec)
        onnx.save_model(proto, str(out))
        os.replace(out, dst)
    log.info('quantized %s -> %s (INT8 QDQ, %d calibration batches)', src, dst, len(batches))
    return qspec
