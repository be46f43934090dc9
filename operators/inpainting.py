"""Inpainting operator (y = m ⊙ x with a per-image binary mask) and its mask generators
(random pixels, box, extreme), after DPS's ``mask_generator``."""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from .base import LinearOperator, per_sample, register_operator, safe_reciprocal

log = logging.getLogger(__name__)

MASK_TYPES = ("random", "box", "extreme")


def _range(value: Any, name: str) -> tuple[float, float]:
    """``value`` as a (lo, hi) pair of finite numbers with lo <= hi; ValueError naming ``name``."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (min, max), got {value!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise ValueError(f"{name} must be a pair (min, max) with min <= max, got {value!r}")
    return lo, hi


def random_mask(rng: np.random.Generator, height: int, width: int, prob_range: tuple[float, float]) -> np.ndarray:
    """Random-pixel mask as DPS's ``mask_generator._retrieve_random``: a missing fraction
    p ~ U(prob_range), then exactly round(p · H · W) missing pixels chosen without replacement.

    Returns:
        (H, W) float64, 1 = observed, 0 = missing.
    """
    p = rng.uniform(prob_range[0], prob_range[1])
    total = height * width
    missing = rng.choice(total, size=int(round(p * total)), replace=False)
    mask = np.ones(total, dtype=np.float64)
    mask[missing] = 0.0
    return mask.reshape(height, width)


def box_mask(rng: np.random.Generator, height: int, width: int, len_range: tuple[int, int]) -> np.ndarray:
    """Box mask as DPS's ``random_sq_bbox`` (without its margin): one missing square of side
    ``rng.integers(lo, hi)`` (high exclusive, as DPS's ``np.random.randint``; side lo when
    lo == hi) at a uniformly random position fully inside the image.

    Returns:
        (H, W) float64, 1 = observed, 0 = missing (the box).
    """
    lo, hi = len_range
    side = int(lo) if hi <= lo else int(rng.integers(lo, hi))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    mask = np.ones((height, width), dtype=np.float64)
    mask[top:top + side, left:left + side] = 0.0
    return mask


@register_operator("inpainting")
class Inpainting(LinearOperator):
    """Inpainting operator: y = m ⊙ x with a binary mask m: (H, W) per image (1 = observed, the
    same for every channel), drawn once per batch by :meth:`draw`. y keeps the full size, with
    zeros at missing pixels. A = A^T = diag(m), so

        (sigma2 I + r2 A A^T)^{-1} v = v / (sigma2 + r2 m)    (element-wise),

    and where sigma2 + r2 m = 0 (sigma2 = 0 on missing pixels) the result is 0 (pseudo-inverse).

    Args:
        mask_type: "random" (missing pixels), "box" (one missing square) or "extreme" (only a
            square observed: 1 − box).
        mask_prob_range: (min, max) in [0, 1], range of the MISSING fraction for "random".
        mask_len_range: (min, max) ints, side range of the square for "box"/"extreme" (high
            exclusive, as DPS: (128, 129) gives 128); default None = side min(H, W) // 2.
        image_size: accepted and ignored (DPS's configs pass it; the size comes from the input).
        device: default device (hint).

    Raises:
        ValueError: bad mask_type or ranges (construction); square larger than the image (draw).
        RuntimeError: used before ``draw``.

    Example:
        >>> import numpy as np, torch
        >>> from operators import get_operator
        >>> op = get_operator("inpainting", mask_type="box", mask_len_range=(8, 9))
        >>> op.draw([np.random.default_rng(0)], (1, 3, 16, 16))
        >>> y = op.forward(torch.zeros(1, 3, 16, 16)); m = op.params(0)   # (16, 16)
    """

    is_random = True
    is_pixel_mask = True
    _state_key = "masks"

    def __init__(self, mask_type: str = "random", mask_prob_range: Sequence[float] = (0.7, 0.8),
                 mask_len_range: Sequence[int] | None = None, image_size: Any = None,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {', '.join(MASK_TYPES)}, got {mask_type!r}")
        lo, hi = _range(mask_prob_range, "mask_prob_range")
        if lo < 0 or hi > 1:
            raise ValueError(f"mask_prob_range must lie in [0, 1], got {mask_prob_range!r}")
        self.mask_type = mask_type
        self.mask_prob_range = (lo, hi)
        self.mask_len_range: tuple[int, int] | None = None
        if mask_len_range is not None:
            llo, lhi = _range(mask_len_range, "mask_len_range")
            if not (llo.is_integer() and lhi.is_integer()) or llo < 1:
                raise ValueError(f"mask_len_range must be integers >= 1, got {mask_len_range!r}")
            self.mask_len_range = (int(llo), int(lhi))
        if image_size is not None:
            log.debug("inpainting: ignoring image_size=%r (the size comes from the input)", image_size)

    def _len_range(self, height: int, width: int) -> tuple[int, int]:
        if self.mask_len_range is None:
            side = max(1, min(height, width) // 2)
            return side, side + 1
        return self.mask_len_range

    def validate_shape(self, x_shape: tuple[int, int, int, int]) -> None:
        """ValueError if the largest square of mask_len_range does not fit in the image."""
        if self.mask_type == "random":
            return
        h, w = x_shape[2:]
        lo, hi = self._len_range(h, w)
        largest = lo if hi <= lo else hi - 1
        if largest > min(h, w):
            raise ValueError(f"inpainting: mask_len_range {(lo, hi)} allows squares of side {largest}, larger "
                             f"than the image {h}x{w}")

    def _draw(self, rngs: Sequence[np.random.Generator], x_shape: tuple[int, int, int, int]) -> np.ndarray:
        h, w = x_shape[2:]
        if self.mask_type == "random":
            return np.stack([random_mask(g, h, w, self.mask_prob_range) for g in rngs])
        masks = np.stack([box_mask(g, h, w, self._len_range(h, w)) for g in rngs])
        return 1.0 - masks if self.mask_type == "extreme" else masks

    def _validate_drawn(self, arr: np.ndarray, shape: tuple[int, int, int, int]) -> None:
        super()._validate_drawn(arr, shape)
        if arr.shape[1:] != tuple(shape[2:]):
            raise ValueError(f"inpainting: masks of shape {arr.shape[1:]} do not match the image {shape[2:]}")
        if not np.all((arr == 0) | (arr == 1)):
            raise ValueError("inpainting: masks must contain only 0 and 1")

    def _mask(self, t: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) mask in t's dtype/device, cached."""
        return self._cached(("mask", t.dtype, t.device),
                            lambda: torch.from_numpy(self._drawn).unsqueeze(1).to(device=t.device, dtype=t.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = m ⊙ x; (N, C, H, W) -> (N, C, H, W)."""
        self._check_batch(x)
        return x * self._mask(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y = m ⊙ y; (N, C, H, W)."""
        self._check_batch(y)
        return y * self._mask(y)

    def project_measurement(self, y: torch.Tensor) -> torch.Tensor:
        """m ⊙ y: zeros at missing pixels (the noise there is not part of the measurement)."""
        self._check_batch(y)
        return y * self._mask(y)

    def spectral_view(self, x_shape: tuple[int, int, int, int]):
        """:class:`operators.spectral.DiagonalView` with U = V = I, Σ = the mask (N, 1, H, W);
        y stays in the full image geometry."""
        from .spectral import DiagonalView
        if self._drawn is None:
            raise RuntimeError("inpainting: call draw(rngs, x_shape) before asking for its spectral view")
        return DiagonalView(self._mask, x_shape)

    def cov_solve(self, v: torch.Tensor, r2: float | torch.Tensor, sigma2: float | torch.Tensor) -> torch.Tensor:
        """v / (sigma2 + r2 m) element-wise (0 where the denominator is 0); v: (N, C, H, W);
        r2, sigma2: floats or (N,) tensors."""
        self._check_batch(v)
        n = v.shape[0]
        den = per_sample(sigma2, n, v) + per_sample(r2, n, v) * self._mask(v)   # (N|1, 1, H, W)
        return v * safe_reciprocal(den)
