"""Blur operators (Gaussian and random camera-shake motion blur) as circular convolutions
computed by FFT, the kernel generators, and the circular-convolution helpers that
:mod:`operators.super_resolution` reuses."""
from __future__ import annotations

import logging
import math
import numbers
from typing import Sequence

import numpy as np
import scipy.ndimage
import torch

from .base import LinearOperator, per_sample, real_number, register_operator, safe_reciprocal

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Circular convolution by FFT
# --------------------------------------------------------------------------------------------

def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """Real dtype the FFTs run in: float64 for float64 input, float32 otherwise."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def embed_kernels(kernels: np.ndarray, height: int, width: int, origin: tuple[int, int]) -> np.ndarray:
    """Place kernels on a periodic (H, W) grid so that kernel entry ``origin`` sits at pixel (0, 0).

    Args:
        kernels: (B, kh, kw) array.
        height, width: image size H, W; must be >= kh, kw.
        origin: (row, col) index of the kernel entry mapped to offset 0 (the "centre").

    Returns:
        (B, H, W) float64 array k_pad with k_pad[(i - origin) mod (H, W)] = kernel[i].

    Raises:
        ValueError: kernel larger than the image.
    """
    b, kh, kw = kernels.shape
    if kh > height or kw > width:
        raise ValueError(f"kernel of size {kh}x{kw} is larger than the image {height}x{width}; "
                         "use a smaller kernel_size or a larger image")
    out = np.zeros((b, height, width), dtype=np.float64)
    out[:, :kh, :kw] = kernels
    return np.roll(out, (-origin[0], -origin[1]), axis=(1, 2))


def kernel_spectrum(kernels: np.ndarray, height: int, width: int, origin: tuple[int, int],
                    dtype: torch.dtype, device: torch.device, full: bool = False) -> torch.Tensor:
    """DFT of the periodically embedded kernels (see :func:`embed_kernels`).

    Returns:
        complex tensor (B, 1, H, W//2 + 1) (``rfft2``; (B, 1, H, W) ``fft2`` if ``full``) of the
        complex dtype matching the real ``dtype``, on ``device``; computed in float64.
    """
    pad = torch.from_numpy(embed_kernels(kernels, height, width, origin))
    spec = torch.fft.fft2(pad) if full else torch.fft.rfft2(pad)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    return spec.unsqueeze(1).to(device=device, dtype=cdtype)


def circular_filter(x: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
    """irfft2(rfft2(x) * spectrum): circular convolution of x: (N, C, H, W) with the kernel
    whose ``rfft2`` spectrum is (B, 1, H, W//2+1), B in {1, N}; (N, C, H, W) in x's real dtype."""
    h, w = x.shape[-2:]
    return torch.fft.irfft2(torch.fft.rfft2(x) * spectrum, s=(h, w))


def validate_kernel_size(kernel_size: int, name: str = "kernel_size") -> int:
    """``kernel_size`` as an odd int >= 1; ValueError naming ``name`` otherwise."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, numbers.Real) \
            or not math.isfinite(float(kernel_size)) or not float(kernel_size).is_integer():
        raise ValueError(f"{name} must be an odd integer >= 1, got {kernel_size!r}")
    k = int(kernel_size)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= 1 (the kernel has a centre pixel), got {kernel_size!r}")
    return k


class ConvolutionOperator(LinearOperator):
    """A x = k ⊛ x, circular (periodic boundary) 2-D convolution of every channel with a kernel
    k: (kh, kw) that is the same for the batch or one per image; the kernel entry ``origin``
    (the centre, kh//2, kw//2, unless a subclass says otherwise) maps to offset 0, so a
    delta kernel is the identity. Convolution is diagonalised by the DFT (K = DFT(k)):

        A x = F^{-1}(K · F x),   A^T y = F^{-1}(conj(K) · F y),
        (sigma2 I + r2 A A^T)^{-1} v = F^{-1}(F v / (sigma2 + r2 |K|^2)),

    which makes ``cov_solve`` exact. This is true convolution, y[p] = sum_i k[i] x[p − (i − origin)]
    (the impulse response is k itself, centred on the impulse); ``F.conv2d``, which DPS uses,
    correlates, i.e. applies k rotated by 180° (the same for symmetric kernels). Spectra are built
    once per (H, W, dtype, device) (and per draw for random kernels) and cached. Subclasses
    supply :meth:`_kernels` and :meth:`_kernel_hw`.
    """

    def _kernels(self) -> np.ndarray:
        """(B, kh, kw) kernels, B = 1 (shared) or N (per image)."""
        raise NotImplementedError

    def _origin(self, kernels: np.ndarray) -> tuple[int, int]:
        return kernels.shape[1] // 2, kernels.shape[2] // 2

    def _spectrum(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, |K|^2) for x's (H, W), compute dtype and device, cached: shapes (B, 1, H, W//2+1)."""
        h, w = x.shape[-2:]
        dtype = compute_dtype(x)
        key = ("spectrum", h, w, dtype, x.device)

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            ks = self._kernels()
            spec = kernel_spectrum(ks, h, w, self._origin(ks), dtype, x.device)
            return spec, spec.abs() ** 2

        return self._cached(key, build)

    def validate_shape(self, x_shape: tuple[int, int, int, int]) -> None:
        """ValueError if the kernel is larger than the image."""
        kh, kw = self._kernel_hw()
        if kh > x_shape[2] or kw > x_shape[3]:
            raise ValueError(f"{self.name}: kernel_size {kh}x{kw} is larger than the image "
                             f"{x_shape[2]}x{x_shape[3]}")

    def _kernel_hw(self) -> tuple[int, int]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = k ⊛ x (circular); x, y: (N, C, H, W), y in x's dtype."""
        self._check_batch(x)
        self.validate_shape(tuple(x.shape))
        spec, _ = self._spectrum(x)
        return circular_filter(x.to(compute_dtype(x)), spec).to(x.dtype)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y = k ⋆ y (circular correlation, conj(K) in Fourier); (N, C, H, W)."""
        self._check_batch(y)
        self.validate_shape(tuple(y.shape))
        spec, _ = self._spectrum(y)
        return circular_filter(y.to(compute_dtype(y)), spec.conj()).to(y.dtype)

    def spectral_view(self, x_shape: tuple[int, int, int, int]):
        """:class:`operators.spectral.CircularBlurView` (V = 2-D Hartley basis, Σ = |K̂|)."""
        from .spectral import CircularBlurView
        self.validate_shape(tuple(x_shape))
        ks = self._kernels()
        return CircularBlurView(kernel_spectrum(ks, x_shape[2], x_shape[3], self._origin(ks), torch.float64,
                                                torch.device("cpu"), full=True), x_shape)

    def cov_solve(self, v: torch.Tensor, r2: float | torch.Tensor, sigma2: float | torch.Tensor) -> torch.Tensor:
        """(sigma2 I + r2 A A^T)^{-1} v = F^{-1}(F v / (sigma2 + r2 |K|^2)); v: (N, C, H, W);
        r2, sigma2: floats or (N,) tensors. Frequencies where sigma2 + r2 |K|^2 = 0 are set to 0
        (pseudo-inverse)."""
        self._check_batch(v)
        self.validate_shape(tuple(v.shape))
        _, power = self._spectrum(v)
        n = v.shape[0]
        vv = v.to(compute_dtype(v))
        den = per_sample(sigma2, n, vv) + per_sample(r2, n, vv) * power
        return circular_filter(vv, safe_reciprocal(den)).to(v.dtype)


# --------------------------------------------------------------------------------------------
# Gaussian blur
# --------------------------------------------------------------------------------------------

def gaussian_kernel(kernel_size: int, intensity: float) -> np.ndarray:
    """Gaussian blur kernel as in DPS's ``Blurkernel`` (Chung et al. 2023, code
    ``util/img_utils.py``): a centred delta of size ``kernel_size`` filtered by
    ``scipy.ndimage.gaussian_filter(delta, sigma=intensity)`` (mode "reflect", truncate 4),
    normalised to sum 1.

    Args:
        kernel_size: odd int >= 1.
        intensity: Gaussian std in pixels, >= 0 (0 gives the delta, i.e. the identity).

    Returns:
        (kernel_size, kernel_size) float64, non-negative, sum 1.

    Raises:
        ValueError: even/non-positive kernel_size or negative intensity.
    """
    k = validate_kernel_size(kernel_size)
    intensity = real_number(intensity, "intensity", "gaussian_blur", low=0.0)
    delta = np.zeros((k, k), dtype=np.float64)
    delta[k // 2, k // 2] = 1.0
    kern = scipy.ndimage.gaussian_filter(delta, sigma=intensity)
    return kern / kern.sum()


@register_operator("gaussian_blur")
class GaussianBlur(ConvolutionOperator):
    """Gaussian deblurring operator: A x = k ⊛ x (circular), k = :func:`gaussian_kernel`
    (DPS's Gaussian blur; the paper's configs use kernel_size 61, intensity 3.0 on 256x256).

    Args:
        kernel_size: odd int >= 1, at most the image size.
        intensity: Gaussian std in pixels, >= 0.
        device: default device (hint).

    Raises:
        ValueError: bad kernel_size/intensity (construction); kernel larger than the image (use).

    Example:
        >>> import torch
        >>> from operators import get_operator
        >>> op = get_operator("gaussian_blur", kernel_size=5, intensity=1.0)
        >>> y = op.forward(torch.rand(2, 3, 16, 16) * 2 - 1)   # (2, 3, 16, 16)
    """

    def __init__(self, kernel_size: int, intensity: float, device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        self.kernel_size = validate_kernel_size(kernel_size)
        self.intensity = real_number(intensity, "intensity", "gaussian_blur", low=0.0)
        self.kernel = gaussian_kernel(self.kernel_size, self.intensity)   # (k, k)

    def _kernels(self) -> np.ndarray:
        return self.kernel[None]

    def _kernel_hw(self) -> tuple[int, int]:
        return self.kernel_size, self.kernel_size

    def params(self, i: int) -> np.ndarray:
        """The (k, k) kernel (the same for every image)."""
        return self.kernel.copy()


# --------------------------------------------------------------------------------------------
# Motion blur
# --------------------------------------------------------------------------------------------

#: Constants of Boracchi & Foi's trajectory generator (``createTrajectory.m``): number of
#: samples and total path length in pixels of the canonical trajectory (on their 64x64 canvas).
BF_NUM_STEPS = 2000
BF_TOTAL_LENGTH = 60.0


def motion_trajectory(rng: np.random.Generator, anxiety: float, num_steps: int = BF_NUM_STEPS,
                      total_length: float = BF_TOTAL_LENGTH) -> np.ndarray:
    """Random camera-shake trajectory, following Boracchi & Foi, "Modeling the performance of
    image restoration from motion blur", IEEE TIP 2012 (their ``createTrajectory``): a particle
    moving at constant speed whose velocity v gets, at each of ``num_steps`` samples, a Gaussian
    kick, a pull back towards the start (centripetal term) and, rarely, an abrupt "big shake"
    that roughly reverses it:

        dv = shake + anxiety · (g · (n1 + i n2) − c · x_t) · L/(T−1),
        v ← (v + dv) / |v + dv| · L/(T−1),   x_{t+1} = x_t + v,

    with c ~ 0.7 U, g ~ 10 U, P(shake) = 0.2 U · anxiety, shake = 2 v e^{i(π + U − 0.5)}.

    Args:
        rng: the only source of randomness.
        anxiety: irregularity >= 0 (0: a straight line; B&F draw it in [0, 0.1]).
        num_steps: T, number of samples.
        total_length: L, path length in pixels.

    Returns:
        (T,) complex128 positions (real = column, imag = row), starting at 0.
    """
    centripetal = 0.7 * rng.random()
    gaussian_term = 10.0 * rng.random()
    freq_big_shakes = 0.2 * rng.random()
    angle = 2.0 * math.pi * rng.random()
    shake_u = rng.random(num_steps - 1)
    shake_angle = rng.random(num_steps - 1)
    kicks = rng.standard_normal((num_steps - 1, 2))
    step = total_length / (num_steps - 1)
    v = complex(math.cos(angle), math.sin(angle)) * step
    pos = np.zeros(num_steps, dtype=np.complex128)
    x = 0j
    for t in range(num_steps - 1):
        shake = 2.0 * v * complex(np.exp(1j * (math.pi + shake_angle[t] - 0.5))) \
            if shake_u[t] < freq_big_shakes * anxiety else 0j
        dv = shake + anxiety * (gaussian_term * complex(kicks[t, 0], kicks[t, 1]) - centripetal * x) * step
        nv = v + dv
        if abs(nv) > 0:            # a zero velocity (probability 0) keeps the previous direction
            v = nv / abs(nv) * step
        x = x + v
        pos[t + 1] = x
    return pos


def rasterize_trajectory(pos: np.ndarray, kernel_size: int) -> np.ndarray:
    """Kernel of a trajectory: equal exposure time per sample, each sample spread over its four
    neighbouring pixels by bilinear (sub-pixel) interpolation, as in B&F's ``createPSFs``.

    The trajectory is scaled so that its bounding box spans the kernel (its larger side is
    kernel_size − 1 pixels, as the ``motionblur`` package fits its path to the kernel) and that
    box is centred on the kernel centre; so the blur extent is set by kernel_size and the
    trajectory's irregularity only changes its shape.

    Args:
        pos: (T,) complex positions (real = column, imag = row).
        kernel_size: odd int >= 1.

    Returns:
        (kernel_size, kernel_size) float64, non-negative, sum 1.
    """
    k = kernel_size
    if k == 1:
        return np.ones((1, 1))
    pts = np.stack([pos.imag, pos.real], axis=1)                       # (T, 2): rows, cols
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    extent = float((hi - lo).max())
    if extent > 0:
        pts = (pts - (lo + hi) / 2) * ((k - 1) / extent)
    pts = np.clip(pts + (k - 1) / 2, 0.0, k - 1.0)
    base = np.minimum(np.floor(pts).astype(np.int64), k - 2)
    frac = pts - base
    kern = np.zeros((k, k), dtype=np.float64)
    for dr in (0, 1):
        for dc in (0, 1):
            wgt = (frac[:, 0] if dr else 1 - frac[:, 0]) * (frac[:, 1] if dc else 1 - frac[:, 1])
            np.add.at(kern, (base[:, 0] + dr, base[:, 1] + dc), wgt)
    kern = np.maximum(kern, 0.0)
    return kern / kern.sum()


#: anxiety of :func:`motion_trajectory` at intensity 1 (intensity 0.5 gives 0.005, the default of
#: common Python ports of B&F; B&F's own default, 0.1 · U, mostly gives tight loops).
MAX_ANXIETY = 0.01


def motion_kernel(rng: np.random.Generator, kernel_size: int, intensity: float) -> np.ndarray:
    """One random camera-shake kernel (our own generator in the spirit of Boracchi & Foi 2012
    and the ``motionblur`` package used by DPS): :func:`motion_trajectory` with
    anxiety = :data:`MAX_ANXIETY` · intensity, rasterised by :func:`rasterize_trajectory`.

    Args:
        rng: the only source of randomness.
        kernel_size: odd int >= 1.
        intensity: irregularity in [0, 1]; 0 gives a straight line across the kernel in a random
            direction, larger values more curved, looping, shaky paths.

    Returns:
        (kernel_size, kernel_size) float64, non-negative, sum 1.

    Raises:
        ValueError: bad kernel_size or intensity outside [0, 1].
    """
    k = validate_kernel_size(kernel_size)
    intensity = real_number(intensity, "intensity", "motion_blur", low=0.0, high=1.0)
    return rasterize_trajectory(motion_trajectory(rng, anxiety=MAX_ANXIETY * intensity), k)


@register_operator("motion_blur")
class MotionBlur(ConvolutionOperator):
    """Motion deblurring operator: A x = k_n ⊛ x_n (circular), with one random camera-shake
    kernel k_n = :func:`motion_kernel` per image, drawn once per batch by :meth:`draw` from that
    image's numpy Generator (the paper's configs: kernel_size 61, intensity 0.5 on 256x256).

    Args:
        kernel_size: odd int >= 1, at most the image size.
        intensity: irregularity of the trajectories, in [0, 1].
        device: default device (hint).

    Raises:
        ValueError: bad kernel_size/intensity; kernel larger than the image (``draw``).
        RuntimeError: used before ``draw``.

    Example:
        >>> import numpy as np, torch
        >>> from operators import get_operator
        >>> op = get_operator("motion_blur", kernel_size=9, intensity=0.5)
        >>> op.draw([np.random.default_rng(0), np.random.default_rng(1)], (2, 3, 16, 16))
        >>> y = op.forward(torch.zeros(2, 3, 16, 16)); k0 = op.params(0)   # (9, 9)
    """

    is_random = True
    _state_key = "kernels"

    def __init__(self, kernel_size: int, intensity: float, device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        self.kernel_size = validate_kernel_size(kernel_size)
        self.intensity = real_number(intensity, "intensity", "motion_blur", low=0.0, high=1.0)

    def _draw(self, rngs: Sequence[np.random.Generator], x_shape: tuple[int, int, int, int]) -> np.ndarray:
        return np.stack([motion_kernel(g, self.kernel_size, self.intensity) for g in rngs])

    def _validate_drawn(self, arr: np.ndarray, shape: tuple[int, int, int, int]) -> None:
        super()._validate_drawn(arr, shape)
        if arr.shape[1:] != (self.kernel_size, self.kernel_size):
            raise ValueError(f"{self.name}: kernels of shape {arr.shape[1:]} do not match kernel_size "
                             f"{self.kernel_size}")

    def _kernels(self) -> np.ndarray:
        return self._drawn

    def _kernel_hw(self) -> tuple[int, int]:
        return self.kernel_size, self.kernel_size
