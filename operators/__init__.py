"""Linear measurement operators y = A x (blur, super-resolution, inpainting, identity, dense) and
measurement noise models, chosen by name from configs through two small registries, and the
``Physics`` object that owns an operator, its noise, draws, measurement, solves and SVD view.

Example:
    >>> from operators import get_operator, get_noise
    >>> op = get_operator("super_resolution", scale_factor=2, degradation="bicubic")
    >>> noiser = get_noise("gaussian", sigma=0.05)
"""
from .base import (LinearOperator, get_noise, get_operator, list_noises, list_operators, register_noise,
                   register_operator)
from . import blur, dense, inpainting, noise, super_resolution  # noqa: F401  (register the operators)
from .physics import Physics

__all__ = ["LinearOperator", "Physics", "register_operator", "get_operator", "list_operators",
           "register_noise", "get_noise", "list_noises"]
