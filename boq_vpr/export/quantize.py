"""INT8 post-training quantization of an exported ONNX model for CPU inference (ONNX Runtime).

Static quantization with ``onnxruntime.quantization``: QDQ format, weights uint8 per channel
(symmetric, zero point 128, full 8-bit range), activations uint8 calibrated on real images (MinMax,
asymmetric), only Conv, MatMul and Gemm quantized (LayerNorm, Softmax and the final normalization stay
float32). Every setting is passed explicitly (``quant_settings()``) so a changed library default cannot
change the model.

Why uint8 weights (U8U8) and not the int8 weights (U8S8) of most examples: on x86 CPUs without VNNI
(AVX2-only, e.g. many AMD EPYC / older Xeon hosts and CI runners) ONNX Runtime's U8S8 kernels multiply
with VPMADDUBSW, whose int16 pair sums saturate when weights use the full int8 range; on this model that
took the descriptor cosine against FP32 from 0.9996 to about 0.91 (the QDQ model itself was fine: the
same file run without graph optimizations, i.e. not fused into integer kernels, gave 0.9996). VNNI
CPUs accumulate in int32 without that step, so the accuracy depended on the machine that runs it,
not on the onnxruntime version (1.22 and 1.32 gave the same on an AVX2 host). U8U8 kernels
widen to int16 before multiplying and do not saturate on any CPU; ``reduce_range`` (7-bit weights)
also avoids the saturation but cost accuracy (0.9990 min cosine, under the 0.999 the tests ask for).
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
# Names the quantization recipe; part of the cached INT8 file name, so a change of recipe is not
# served an INT8 model made by an older one.
QUANT_RECIPE = 'qdq-u8u8-pc-minmax'


def calibration_batches(images: Sequence[np.ndarray], preprocessor, batch_size: int = 1) -> list[np.ndarray]:
    """RGB uint8 images -> normalized float32 batches as the network sees them."""
    if len(images) < MIN_CALIBRATION_IMAGES:
        raise ImageError(f'INT8 calibration needs at least {MIN_CALIBRATION_IMAGES} images of the deployment '
                         f'camera, got {len(images)}; point --calibration at a folder with more')
    return [preprocessor.batch(images[i:i + batch_size]).numpy()
            for i in range(0, len(images), batch_size)]


def quant_settings() -> dict:
    """Return the keyword arguments of ``onnxruntime.quantization.quantize_static``, all explicit.

    See the module docstring for why the weights are uint8.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    return dict(
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=['Conv', 'MatMul', 'Gemm'],
        per_channel=True,
        reduce_range=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QUInt8,   # not QInt8: U8S8 kernels saturate on x86 without VNNI
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={
            'ActivationSymmetric': False,
            'WeightSymmetric': True,
            'MatMulConstBOnly': False,
            'CalibTensorRangeSymmetric': False,
            'CalibMovingAverage': False,
            'ForceQuantizeNoInputCheck': False,
            'AddQDQPairToWeight': False,
            'DedicatedQDQPair': False,
        })


def quantize_int8(src: str | Path, dst: str | Path, batches: Iterable[np.ndarray]) -> ExportSpec:
    """Write an INT8 (QDQ) copy of the FP32 ONNX model ``src`` to ``dst``, calibrated on ``batches``."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
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
            quantize_static(str(pre), str(out), Reader(), **quant_settings())
        except Exception as err:
            raise ExportError(f'INT8 quantization of {src} failed: {err}') from err
        proto = onnx.load(str(out))
        qspec = replace(spec, precision='int8')
        _set_metadata(proto, qspec)
        onnx.save_model(proto, str(out))
        os.replace(out, dst)
    log.info('quantized %s -> %s (INT8 QDQ %s, %d calibration batches)', src, dst, QUANT_RECIPE, len(batches))
    return qspec
