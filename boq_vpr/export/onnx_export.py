"""PyTorch -> ONNX: the inference graph of a BoQ model, with its configuration in the file's metadata.

Build and use are separate steps: ``export_onnx`` writes the file, ``read_onnx`` loads and checks
one (a corrupt file or one made for another model is refused with the file named), and the
backends consume it by its input and output names (``images`` -> ``descriptor`` [, ``attention``]).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import ExportError
from ..models import load_model
from ..models.config import ModelConfig
from ..models.vpr import RANDOM_SEED, VPRModel
from ..values import file_sha256
from .graph import InferenceGraph, to_mixed_precision

log = logging.getLogger(__name__)

INPUT_NAME = 'images'
DESCRIPTOR_NAME = 'descriptor'
ATTENTION_NAME = 'attention'
DEFAULT_OPSET = 18          # LayerNormalization is native from 17; the torch exporter emits 18 natively
EXPORT_FORMAT = 1           # bump when the graph's arithmetic or naming changes (invalidates caches)
EXPORT_PRECISIONS = ('fp32', 'fp16')  # fp16: weights and activations FP16; LayerNorm, softmax, output FP32
MAX_BATCH = 256             # upper bound of the dynamic batch axis
META_PREFIX = 'boq_vpr.'


@dataclass(frozen=True)
class ExportSpec:
    """What an ONNX file holds: the model, its input size (None: dynamic), batch and outputs."""

    config: ModelConfig
    weights: str                         # sha256 of the weight file, or 'random-seed0'
    image_size: tuple[int, int] | None   # None: height and width are dynamic
    dynamic_batch: bool = True
    attention: bool = False
    opset: int = DEFAULT_OPSET
    precision: str = 'fp32'              # 'fp32', 'fp16' (mixed, FP32 input/output) or 'int8' (QDQ copy)
    format: int = EXPORT_FORMAT

    @property
    def output_names(self) -> list[str]:
        return [DESCRIPTOR_NAME, ATTENTION_NAME] if self.attention else [DESCRIPTOR_NAME]

    def key(self) -> str:
        """Short hash identifying the exported graph (for cache file names)."""
        blob = json.dumps(self.to_metadata(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_metadata(self) -> dict[str, str]:
        d = asdict(self)
        d['config'] = json.dumps(self.config.to_dict(), sort_keys=True)
        d['image_size'] = 'dynamic' if self.image_size is None else f'{self.image_size[0]}x{self.image_size[1]}'
        return {META_PREFIX + k: str(v) for k, v in d.items()}

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str = 'ONNX file') -> 'ExportSpec':
        try:
            size = meta[META_PREFIX + 'image_size']
            return cls(config=ModelConfig.from_dict(json.loads(meta[META_PREFIX + 'config'])),
                       weights=meta[META_PREFIX + 'weights'],
                       image_size=None if size == 'dynamic' else tuple(int(v) for v in size.split('x')),
                       dynamic_batch=meta[META_PREFIX + 'dynamic_batch'] == 'True',
                       attention=meta[META_PREFIX + 'attention'] == 'True',
                       opset=int(meta[META_PREFIX + 'opset']),
                       precision=meta.get(META_PREFIX + 'precision', 'fp32'),
                       format=int(meta.get(META_PREFIX + 'format', 0)))
        except (KeyError, ValueError, TypeError) as err:
            raise ExportError(f'{source}: no boq_vpr export metadata ({err}); export it with `boq-vpr export`') from err


def weights_id(weights: str | Path | None) -> str:
    """Return what identifies the weights in an export: the file's sha256, or the random seed."""
    return file_sha256(weights) if weights is not None else f'random-seed{RANDOM_SEED}'


def state_fingerprint(model: torch.nn.Module) -> str:
    """Identify the weights of a model object given without its weight file."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return 'state-' + h.hexdigest()


def export_onnx(model: VPRModel | ModelConfig, path: str | Path, *, weights: str | Path | None = None,
                image_size: tuple[int, int] | None = None, dynamic_size: bool = False,
                dynamic_batch: bool = True, attention: bool = False, opset: int = DEFAULT_OPSET,
                weights_fingerprint: str | None = None, precision: str = 'fp32') -> ExportSpec:
    """Export a model (or a configuration + weight file) to ONNX at ``path`` and return its spec.

    ``image_size`` defaults to the configuration's; ``dynamic_size`` leaves height and width free
    (DINOv2: multiples of 14). ``precision='fp16'`` stores weights and computes in FP16 with
    LayerNorm, softmax and the output normalization in FP32 (for GPU runtimes that take the
    precision from the graph: ONNX Runtime CUDA, strongly typed TensorRT); input and output stay
    FP32. The written file is checked with the ONNX checker and replaced atomically.
    """
    if precision not in EXPORT_PRECISIONS:
        raise ExportError(f'export precision {precision!r} not supported; valid: {", ".join(EXPORT_PRECISIONS)} '
                          '(int8: export fp32, then boq_vpr.export.quantize_int8)')
    if isinstance(model, ModelConfig):
        config = model
        model = load_model(config, weights)
    else:
        config = model.config
        if weights is None and weights_fingerprint is None:
            weights_fingerprint = state_fingerprint(model)
    size = tuple(image_size or config.image_size)
    config = config.with_image_size(*size)
    config.validate()
    spec = ExportSpec(config=config, weights=weights_fingerprint or weights_id(weights),
                      image_size=None if dynamic_size else size, dynamic_batch=dynamic_batch,
                      attention=attention, opset=opset, precision=precision)
    graph = InferenceGraph(model.eval(), spec.image_size, return_attention=attention)
    if precision == 'fp16':
        graph = to_mixed_precision(graph, torch.float16)
    example = torch.zeros(2 if dynamic_batch else 1, 3, *size)
    dims: dict[int, object] = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim('batch', min=1, max=MAX_BATCH)
    if dynamic_size:
        if config.is_vit:
            stride = config.stride
            dims[2] = stride * torch.export.Dim('patches_h', min=2, max=4096 // stride)
            dims[3] = stride * torch.export.Dim('patches_w', min=2, max=4096 // stride)
        else:
            dims[2] = torch.export.Dim('height', min=32, max=4096)
            dims[3] = torch.export.Dim('width', min=32, max=4096)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.onnx', dir=path.parent)
    os.close(fd)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(graph, (example,), None, input_names=[INPUT_NAME],
                                        output_names=spec.output_names,
                                        dynamic_shapes={'images': dims} if dims else None,
                                        opset_version=opset, dynamo=True, verbose=False)
        proto = program.model_proto
        _set_metadata(proto, spec)
        import onnx
        onnx.save_model(proto, tmp)
        onnx.checker.check_model(tmp, full_check=True)
        os.replace(tmp, path)
    except ExportError:
        raise
    except Exception as err:
        raise ExportError(f'ONNX export of {config.name} to {path} failed: {err}') from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info('exported %s to %s (input %s, batch %s, outputs %s, opset %d)', config.name, path,
             'dynamic' if spec.image_size is None else 'x'.join(map(str, spec.image_size)),
             'dynamic' if dynamic_batch else 'fixed 1', spec.output_names, opset)
    return spec


@contextlib.contextmanager
def _quiet_exporter():
    """Keep the exporter's progress and its log of every optimizer pass (INFO) at debug level."""
    loggers = [logging.getLogger(name) for name in ('onnxscript', 'onnx_ir', 'torch.onnx')]
    levels = [lg.level for lg in loggers]
    buffer = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer):
            warnings.simplefilter('ignore')
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if buffer.getvalue():
            log.debug('exporter output:\n%s', buffer.getvalue().rstrip())


def _set_metadata(proto, spec: ExportSpec) -> None:
    del proto.metadata_props[:]
    for key, value in spec.to_metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = 'boq_vpr'
    proto.doc_string = (f'BoQ {spec.config.name}: {INPUT_NAME} [N,3,H,W] float32 ImageNet-normalized -> '
                        f'{DESCRIPTOR_NAME} [N,{spec.config.descriptor_dim}] L2-normalized')


def read_onnx(path: str | Path, load_weights: bool = False):
    """Load and check an ONNX file; returns ``(onnx.ModelProto, ExportSpec)``.

    Without ``load_weights`` only the graph structure is read (fast, for metadata and op lists).
    """
    import onnx
    path = Path(path)
    if not path.is_file():
        raise ExportError(f'ONNX file not found: {path}; create it with `boq-vpr export`')
    try:
        proto = onnx.load(str(path), load_external_data=load_weights)
        onnx.checker.check_model(proto if not load_weights else str(path))
    except Exception as err:
        raise ExportError(f'{path}: not a valid ONNX model (truncated or corrupt?): {err}') from err
    meta = {p.key: p.value for p in proto.metadata_props}
    return proto, ExportSpec.from_metadata(meta, source=str(path))


def check_spec_matches(spec: ExportSpec, config: ModelConfig, weights: str | Path | None, source: str,
                       check_weights: bool = True) -> None:
    """Refuse an ONNX file made for another model or weights than the encoder's."""
    if spec.config.descriptor_dim != config.descriptor_dim or spec.config.backbone != config.backbone:
        raise ExportError(f'{source} holds {spec.config.name} ({spec.config.backbone}, '
                          f'{spec.config.descriptor_dim}-D), not {config.name} ({config.backbone}, '
                          f'{config.descriptor_dim}-D); export it again for this model')
    if spec.image_size is not None and tuple(spec.image_size) != tuple(config.image_size):
        raise ExportError(f'{source} is fixed to input {spec.image_size[0]}x{spec.image_size[1]}, the encoder '
                          f'feeds {config.image_size[0]}x{config.image_size[1]}; export it for that size '
                          'or with a dynamic size (--dynamic-size)')
    if check_weights and weights is not None and spec.weights != weights_id(weights):
        raise ExportError(f'{source} was exported from other weights than {weights}; export it again')
