"""The node's parameters: one table (name, default, description, allowed values), no ROS imports.

``node_parameters()`` lists every parameter once; the node turns each entry into a ROS parameter
with a descriptor (description, range, read-only) and validates values on set with ``validate``.
The loop-closure filters come from ``DetectorConfig``'s fields (``loop_closure.<field>``), so they
are written only once, in the detector.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..backends import backend_names
from ..models.config import MODEL_CONFIGS
from ..preprocessing import RESIZE_MODES
from .convert import CONVERTERS

PRECISIONS = ('auto', 'fp32', 'fp16', 'bf16', 'int8')
KNOWN_BACKENDS = ('auto', 'torch', 'onnxruntime', 'tensorrt')
DETECTOR_PREFIX = 'loop_closure.'
MAP_OPTION_PREFIX = 'map.index_options.'


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter.

    ``choices``: allowed values; ``range``: (low, high) inclusive; ``read_only``: fixed after
    start-up (changing it needs a restart).
    """

    name: str
    default: Any
    description: str
    choices: tuple | None = None
    range: tuple[float, float] | None = None
    read_only: bool = False
    item_range: tuple[int, int] | None = None   # for integer arrays: the range of each item

    @property
    def kind(self) -> str:
        """The value type: bool, int, float, str, int[], float[] or str[]."""
        return value_kind(self.default)

    def constraints(self) -> str:
        """Say the allowed values in words (shown in the parameter descriptor)."""
        parts = []
        if self.choices is not None:
            parts.append('one of: ' + ', '.join(str(c) for c in self.choices))
        if self.range is not None:
            parts.append(f'in [{self.range[0]}, {self.range[1]}]')
        if self.item_range is not None:
            parts.append(f'each item in [{self.item_range[0]}, {self.item_range[1]}]')
        if self.read_only:
            parts.append('read-only after start-up')
        return '; '.join(parts)


def value_kind(value: Any) -> str:
    if isinstance(value, bool):
        return 'bool'
    if isinstance(value, int):
        return 'int'
    if isinstance(value, float):
        return 'float'
    if isinstance(value, str):
        return 'str'
    if isinstance(value, (list, tuple)) and value:
        return value_kind(value[0]) + '[]'
    raise TypeError(f'unsupported parameter value {value!r}')


def validate(spec: ParamSpec, value: Any) -> str | None:
    """None when ``value`` is allowed for ``spec``, else the reason in words."""
    kind = spec.kind
    ok_types = {'bool': (bool,), 'int': (int,), 'float': (float, int), 'str': (str,)}
    if kind.endswith('[]'):
        if not isinstance(value, (list, tuple)) or not value:
            return f'{spec.name} must be a non-empty list of {kind[:-2]}'
        items = list(value)
        base = ok_types[kind[:-2]]
        if not all(isinstance(v, base) and not (isinstance(v, bool) and bool not in base) for v in items):
            return f'{spec.name} must be a list of {kind[:-2]}, got {value!r}'
        if spec.item_range is not None:
            lo, hi = spec.item_range
            bad = [v for v in items if not lo <= v <= hi]
            if bad:
                return f'{spec.name}: items {bad} outside [{lo}, {hi}]'
        return None
    if not isinstance(value, ok_types[kind]) or (isinstance(value, bool) and kind != 'bool'):
        return f'{spec.name} must be {kind}, got {value!r}'
    if spec.choices is not None and value not in spec.choices:
        return f'{spec.name}={value!r} is not allowed; valid: {", ".join(map(str, spec.choices))}'
    if spec.range is not None and not spec.range[0] <= value <= spec.range[1]:
        return f'{spec.name}={value!r} outside [{spec.range[0]}, {spec.range[1]}]'
    return None


def _node_parameters() -> list[ParamSpec]:
    backends = tuple(sorted(set(KNOWN_BACKENDS) | set(backend_names())))
    P = ParamSpec
    return [
        # lifecycle
        P('autostart', True, 'take the node through configure and activate at start-up (a lifecycle node); '
          'false: a lifecycle manager or `ros2 lifecycle set` drives it', read_only=True),
        # model and encoder (fixed at start-up)
        P('model.name', 'resnet18_nordland', 'BoQ model configuration (resnet18_nordland: the demonstration model '
          'shipped with boq_vpr, trained on Nordland footage; use the official resnet50_16384 or dinov2_12288 '
          'weights, or your fine-tuned ones, on your robot)', tuple(sorted(MODEL_CONFIGS)), read_only=True),
        P('model.weights', '', 'weight file (official .pth or a boq_vpr checkpoint); empty: the weights shipped '
          'with model.name (resnet18_nordland), else random weights; "random": random weights (for tests only: '
          'descriptors mean nothing)', read_only=True),
        P('model.image_height', 0, 'network input height in pixels; 0: the configuration\'s', range=(0, 4096),
          read_only=True),
        P('model.image_width', 0, 'network input width in pixels; 0: the configuration\'s', range=(0, 4096),
          read_only=True),
        P('model.resize_mode', 'fixed', 'fixed: resize to the input size; keep_aspect: fix the height, keep the '
          'aspect ratio', RESIZE_MODES, read_only=True),
        P('encoder.backend', 'auto', 'encoder backend; auto takes the fastest available and logs its choice',
          backends, read_only=True),
        P('encoder.device', 'auto', 'cpu, cuda, cuda:N or auto', read_only=True),
        P('encoder.precision', 'auto', 'inference precision, as the backend supports it; auto: the backend\'s '
          'fastest (fp16 on GPUs, bf16 on CPUs with native bf16, else fp32)', PRECISIONS, read_only=True),
        P('encoder.onnx_path', '', 'ONNX model for the onnxruntime/tensorrt backends; empty: export from the '
          'model and weights', read_only=True),
        P('encoder.cache_dir', '', 'folder of exported ONNX models and built TensorRT engines (sets '
          'BOQ_VPR_CACHE); empty: $BOQ_VPR_CACHE, else ~/.cache/boq_vpr', read_only=True),
        P('encoder.calibration', '', 'folder of images for int8 calibration (precision int8 only)', read_only=True),
        P('encoder.num_threads', 0, 'CPU threads of the encoder (PyTorch, ONNX Runtime, OpenVINO); 0: the '
          'library\'s default', range=(0, 256), read_only=True),
        P('encoder.warmup', True, 'encode a blank image at start-up so that the first frame is not slow',
          read_only=True),
        P('encoder.warmup_image_size', [0, 0], 'camera image [height, width] the warm-up frame has; [0, 0]: the '
          'network input size. With model.resize_mode keep_aspect the network runs at the camera\'s aspect, so '
          'give the camera\'s size here or the first frame pays the warm-up', item_range=(0, 16384), read_only=True),
        # input
        P('image_transport', 'raw', 'raw: subscribe `image` (sensor_msgs/Image); compressed: subscribe '
          '`image/compressed` (sensor_msgs/CompressedImage)', ('raw', 'compressed'), read_only=True),
        P('converter', 'auto', 'image conversion: cv_bridge, builtin (boq_vpr.inputs.images / rosbags-image), or '
          'auto (cv_bridge when installed)', CONVERTERS, read_only=True),
        P('use_odom', False, 'subscribe `odom` (nav_msgs/Odometry) and give keyframes the pose at their stamp',
          read_only=True),
        P('odom_max_time_diff_sec', 0.1, 'largest stamp difference between an image and the odometry pose given '
          'to it (seconds)', range=(0.0, 10.0)),
        P('odom_buffer_size', 2000, 'odometry messages kept to look poses up by stamp', range=(10, 1_000_000),
          read_only=True),
        P('qos.reliability', 'best_effort', 'reliability of the image and odometry subscriptions '
          '(best_effort: the sensor-data profile, matches any publisher)', ('best_effort', 'reliable'),
          read_only=True),
        P('qos.depth', 5, 'queue depth of the image and odometry subscriptions', range=(1, 1000), read_only=True),
        # map
        P('map.path', '', 'map directory: loaded at start-up when it holds a map, written by ~/save_map and on '
          'shutdown; empty: an in-memory map', read_only=True),
        P('map.save_on_shutdown', True, 'save the map to map.path when the node shuts down (slam mode)'),
        P('map.index_type', 'flat', 'index of a new map (a loaded map keeps its own)', _index_types(),
          read_only=True),
        P('mapping', True, 'add keyframes to the map (slam mode); ~/set_mapping switches it at run time'),
        # outputs
        P('frame_id', 'map', 'frame of ~/relocalization for keyframes stored without a frame (maps from '
          'build-map or evaluate without one)'),
        P('relocalization.position_variance', 0.0, 'variance (m^2) of x, y, z in ~/relocalization; 0: '
          'automatic, one keyframe step of the map as the standard deviation (the median spacing of its '
          'consecutive keyframes, at least 0.1 m)', range=(0.0, 1e6)),
        P('relocalization.orientation_variance', 0.25, 'variance (rad^2) of roll, pitch, yaw in ~/relocalization '
          'for keyframes stored with an orientation (0.25: a 0.5 rad deviation, an assumption about the view '
          'change a place match allows, not a measurement); keyframes without one get 1e6 (unknown)',
          range=(0.0, 1e6)),
        P('markers.max_edges', 1000, 'loop edges (loops of the running session) kept in ~/markers',
          range=(1, 1_000_000)),
        P('attention.enable', False, 'publish ~/attention, the BoQ cross-attention of chosen queries over the '
          'input (computed only while someone subscribes)'),
        P('attention.queries', [0, 1, 2, 3], 'queries shown side by side in ~/attention', item_range=(0, 1023)),
        P('attention.block', -1, 'BoQ block whose cross-attention is shown (-1: the last)', range=(-16, 15)),
        P('attention.every_n', 5, 'publish the attention of every n-th processed frame', range=(1, 10_000)),
        P('attention.alpha', 0.5, 'opacity of the attention heat map over the image', range=(0.0, 1.0)),
        # diagnostics and logs
        P('diagnostics.period_sec', 1.0, 'period of /diagnostics', range=(0.05, 60.0), read_only=True),
        P('diagnostics.window', 300, 'frames over which latency percentiles are computed', range=(10, 100_000),
          read_only=True),
        P('log_throttle_sec', 5.0, 'at most one warning per problem kind in this period (the rest are counted)',
          range=(0.0, 3600.0)),
    ]


def _index_types() -> tuple[str, ...]:
    from ..map import INDEX_TYPES
    return tuple(INDEX_TYPES)


def map_index_option_specs() -> list[ParamSpec]:
    """``map.index_options.<name>`` for every option of every index type (0: the type's default)."""
    from ..map import INDEX_DEFAULTS, resolve_index_options
    names = set(resolve_index_options('flat', 1 << 30, {}))
    for defaults in INDEX_DEFAULTS.values():
        names |= set(defaults)
    return [ParamSpec(MAP_OPTION_PREFIX + n, 0, f'index option {n} of a new map (0: the index type\'s default; '
                      f'used only by the types that have it)', range=(0, 1 << 30), read_only=True)
            for n in sorted(names)]


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    raise TypeError(f'DetectorConfig.{f.name} has no default')


def field_docs(cls: type) -> dict[str, str]:
    """Field descriptions of a dataclass, from each field's ``metadata['doc']``."""
    return {f.name: f.metadata['doc'] for f in dataclasses.fields(cls) if 'doc' in f.metadata}


def _detector_choices() -> dict[str, tuple]:
    from ..detection.config import ALIGNMENTS
    from ..detection.geometric import FEATURES
    from ..detection import MODES
    return {'mode': tuple(MODES), 'geometric_features': tuple(FEATURES), 'sequence_alignment': tuple(ALIGNMENTS)}


# Detector fields fixed at start-up: the mode decides whether a map must exist; the session names
# the keyframes of this run.
_DETECTOR_READ_ONLY = ('mode', 'session')


def detector_specs(config_cls: type | None = None) -> list[ParamSpec]:
    """Return ``loop_closure.<field>`` for every field of ``DetectorConfig`` that has a typed default.

    The description comes from the field's metadata, allowed values from ``DetectorConfig.validate``
    (the node calls it on every change) and, for names, from the registries.
    """
    if config_cls is None:
        from ..detection import DetectorConfig as config_cls
    docs = field_docs(config_cls)
    choices = _detector_choices()
    specs = []
    for f in dataclasses.fields(config_cls):
        default = _field_default(f)
        if default is None or isinstance(default, (list, tuple, dict)):
            continue  # optional fields keep their automatic behaviour (ROS parameters need a typed value)
        specs.append(ParamSpec(DETECTOR_PREFIX + f.name, default, docs.get(f.name, f'DetectorConfig.{f.name}'),
                               choices.get(f.name), read_only=f.name in _DETECTOR_READ_ONLY))
    return specs


def node_parameters(with_detector: bool = True) -> list[ParamSpec]:
    """Every parameter of the node, in declaration order."""
    specs = _node_parameters() + map_index_option_specs()
    if with_detector:
        specs += detector_specs()
    names = [s.name for s in specs]
    assert len(names) == len(set(names)), 'duplicate parameter names'
    return specs


def detector_values(values: dict[str, Any]) -> dict[str, Any]:
    """Return the ``loop_closure.*`` entries of ``values`` as DetectorConfig fields."""
    return {k[len(DETECTOR_PREFIX):]: v for k, v in values.items() if k.startswith(DETECTOR_PREFIX)}


def map_index_options(values: dict[str, Any], index_type: str) -> dict[str, int]:
    """Return the non-zero ``map.index_options.*`` values that ``index_type`` accepts."""
    from ..map import INDEX_DEFAULTS, resolve_index_options
    accepted = set(resolve_index_options('flat', 1 << 30, {})) | set(INDEX_DEFAULTS.get(index_type, {}))
    out = {}
    for k, v in values.items():
        if k.startswith(MAP_OPTION_PREFIX) and v:
            name = k[len(MAP_OPTION_PREFIX):]
            if name in accepted:
                out[name] = int(v)
    return out


def check_all(specs: Sequence[ParamSpec], values: dict[str, Any]) -> list[str]:
    """Reasons why ``values`` are not allowed (empty when all are)."""
    by_name = {s.name: s for s in specs}
    return [r for k, v in values.items() if k in by_name and (r := validate(by_name[k], v)) is not None]


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, str):
        return "''" if value == '' else (repr(value) if any(c in value for c in ':#{}[],&*!|>\'"%@`') else value)
    if isinstance(value, (list, tuple)):
        return '[' + ', '.join(_yaml_value(v) for v in value) + ']'
    return repr(value)


def defaults_yaml(specs: Sequence[ParamSpec] | None = None) -> str:
    """Return a ROS params file (``/**: ros__parameters:``) with every parameter at its default, described."""
    import textwrap
    specs = node_parameters() if specs is None else specs
    lines = ['# Parameters of vpr_node (boq_vpr), each at its default. `ros2 param describe /vpr_node <name>`',
             '# shows the allowed values; read-only ones are fixed at start-up. Generated from',
             '# boq_vpr.ros.parameters.defaults_yaml(); edit values freely.',
             '/**:', '  ros__parameters:']
    group = None
    for s in specs:
        g = s.name.split('.')[0] if '.' in s.name else ''
        if g != group:
            lines.append('')
            group = g
        text = s.description + (f' ({s.constraints()})' if s.constraints() else '')
        lines += ['    # ' + line for line in textwrap.wrap(text, 94, break_on_hyphens=False)]
        lines.append(f'    {s.name}: {_yaml_value(s.default)}')
    return '\n'.join(lines) + '\n'


def _md_cell(text: str) -> str:
    return text.replace('|', '\\|').replace('\n', ' ')


def parameters_markdown(specs: Sequence[ParamSpec] | None = None) -> str:
    """Return the text of ``docs/parameters.md``.

    Every parameter of the node with its type, default, allowed values and description, in
    declaration order (the order of ``config/vpr.yaml``).
    """
    specs = node_parameters() if specs is None else specs
    lines = ['# Parameters of vpr_node', '',
             '<!-- Generated from boq_vpr/ros/parameters.py by `python -m boq_vpr.ros.parameters --write`; '
             'do not edit by hand. -->', '',
             f'Every parameter of `vpr_node`, {len(specs)} in all, as the node declares them. The defaults are in '
             '`config/vpr.yaml` (the launch file\'s default `params_file`), written from the same declarations. '
             '`ros2 param describe /vpr_node NAME` shows a description and the allowed values on a running node; '
             'every change is validated and a bad value is refused with the reason. **Read-only** parameters are '
             'fixed at start-up: change them in the params file and restart (or `cleanup` and `configure` '
             'the lifecycle node).', '',
             'Names with a dot are written as one key in the params file (`model.name: resnet50_16384`) and '
             'set on the command line as `-p model.name:=resnet50_16384`. `loop_closure.*` are the fields of the '
             'detector\'s `DetectorConfig`; `boq-vpr evaluate --params FILE` reads them from the same file, and '
             '`--set NAME=VALUE` (without the `loop_closure.` prefix) overrides one.', '',
             'Regenerate this file and `config/vpr.yaml` after changing a declaration: '
             '`python -m boq_vpr.ros.parameters --write` (`--check` says whether they are current; a test '
             'fails when they are not).', '',
             '| parameter | type | default | allowed values | read-only | description |',
             '| --- | --- | --- | --- | --- | --- |']
    for s in specs:
        allowed = []
        if s.choices is not None:
            allowed.append(', '.join(f'`{c}`' for c in s.choices))
        if s.range is not None:
            allowed.append(f'[{s.range[0]}, {s.range[1]}]')
        if s.item_range is not None:
            allowed.append(f'each item in [{s.item_range[0]}, {s.item_range[1]}]')
        lines.append(f'| `{s.name}` | {s.kind} | `{_yaml_value(s.default)}` | {_md_cell("; ".join(allowed))} | '
                     f'{"yes" if s.read_only else ""} | {_md_cell(s.description)} |')
    return '\n'.join(lines) + '\n'


# The files written from the declarations above, relative to the repository root.
GENERATED = {'config/vpr.yaml': defaults_yaml, 'docs/parameters.md': parameters_markdown}


def stale_generated(root: str | Path) -> list[str]:
    """List the generated files under ``root`` whose text differs from what the declarations give."""
    root = Path(root)
    return [rel for rel, make in GENERATED.items()
            if not (root / rel).is_file() or (root / rel).read_text(encoding='utf-8') != make()]


_MAIN_HELP = ('``python -m boq_vpr.ros.parameters --write|--check [--root DIR]``: (re)write or check\n'
              '    ``config/vpr.yaml`` and ``docs/parameters.md`` from the parameter declarations.')


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m boq_vpr.ros.parameters --write|--check [--root DIR]``.

    (Re)write or check ``config/vpr.yaml`` and ``docs/parameters.md`` from the parameter declarations.
    """
    import argparse
    import sys
    parser = argparse.ArgumentParser(prog='python -m boq_vpr.ros.parameters', description=_MAIN_HELP)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument('--write', action='store_true', help='write the files that are not current')
    action.add_argument('--check', action='store_true', help='exit status 1 when a file is not current')
    parser.add_argument('--root', type=Path, default=Path(__file__).resolve().parents[2],
                        help='repository root (default: the one this module is in)')
    args = parser.parse_args(argv)
    if not (args.root / 'config').is_dir():
        print(f'{args.root} is not the boq_vpr repository (no config/); pass --root', file=sys.stderr)
        return 2
    stale = stale_generated(args.root)
    if args.check:
        for rel in stale:
            print(f'{rel} is not current: run python -m boq_vpr.ros.parameters --write', file=sys.stderr)
        return 1 if stale else 0
    for rel in stale:
        path = args.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(GENERATED[rel](), encoding='utf-8')
        print(f'wrote {path}')
    if not stale:
        print('config/vpr.yaml and docs/parameters.md are current')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
