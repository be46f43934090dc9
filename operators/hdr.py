"""High-dynamic-range reconstruction, y = clip(s·x, −1, 1) (+ noise), as in DAPS (Zhang et al.,
CVPR 2025, code ``forward_operator.HighDynamicRange``) and RED-diff (Mardani et al., ICLR 2024):
a nonlinear operator (clipping), with exact derivatives."""
from __future__ import annotations

import torch

from .base import Operator, real_number, register_operator


@register_operator("hdr")
class HighDynamicRange(Operator):
    """HDR clipping: for images x (N, C, H, W) in [-1, 1],

        y = clip(s · x, −1, 1)        (N, C, H, W),   s = ``scale`` (2 in both references)

    so the pixels with |x| > 1/s are saturated. Derivatives (exact, as autograd's ``clamp``:
    the derivative is s on −1 ≤ s x ≤ 1, 0 outside):

        J u = s · 1[|s x| ≤ 1] ⊙ u,     Jᵀ v = s · 1[|s x| ≤ 1] ⊙ v,     ||J|| ≤ s.

    Args:
        scale (float > 0, default 2.0): s (the references' ``scale``).
        device: default device (hint).

    Raises:
        ValueError: a bad ``scale`` (one line).

    Example:
        >>> import torch
        >>> from operators import get_operator
        >>> get_operator("hdr", scale=2.0).forward(torch.tensor([[[[-0.9, 0.2, 0.7]]]])).tolist()
        [[[[-1.0, 0.4000000059604645, 1.0]]]]
    """

    is_linear = False

    def __init__(self, scale: float = 2.0, device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        self.scale = real_number(scale, "scale", "operator 'hdr'", low=0.0, low_open=True)
        self.jacobian_norm = self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """clip(s x, −1, 1); (N, C, H, W) -> (N, C, H, W)."""
        self._check_batch(x)
        return torch.clamp(self.scale * x, -1.0, 1.0)

    def _gain(self, x: torch.Tensor) -> torch.Tensor:
        sx = self.scale * x
        return self.scale * ((sx >= -1.0) & (sx <= 1.0)).to(x.dtype)

    def vjp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """J_A(x)ᵀ v = s · 1[|s x| ≤ 1] ⊙ v; (N, C, H, W)."""
        return self._gain(x) * v.to(x.dtype)

    def jvp(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """J_A(x) u = s · 1[|s x| ≤ 1] ⊙ u; (N, C, H, W)."""
        return self._gain(x) * u.to(x.dtype)

    def pinv_init(self, y: torch.Tensor) -> torch.Tensor:
        """y / s (RED-diff's ``H_pinv``; exact on the unsaturated pixels), (N, C, H, W)."""
        return y / self.scale

    def __repr__(self) -> str:
        return f"HighDynamicRange(scale={self.scale})"
