"""Measurement noise models (clean, Gaussian, Poisson) applied to y = A x, and the identity
operator ``noise`` used for denoising."""
from __future__ import annotations

import logging
from typing import Sequence

import torch

from .base import LinearOperator, per_sample, real_number, register_noise, register_operator, safe_reciprocal

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The identity operator (denoising)
# --------------------------------------------------------------------------------------------

@register_operator("noise")
class Identity(LinearOperator):
    """Denoising operator A = I (DPS's ``noise`` task): y = x, A^T = I,
    (sigma2 I + r2 A A^T)^{-1} v = v / (sigma2 + r2) (0 where sigma2 + r2 = 0).

    Args:
        device: default device (hint).

    Example:
        >>> import torch
        >>> from operators import get_operator
        >>> op = get_operator("noise")
        >>> op.cov_solve(torch.ones(1, 3, 4, 4), 1.0, 1.0).max().item()
        0.5
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        super().__init__(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x (a copy); (N, C, H, W)."""
        self._check_batch(x)
        return x.clone()

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y = y (a copy); (N, C, H, W)."""
        self._check_batch(y)
        return y.clone()

    def spectral_view(self, x_shape: tuple[int, int, int, int]):
        """:class:`operators.spectral.DiagonalView` with U = V = I, Σ = 1."""
        from .spectral import DiagonalView
        return DiagonalView(lambda like: torch.ones(1, 1, 1, 1, dtype=like.dtype, device=like.device), x_shape)

    def cov_solve(self, v: torch.Tensor, r2: float | torch.Tensor, sigma2: float | torch.Tensor) -> torch.Tensor:
        """v / (sigma2 + r2); v: (N, C, H, W); r2, sigma2: floats or (N,) tensors."""
        self._check_batch(v)
        n = v.shape[0]
        den = per_sample(sigma2, n, v) + per_sample(r2, n, v)
        if not isinstance(den, torch.Tensor):
            den = torch.tensor(den, dtype=v.dtype, device=v.device)
        return v * safe_reciprocal(den)


# --------------------------------------------------------------------------------------------
# Noise models
# --------------------------------------------------------------------------------------------

def _check_generators(y: torch.Tensor, generators: Sequence[torch.Generator] | None, name: str) -> None:
    """ValueError unless ``generators`` holds one CPU torch.Generator per image of y."""
    if generators is None or len(generators) != y.shape[0]:
        raise ValueError(f"noise {name!r}: needs one torch.Generator per image (N={y.shape[0]}), got "
                         f"{None if generators is None else len(generators)}")
    for g in generators:
        if not isinstance(g, torch.Generator) or g.device.type != "cpu":
            raise ValueError(f"noise {name!r}: generators must be CPU torch.Generator objects, got {g!r}")


class NoiseModel:
    """Base of the noise models: ``noiser(y, generators) -> y_noisy`` with y: (N, ...) on the
    [-1, 1] image scale and ``generators`` a list of N CPU ``torch.Generator`` (image n's noise
    comes from generators[n] only, so it does not depend on the batch composition).

    Attributes:
        name: the registered name.
        sigma: the Gaussian noise std on the [-1, 1] scale that solvers should assume.
    """

    name: str = "noise_model"
    sigma: float = 0.0

    def __call__(self, y: torch.Tensor, generators: Sequence[torch.Generator] | None) -> torch.Tensor:
        """y_noisy, same shape/dtype/device as y: (N, ...); image n's noise from generators[n]."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"


@register_noise("clean")
class Clean(NoiseModel):
    """No noise: returns y unchanged (a copy); sigma = 0. ``generators`` is ignored (may be None)."""

    def __init__(self) -> None:
        self.sigma = 0.0

    def __call__(self, y: torch.Tensor, generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """y (a copy), same shape/dtype/device."""
        return y.clone()


@register_noise("gaussian")
class GaussianNoise(NoiseModel):
    """Additive white Gaussian noise y + sigma · n, n ~ N(0, I) (DPS/CoDPS measurement model).

    ``sigma`` is the std on the [-1, 1] image scale used by the solvers: the papers' 0.05 is
    0.025 on a [0, 1] scale (≈ 6.4 on [0, 255]). Standard normals are drawn per image on CPU in
    float32 from that image's generator, then moved to y's device and dtype.

    Args:
        sigma: std >= 0 on the [-1, 1] scale.

    Raises:
        ValueError: negative/non-finite sigma; wrong number or kind of generators (call).

    Example:
        >>> import torch
        >>> from operators import get_noise
        >>> noiser = get_noise("gaussian", sigma=0.05)
        >>> g = torch.Generator().manual_seed(0)
        >>> noiser(torch.zeros(1, 3, 8, 8), [g]).shape
        torch.Size([1, 3, 8, 8])
    """

    def __init__(self, sigma: float) -> None:
        self.sigma = real_number(sigma, "sigma", "noise 'gaussian'", low=0.0)

    def __call__(self, y: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """y + sigma · n; (N, ...) -> (N, ...), y's dtype and device."""
        _check_generators(y, generators, self.name)
        n = torch.stack([torch.randn(tuple(y.shape[1:]), generator=g, dtype=torch.float32) for g in generators])
        return y + self.sigma * n.to(device=y.device, dtype=y.dtype)


@register_noise("poisson")
class PoissonNoise(NoiseModel):
    """Poisson (shot) noise, DPS's convention (Chung et al. 2023, ``PoissonNoise``):

        y01 = clip((y + 1) / 2, 0, 1),   counts ~ Poisson(255 · rate · y01),
        y_noisy = clip(counts / (255 · rate) · 2 − 1, −1, 1),

    counts drawn per image on CPU with ``torch.poisson(..., generator=generators[n])`` (float32),
    then moved to y's device and dtype. The final clip is DPS's.

    Args:
        rate: photons per grey level, > 0 (larger = less noise).
        sigma: the Gaussian std (on the [-1, 1] scale) that solvers should assume for this noise
            (the solvers' likelihood is Gaussian); default 0. The noise itself does not use it.
            For reference, the std of the noise at level y01 is 2·sqrt(y01 / (255 · rate)).

    Raises:
        ValueError: rate <= 0 or sigma < 0 (construction); wrong generators (call).
    """

    def __init__(self, rate: float, sigma: float = 0.0) -> None:
        self.rate = real_number(rate, "rate", "noise 'poisson'", low=0.0, low_open=True)
        self.sigma = real_number(sigma, "sigma", "noise 'poisson'", low=0.0)

    def __call__(self, y: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Poisson-noisy y, same shape/dtype/device, in [-1, 1]."""
        _check_generators(y, generators, self.name)
        scale = 255.0 * self.rate
        lam = ((y.detach().to(device="cpu", dtype=torch.float32) + 1.0) / 2.0).clamp(0.0, 1.0) * scale
        counts = torch.stack([torch.poisson(lam[i], generator=g) for i, g in enumerate(generators)])
        return (counts / scale * 2.0 - 1.0).clamp(-1.0, 1.0).to(device=y.device, dtype=y.dtype)
