"""Anatomy: where the roles of a transformer live inside a Hugging Face model.

The only package that knows model internals: ``layouts`` (the role table per
``model_type``), ``detect`` (overrides and structural detection), ``linear``
(Linear vs. HF Conv1D), ``quantized`` (quantized layer types:
shapes, dequantize, requantize), ``calls`` (how models are called: masks, caches,
positions, for prompt and prefix tuning) and ``anatomy`` (resolving roles to
:class:`Site`s).
"""

from .anatomy import Anatomy, Site, config_value, layer_of, site_key
from .calls import AttentionCall
from .layouts import ALL_ROLES, HEAD_NAMES, LAYOUTS, PROJECTION_ROLES, SUBLAYER_ROLES, Layout, RoleSpec
from .linear import is_linear, linear_shape, linear_weight
from .quantized import dequantized_weight, is_quantized, quantization_of, quantization_summary, requantize

__all__ = [
    "Anatomy", "Site", "Layout", "AttentionCall", "RoleSpec", "LAYOUTS", "HEAD_NAMES",
    "ALL_ROLES", "PROJECTION_ROLES", "SUBLAYER_ROLES", "config_value", "is_linear", "layer_of", "linear_weight",
    "site_key", "linear_shape", "quantization_of", "is_quantized", "dequantized_weight", "requantize",
    "quantization_summary",
]
