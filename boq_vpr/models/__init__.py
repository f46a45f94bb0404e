"""BoQ models: configurations, backbones, aggregator and weight loading."""
from .checkpoint import (RANDOM_WEIGHTS, SHIPPED_WEIGHTS, load_model, load_weights, read_state_dict,
                         resolve_weights, shipped_weights)
from .config import MODEL_CONFIGS, ModelConfig, get_config
from .vpr import VPRModel, build_model

__all__ = ['MODEL_CONFIGS', 'ModelConfig', 'VPRModel', 'build_model', 'get_config',
           'load_model', 'load_weights', 'read_state_dict', 'RANDOM_WEIGHTS', 'SHIPPED_WEIGHTS', 'resolve_weights',
           'shipped_weights']
