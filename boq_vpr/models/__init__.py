"""BoQ models: configurations, backbones, aggregator and weight loading.

The names below are loaded on first use, so that ``boq_vpr.models.config`` (the model names, which
the command line lists) imports without torch.
"""
import importlib

_WHERE = {
    'RANDOM_WEIGHTS': 'checkpoint', 'SHIPPED_WEIGHTS': 'checkpoint', 'load_model': 'checkpoint',
    'load_weights': 'checkpoint', 'read_state_dict': 'checkpoint', 'resolve_weights': 'checkpoint',
    'shipped_weights': 'checkpoint',
    'MODEL_CONFIGS': 'config', 'ModelConfig': 'config', 'get_config': 'config',
    'VPRModel': 'vpr', 'build_model': 'vpr',
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'.{_WHERE[name]}', __name__), name)
    globals()[name] = value
    return value
