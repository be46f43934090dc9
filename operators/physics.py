"""The physics of a measurement: one object that owns the operator A (and Aᵀ), the noise model,
the per-image random draws, the making of y (``measure``, the one place in the code), the
covariance solve (σ²I + r²AAᵀ)⁻¹v and the spectral view A = U Σ Vᵀ. Methods ask it for
capabilities (``spectral is not None``, ``has_exact_cov_solve``), never for operator names."""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from .base import LinearOperator, check_x_shape, per_sample
from .spectral import SpectralView, dense_fallback

log = logging.getLogger(__name__)


def _dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class Physics:
    """y = noise(A x) for images x: (N, C, H, W) in [-1, 1].

    Args:
        operator: a registered ``LinearOperator`` (``operators.get_operator``).
        noiser: a noise model (``operators.get_noise``) with ``sigma`` (the Gaussian std σ_n on
            the [-1, 1] scale that methods assume) and ``name``; None = noiseless (``clean``).
        use_cg: solve covariances by conjugate gradients even where the operator has an exact
            ``cov_solve`` (for tests and comparisons).

    Attributes:
        operator, noiser: as given.
        sigma_n: float, σ_n (0 for clean).
        noise_name: "gaussian", "poisson", "clean", ...

    Example:
        >>> import torch
        >>> from operators import Physics, get_noise, get_operator
        >>> phys = Physics(get_operator("gaussian_blur", kernel_size=5, intensity=1.0),
        ...                get_noise("gaussian", sigma=0.05))
        >>> from util.seeding import torch_generators
        >>> y = phys.measure(torch.zeros(2, 1, 16, 16), None, torch_generators(0, [0, 1], 1))
        >>> tuple(y.shape), phys.spectral is not None, phys.has_exact_cov_solve
        ((2, 1, 16, 16), True, True)
    """

    def __init__(self, operator: Any, noiser: Any = None, use_cg: bool = False) -> None:
        if operator is None or not callable(getattr(operator, "forward", None)) \
                or not callable(getattr(operator, "adjoint", None)):
            raise ValueError(f"Physics needs an operator with forward and adjoint, got {type(operator).__name__}")
        if noiser is None:
            from .noise import Clean
            noiser = Clean()
        self.operator, self.noiser, self.use_cg = operator, noiser, bool(use_cg)
        self._x_shape: tuple[int, int, int, int] | None = None
        self._views: dict[tuple, SpectralView | None] = {}

    # ---- what it is ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The operator's registered name (for file names and logs only, never for decisions)."""
        return getattr(self.operator, "name", type(self.operator).__name__)

    @property
    def sigma_n(self) -> float:
        """σ_n, the Gaussian noise std (on [-1, 1]) methods assume; 0 for clean measurements."""
        return float(getattr(self.noiser, "sigma", 0.0))

    @property
    def noise_name(self) -> str:
        """The noise model's registered name ("gaussian", "poisson", "clean", ...)."""
        return str(getattr(self.noiser, "name", "clean"))

    @property
    def is_random(self) -> bool:
        """Whether the operator draws per-image parts (kernel, mask)."""
        return bool(getattr(self.operator, "is_random", False))

    @property
    def is_pixel_mask(self) -> bool:
        """Whether A = diag(m) with a 0/1 pixel mask (inpainting)."""
        return bool(getattr(self.operator, "is_pixel_mask", False))

    @property
    def x_shape(self) -> tuple[int, int, int, int] | None:
        """(N, C, H, W) of the last draw / measure, or None."""
        return self._x_shape

    # ---- the operator --------------------------------------------------------------------------
    def A(self, x: torch.Tensor) -> torch.Tensor:
        """A x; x (N, C, H, W) -> measurement shape."""
        return self.operator.forward(x)

    def A_T(self, y: torch.Tensor) -> torch.Tensor:
        """Aᵀ y; measurement shape -> (N, C, H, W)."""
        return self.operator.adjoint(y)

    def y_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        """Measurement shape for images of ``x_shape``."""
        return tuple(self.operator.y_shape(x_shape))

    def residual(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(N,) ||y − A x||_2 per sample (detached, float32 or float64)."""
        with torch.no_grad():
            dtype = _dtype(x)
            return (y.detach().to(dtype) - self.A(x.detach().to(dtype))).flatten(1).norm(dim=1)

    # ---- draws and measurements ----------------------------------------------------------------
    def draw(self, rngs: Sequence[np.random.Generator] | None, x_shape: Sequence[int]) -> None:
        """Draw the operator's per-image parts for a batch of ``x_shape`` (image n from rngs[n];
        deterministic operators only check the shape). Raises ValueError / TypeError as
        ``LinearOperator.draw``."""
        shape = check_x_shape(x_shape)
        self.operator.draw(rngs, shape)
        self._x_shape = shape
        if self.is_random:              # a deterministic operator's views stay valid (keyed by shape)
            self._views.clear()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The operator's drawn parts (``LinearOperator.state_dict``)."""
        return self.operator.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (raises ValueError for a mismatch)."""
        self.operator.load_state_dict(state)
        xs = state.get("x_shape")
        self._x_shape = None if xs is None else check_x_shape(xs.tolist() if isinstance(xs, torch.Tensor) else xs)
        self._views.clear()

    def measure(self, x: torch.Tensor, op_rngs: Sequence[np.random.Generator] | None = None,
                noise_generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """y = P(noise(A x)), the one place a measurement is made.

        Args:
            x: (N, C, H, W) clean images in [-1, 1].
            op_rngs: N numpy Generators to draw the operator's kernel / mask from first (as
                :meth:`draw`); None keeps the current draw (a deterministic operator needs none).
            noise_generators: N CPU torch.Generator for the noise (image n's from entry n; may
                be None for clean measurements).
        Returns: y, the operator's measurement shape, x's dtype; P zeros what A cannot produce
            (inpainting: the missing pixels), so the saved y is clean there.
        Raises: ValueError (bad shape, generators), RuntimeError (a random operator never drawn).
        """
        with torch.no_grad():
            if op_rngs is not None or (not self.is_random and tuple(x.shape) != self._x_shape):
                self.draw(op_rngs, tuple(x.shape))
            y = self.noiser(self.A(x), noise_generators)
            return self.operator.project_measurement(y)

    def display(self, y: torch.Tensor) -> torch.Tensor:
        """The measurement as an image (N, C, H, W) for saving."""
        return self.operator.display(y)

    def params(self, i: int) -> np.ndarray | None:
        """The kernel / mask of image i (see ``LinearOperator.params``)."""
        return self.operator.params(i)

    # ---- covariance solves ---------------------------------------------------------------------
    @property
    def has_exact_cov_solve(self) -> bool:
        """True when :meth:`cov_solve` is exact (the operator implements it and ``use_cg`` is
        off); False: conjugate gradients with A and Aᵀ only."""
        own = getattr(type(self.operator), "cov_solve", None)
        return not self.use_cg and callable(own) and own is not LinearOperator.cov_solve

    def cov_solve(self, v: torch.Tensor, r2: float | torch.Tensor, sigma2: float | torch.Tensor,
                  tol: float = 1e-6, max_iter: int = 200) -> torch.Tensor:
        """(σ² I + r² A Aᵀ)⁻¹ v in measurement space (CoDPS, "Gaussian is All You Need": the
        covariance of y given x_t; ΠGDM; DiffPIR's proximal step through Woodbury).

        Args:
            v: measurement-shaped (N, ...) tensor.
            r2, sigma2: python floats or (N,) tensors.
            tol, max_iter: relative residual and iteration cap of the CG fallback.
        Returns: v's shape and dtype. Exact (the operator's solve, pseudo-inverse where
        singular) when :attr:`has_exact_cov_solve`, else :meth:`cg_cov_solve`."""
        if self.has_exact_cov_solve:
            return self.operator.cov_solve(v, r2, sigma2)
        return self.cg_cov_solve(v, r2, sigma2, tol=tol, max_iter=max_iter)

    def cg_cov_solve(self, v: torch.Tensor, r2: float | torch.Tensor, sigma2: float | torch.Tensor,
                     tol: float = 1e-6, max_iter: int = 200) -> torch.Tensor:
        """(σ² I + r² A Aᵀ)⁻¹ v by conjugate gradients (Hestenes & Stiefel 1952), batched with
        per-sample step sizes, using only A and Aᵀ; stops when every sample's residual is below
        ``tol`` · ||v|| or after ``max_iter`` iterations. Starts at 0, so for a singular system
        (σ² = 0) with v in the range it returns the minimum-norm solution."""
        dtype = _dtype(v)
        b = v.detach().to(dtype)
        n = b.shape[0]
        s2 = per_sample(sigma2, n, b.reshape(n, -1, 1, 1))
        rr2 = per_sample(r2, n, b.reshape(n, -1, 1, 1))

        def bc(k: Any) -> Any:
            return k.reshape((-1,) + (1,) * (b.dim() - 1)) if isinstance(k, torch.Tensor) else k
        s2, rr2 = bc(s2), bc(rr2)

        def apply(p: torch.Tensor) -> torch.Tensor:
            return s2 * p + rr2 * self.A(self.A_T(p).to(dtype)).to(dtype)

        def dot(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return (a * c).flatten(1).sum(dim=1)

        with torch.no_grad():
            x = torch.zeros_like(b)
            r = b.clone()
            p = r.clone()
            rs = dot(r, r)
            stop = (tol * b.flatten(1).norm(dim=1)) ** 2
            for _ in range(max_iter):
                if bool((rs <= stop).all()):
                    break
                ap = apply(p)
                pap = dot(p, ap)
                alpha = torch.where(pap > 0, rs / torch.where(pap > 0, pap, torch.ones_like(pap)),
                                    torch.zeros_like(pap))
                x = x + bc(alpha) * p
                r = r - bc(alpha) * ap
                rs_new = dot(r, r)
                beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), torch.zeros_like(rs))
                p = r + bc(beta) * p
                rs = rs_new
        return x.to(v.dtype)

    # ---- spectral view -------------------------------------------------------------------------
    @property
    def spectral(self) -> SpectralView | None:
        """The SVD view A = U Σ Vᵀ for the current batch shape (``operators.spectral``), or None
        where unavailable: the operator's own view (circular blur, super-resolution, inpainting,
        identity, dense), else a dense SVD for deterministic operators on images with C·H·W ≤ 4096, else None.
        Needs a draw / measure first (None before)."""
        if self._x_shape is None:
            return None
        key = self._x_shape
        if key not in self._views:
            view = self.operator.spectral_view(self._x_shape) if hasattr(self.operator, "spectral_view") else None
            if view is None:
                view = dense_fallback(self.operator, self._x_shape)
            self._views[key] = view
        return self._views[key]

    def svd(self) -> SpectralView | None:
        """Same as :attr:`spectral`."""
        return self.spectral

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        """A⁺ y = V Σ⁺ Uᵀ y (zero singular values give 0), images (N, C, H, W). Raises
        ValueError without a spectral view."""
        view = self.spectral
        if view is None:
            raise ValueError(f"{self.name}: no spectral view for A⁺ (operator has none and the images are too "
                             "large for a dense SVD)")
        z = view.U_T(y)
        s = view.sing(z)
        return view.V(torch.where(s > 0, z / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(z)))

    def __repr__(self) -> str:
        return f"Physics(operator={self.operator!r}, noise={self.noise_name}, sigma_n={self.sigma_n})"
