"""Super-resolution operator: circular blur with a fixed anti-aliasing kernel followed by keeping
every ``scale_factor``-th pixel, with an exact FFT solve of (sigma2 I + r2 A A^T) on the low-res grid."""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .base import LinearOperator, per_sample, real_number, register_operator, safe_reciprocal
from .blur import circular_filter, compute_dtype, gaussian_kernel, kernel_spectrum

log = logging.getLogger(__name__)

#: Size and std (pixels) of the ``gaussian`` degradation kernel (the paper's code: a 9x9 delta
#: through ``scipy.ndimage.gaussian_filter(sigma=3)``, see :func:`sr_kernel`).
SR_GAUSSIAN_SIZE = 9
SR_GAUSSIAN_STD = 3.0
#: Parameter a of the Keys cubic kernel used by ``bicubic`` (as MATLAB imresize and DDRM).
BICUBIC_A = -0.5

DEGRADATIONS = ("gaussian", "bicubic", "avg_pool")


def cubic(t: np.ndarray, a: float = BICUBIC_A) -> np.ndarray:
    """Keys' cubic convolution kernel W(t) (Keys 1981), support |t| < 2."""
    t = np.abs(t)
    return np.where(t <= 1, (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1,
                    np.where(t < 2, a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a, 0.0))


def sr_kernel(scale_factor: int, degradation: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Anti-aliasing kernel of :class:`SuperResolution` and its origin (the entry mapped to offset 0).

    - ``gaussian``: :func:`operators.blur.gaussian_kernel` (9, 3): a centred 9x9 delta filtered by
      ``scipy.ndimage.gaussian_filter(sigma=3)`` in its default "reflect" mode (the tails fold
      back into the 9x9 window), normalised; origin (4, 4). This is the paper's construction; it
      differs from a sampled, normalised exp(−r²/18) by up to 27 % of the peak.
    - ``bicubic``: separable, 1-D taps W((i − 2s + 0.5)/s), i = 0..4s−1, a = −0.5, normalised
      (DDRM's bicubic SR kernel, Kawar et al. 2022); origin (2s, 2s), so low-res pixel j
      averages around high-res position s·j + 0.5.
    - ``avg_pool``: s x s box 1/s^2; origin (s−1, s−1), so that A = ``F.avg_pool2d(x, s)``
      exactly (low-res pixel j is the mean of the block [s·j, s·j + s)): the standard
      ``avg_pool2d`` grid. The paper's code averages blocks on a grid shifted by one
      high-res pixel; we keep the standard grid, so an ``avg_pool`` measurement equals the
      paper's for the input translated by one pixel, not for the same input.

    Returns:
        (kernel (k, k) float64 summing to 1, (origin_row, origin_col)).

    Raises:
        ValueError: unknown degradation.
    """
    s = scale_factor
    if degradation == "gaussian":
        kern = gaussian_kernel(SR_GAUSSIAN_SIZE, SR_GAUSSIAN_STD)
        origin = SR_GAUSSIAN_SIZE // 2
    elif degradation == "bicubic":
        taps = cubic((np.arange(4 * s) - 2 * s + 0.5) / s)
        kern = np.outer(taps, taps)
        origin = 2 * s
    elif degradation == "avg_pool":
        kern = np.ones((s, s))
        origin = s - 1
    else:
        raise ValueError(f"degradation must be one of {', '.join(DEGRADATIONS)}, got {degradation!r}")
    return kern / kern.sum(), (origin, origin)


@register_operator("super_resolution")
class SuperResolution(LinearOperator):
    """Super-resolution operator A = S K: circular blur K with :func:`sr_kernel` then S, keeping
    every s-th pixel (offset 0). y: (N, C, H/s, W/s).

        A^T y = K^T S^T y      (zero-filled upsampling, then circular correlation with k),
        A A^T = S K K^T S^T    circulant on the low-res grid with eigenvalues
                λ(l) = mean over the s^2 aliases l + (a h, b w) of |K̂|^2,

    (the DFT of a subsampled signal averages its aliases), so
    (sigma2 I + r2 A A^T)^{-1} v = F_low^{-1}(F_low v / (sigma2 + r2 λ)) exactly.

    Args:
        scale_factor: int s >= 1 dividing H and W.
        degradation: "gaussian" (default), "bicubic" or "avg_pool" (see :func:`sr_kernel`).
        in_shape: accepted and ignored (the paper's configs pass it).
        device: default device (hint).

    Raises:
        ValueError: bad scale_factor/degradation (construction); s not dividing the image size
            or kernel larger than the image (use).

    Example:
        >>> import torch
        >>> from operators import get_operator
        >>> op = get_operator("super_resolution", scale_factor=4, degradation="bicubic")
        >>> op.forward(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 3, 16, 16])
    """

    def __init__(self, scale_factor: int, degradation: str = "gaussian", in_shape: Any = None,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        s = real_number(scale_factor, "scale_factor", "super_resolution", low=1.0)
        if not s.is_integer():
            raise ValueError(f"super_resolution: scale_factor must be an integer >= 1, got {scale_factor!r}")
        if degradation not in DEGRADATIONS:
            raise ValueError(f"super_resolution: degradation must be one of {', '.join(DEGRADATIONS)}, "
                             f"got {degradation!r}")
        if in_shape is not None:
            log.debug("super_resolution: ignoring in_shape=%r (the shape comes from the input)", in_shape)
        self.scale_factor = int(s)
        self.degradation = degradation
        self.kernel, self.origin = sr_kernel(self.scale_factor, degradation)

    def validate_shape(self, x_shape: tuple[int, int, int, int]) -> None:
        """ValueError if s does not divide H and W or the kernel is larger than the image."""
        s, (h, w) = self.scale_factor, x_shape[2:]
        if h % s or w % s:
            raise ValueError(f"super_resolution: scale_factor {s} does not divide the image size {h}x{w}")
        k = self.kernel.shape[0]
        if k > h or k > w:
            raise ValueError(f"super_resolution: the {self.degradation} kernel ({k}x{k}) is larger than the "
                             f"image {h}x{w}")

    def y_shape(self, x_shape: Sequence[int]) -> tuple[int, int, int, int]:
        """(N, C, H/s, W/s); ValueError if s does not divide H, W."""
        n, c, h, w = super().y_shape(x_shape)
        return n, c, h // self.scale_factor, w // self.scale_factor

    def _spectra(self, height: int, width: int, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K̂ rfft (1, 1, H, W//2+1), λ rfft-layout (1, 1, H/s, W/s//2+1)), cached per
        (H, W, dtype, device)."""
        dtype = compute_dtype(ref)
        key = ("spectra", height, width, dtype, ref.device)

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            s = self.scale_factor
            h, w = height // s, width // s
            full = kernel_spectrum(self.kernel[None], height, width, self.origin, torch.float64, torch.device("cpu"),
                                   full=True)[0, 0]
            eig = (full.abs() ** 2).reshape(s, h, s, w).mean(dim=(0, 2))[:, : w // 2 + 1]
            spec = kernel_spectrum(self.kernel[None], height, width, self.origin, dtype, ref.device)
            return spec, eig[None, None].to(device=ref.device, dtype=dtype)

        return self._cached(key, build)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = S (k ⊛ x); x: (N, C, H, W) -> y: (N, C, H/s, W/s), x's dtype."""
        self._check_batch(x)
        self.validate_shape(tuple(x.shape))
        spec, _ = self._spectra(x.shape[-2], x.shape[-1], x)
        s = self.scale_factor
        return circular_filter(x.to(compute_dtype(x)), spec)[..., ::s, ::s].to(x.dtype)

    def _check_y(self, y: torch.Tensor) -> tuple[int, int]:
        self._check_batch(y)
        s = self.scale_factor
        height, width = y.shape[-2] * s, y.shape[-1] * s
        self.validate_shape((y.shape[0], y.shape[1], height, width))
        return height, width

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y = k ⋆ (S^T y): zero-filled upsampling then circular correlation;
        y: (N, C, h, w) -> (N, C, h s, w s)."""
        height, width = self._check_y(y)
        n, c, h, w = y.shape
        s = self.scale_factor
        yy = y.to(compute_dtype(y)).reshape(n, c, h, 1, w, 1)
        up = F.pad(yy, (0, s - 1, 0, 0, 0, s - 1)).reshape(n, c, height, width)
        spec, _ = self._spectra(height, width, y)
        return circular_filter(up, spec.conj()).to(y.dtype)

    def cov_solve(self, v: torch.Tensor, r2: float | torch.Tensor, sigma2: float | torch.Tensor) -> torch.Tensor:
        """(sigma2 I + r2 A A^T)^{-1} v by FFT on the low-res grid (eigenvalues λ above);
        v: (N, C, h, w); r2, sigma2: floats or (N,) tensors; zero denominators -> 0 (pseudo-inverse)."""
        height, width = self._check_y(v)
        _, eig = self._spectra(height, width, v)
        vv = v.to(compute_dtype(v))
        n = v.shape[0]
        den = per_sample(sigma2, n, vv) + per_sample(r2, n, vv) * eig
        return circular_filter(vv, safe_reciprocal(den)).to(v.dtype)

    def spectral_view(self, x_shape: tuple[int, int, int, int]):
        """:class:`operators.spectral.SuperResolutionView` (U: low-res Hartley basis, Σ = √λ,
        V: per alias group, range direction and null-space basis)."""
        from .spectral import SuperResolutionView
        self.validate_shape(tuple(x_shape))
        spec = kernel_spectrum(self.kernel[None], x_shape[2], x_shape[3], self.origin, torch.float64,
                               torch.device("cpu"), full=True)
        return SuperResolutionView(spec, self.scale_factor, x_shape)

    def params(self, i: int) -> np.ndarray:
        """The (k, k) anti-aliasing kernel (the same for every image)."""
        return self.kernel.copy()

    def display(self, y: torch.Tensor) -> torch.Tensor:
        """y upsampled by nearest neighbour to (N, C, H, W)."""
        s = self.scale_factor
        return y.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)
