"""Linear measurement operators y = A x (blur, super-resolution, inpainting, identity, dense) and
measurement noise models, chosen by name from configs through two small registries.

Example:
    >>> from operators import get_operator, get_noise
    >>> op = get_operator("super_resolution", scale_factor=2, degradation="bicubic")
    >>> noiser = get_noise("gaussian", sigma=0.05)
"""
from .base import (LinearOperator, get_noise, get_operator, list_noises, list_operators, register_noise,
                   register_operator)
from . import blur, dense, inpainting, noise, super_resolution  # noqa: F401  (register the operators)

__all__ = ["LinearOperator", "register_operator", "get_operator", "list_operators",
           "register_noise", "get_noise", "list_noises"]
