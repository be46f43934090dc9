"""Measurement operators y = A(x): linear ones (blur, super-resolution, inpainting, identity,
dense) and nonlinear ones (Fourier phase retrieval, HDR clipping), measurement noise models,
chosen by name from configs through two small registries, and the ``Physics`` objects that own
an operator, its noise, draws, measurement and derivatives (``LinearPhysics``: also Aᵀ,
solves and SVD view).

Example:
    >>> from operators import get_operator, get_noise
    >>> op = get_operator("super_resolution", scale_factor=2, degradation="bicubic")
    >>> noiser = get_noise("gaussian", sigma=0.05)
"""
from .base import (LinearOperator, Operator, get_noise, get_operator, list_noises, list_operators, register_noise,
                   register_operator)
from . import blur, dense, hdr, inpainting, noise, phase_retrieval, super_resolution  # noqa: F401  (register)
from .physics import LinearizedPhysics, LinearPhysics, Physics, make_physics, operator_is_linear

__all__ = ["Operator", "LinearOperator", "Physics", "LinearPhysics", "LinearizedPhysics", "make_physics",
           "operator_is_linear", "register_operator", "get_operator", "list_operators",
           "register_noise", "get_noise", "list_noises"]
