"""The node's parameters on the ROS side.

Declared once from ``boq_vpr.ros.parameters`` with their descriptors (description, range,
read-only), validated at start-up and on every set.
"""
from __future__ import annotations

from typing import Any, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from ..errors import ConfigError
from .parameters import ParamSpec, validate


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """Build the ROS descriptor of one parameter."""
    d = ParameterDescriptor(description=spec.description, additional_constraints=spec.constraints(),
                            read_only=spec.read_only)
    if spec.range is not None and spec.kind == 'int':
        d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=0)]
    elif spec.range is not None and spec.kind == 'float':
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]), to_value=float(spec.range[1]),
                                                     step=0.0)]
    return d


class NodeParameters:
    """Declares every spec on ``node``; ``values`` holds the accepted values."""

    def __init__(self, node: Any, specs: Sequence[ParamSpec]) -> None:
        self.specs = {s.name: s for s in specs}
        self.values: dict[str, Any] = {}
        for spec in specs:
            self.values[spec.name] = node.declare_parameter(spec.name, spec.default, descriptor(spec)).value
        problems = [r for name, value in self.values.items() if (r := validate(self.specs[name], value)) is not None]
        if problems:
            raise ConfigError('invalid parameters: ' + '; '.join(problems))

    def proposed(self, params: Sequence[Any]) -> tuple[dict[str, Any] | None, str]:
        """Return the values after setting ``params`` (rclpy Parameters), or (None, why not).

        Parameters not declared here (rclpy's own: use_sim_time, QoS overrides) pass untouched.
        """
        new = dict(self.values)
        for p in params:
            spec = self.specs.get(p.name)
            if spec is None:
                continue
            if spec.read_only and p.value != self.values.get(p.name):
                return None, f'{p.name} is read-only after start-up'
            reason = validate(spec, p.value)
            if reason is not None:
                return None, reason
            new[p.name] = p.value
        return new, ''
