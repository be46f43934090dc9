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
    (the impulse response is k itself, centred on the impulse); ``F.conv2d``, which DPS and the
    paper's code use, correlates, i.e. applies k rotated by 180° (the same for symmetric
    kernels): rotate a kernel by 180° (``k[::-1, ::-1]``) when moving it between the two
    (see :meth:`LinearOperator.params`; saved ``params/*.npy`` and ``state_dict`` kernels
    follow our convolution convention). Spectra are built
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

#: Constants of the ``motionblur`` package (L. Borodenko, github.com/LeviBorodenko/motionblur),
#: the generator of DPS's (Chung et al. 2023) and the paper's motion-blur kernels: the path is
#: drawn on a canvas MB_SUPERSAMPLE times the kernel size, its maximal length is
#: MB_PATH_FRACTION x the canvas diagonal x (U(0, 1) + U(0, intensity²)), its step lengths are
#: Beta(MB_STEP_BETA) x (1 − intensity + MB_EPS) x diagonal, the sign-flip probability of its
#: step angles is Beta(MB_JITTER_BETA), the line is diagonal / MB_LINE_DIV pixels wide and
#: blurred with a Gaussian of radius diagonal x MB_BLUR_FRACTION (both rounded down).
MB_SUPERSAMPLE = 2
MB_PATH_FRACTION = 0.75
MB_STEP_BETA = (1.0, 30.0)
MB_JITTER_BETA = (2.0, 20.0)
MB_EPS = 0.1
MB_LINE_DIV = 150.0
MB_BLUR_FRACTION = 0.01


def motion_path(rng: np.random.Generator, kernel_size: int, intensity: float) -> np.ndarray:
    """Random camera-shake path with the distribution of the ``motionblur`` package's
    ``Kernel._createPath`` (our own implementation, drawing from ``rng``). On a canvas of side
    S = 2 · kernel_size with diagonal D = √2 S:

    1. a maximal length L = 0.75 · D · (U(0, 1) + U(0, intensity²));
    2. step lengths r_j = Beta(1, 30) · (1 − intensity + 0.1) · D, a draw kept only if < L,
       until Σ r_j ≥ L (so the path length is random: about 0.37 D on average at intensity
       0.5, and the path is **not** rescaled to span the kernel);
    3. a maximal angle Θ ~ U(0, intensity · π), a sign-flip probability p ~ Beta(2, 20), a first
       step angle θ_1 ~ U(−Θ, Θ), then |θ_j| ~ Triangular(0, intensity · Θ, Θ + 0.1), the sign
       of θ_{j−1} kept with probability 1 − p and flipped with probability p;
    4. vertices z_j = Σ_{i ≤ j} r_i e^{i θ_i}, shifted so that their mean is 0, rotated by
       e^{i φ}, φ ~ U(0, π), and shifted to the canvas centre (S + iS)/2.

    Args:
        rng: the only source of randomness.
        kernel_size: odd int >= 1 (k; the canvas is 2k x 2k).
        intensity: in [0, 1]; 0 gives a straight segment, 1 long curved paths.

    Returns:
        (J,) complex128 vertices on the 2k x 2k canvas (real = column, imag = row, in pixels),
        J >= 2 (J = 1 only in the probability-zero case L = 0).
    """
    size = MB_SUPERSAMPLE * kernel_size
    diag = math.hypot(size, size)
    max_len = MB_PATH_FRACTION * diag * (rng.uniform() + rng.uniform(0.0, intensity ** 2))
    step_scale = (1.0 - intensity + MB_EPS) * diag
    chunks, total = [], 0.0
    while total < max_len:                        # vectorised form of "draw, keep if < L, repeat"
        draw = rng.beta(*MB_STEP_BETA, size=256) * step_scale
        draw = draw[draw < max_len]
        cum = total + np.cumsum(draw)
        stop = int(np.searchsorted(cum, max_len))  # first index with a running sum >= L
        chunks.append(draw[: stop + 1])
        total = float(cum[min(stop, len(cum) - 1)]) if len(cum) else total
    steps = np.concatenate(chunks) if chunks else np.zeros(1)
    n = len(steps)
    max_angle = rng.uniform(0.0, intensity * math.pi)
    jitter = rng.beta(*MB_JITTER_BETA)
    first = rng.uniform(-max_angle, max_angle)
    magnitudes = rng.triangular(0.0, intensity * max_angle, max_angle + MB_EPS, size=n - 1)
    flips = rng.uniform(size=n - 1) < jitter
    signs = np.sign(first) * np.cumprod(np.where(flips, -1.0, 1.0))
    angles = np.concatenate([[first], signs * magnitudes])
    path = np.cumsum(steps * np.exp(1j * angles))
    path = (path - path.mean()) * np.exp(1j * rng.uniform(0.0, math.pi))
    return path + (size + 1j * size) / 2


def rasterize_path(path: np.ndarray, kernel_size: int) -> np.ndarray | None:
    """Kernel of a :func:`motion_path`, rasterised as the ``motionblur`` package does with
    Pillow: the polyline through the vertices drawn in white on a black 2k x 2k 8-bit canvas,
    max(1, ⌊D/150⌋) pixels wide (D = the canvas diagonal; the package asks for ⌊D/150⌋, which
    is 0 below k = 54 and drew a one-pixel line in the Pillow of its time but draws nothing in
    current Pillow), a Gaussian blur of radius ⌊0.01 D⌋, a Lanczos resize to k x k, normalised
    to sum 1. The path is used as it is: it is **not** rescaled to span the kernel (its length
    is random, see :func:`motion_path`), and parts that leave the canvas are cut off.

    Args:
        path: (J,) complex vertices on the 2k x 2k canvas (real = column, imag = row).
        kernel_size: odd int k >= 1.

    Returns:
        (k, k) float64, non-negative, sum 1 (entry [row, col]); None if nothing of the path
        landed on the canvas (the caller draws again).
    """
    from PIL import Image, ImageDraw, ImageFilter   # Pillow: a runtime requirement (image I/O)
    size = MB_SUPERSAMPLE * kernel_size
    diag = math.hypot(size, size)
    canvas = Image.new("L", (size, size), 0)
    points = [(float(z.real), float(z.imag)) for z in path]
    draw = ImageDraw.Draw(canvas)
    width = max(1, int(diag / MB_LINE_DIV))
    if len(points) > 1:
        draw.line(points, fill=255, width=width)
    else:
        draw.point(points, fill=255)
    canvas = canvas.filter(ImageFilter.GaussianBlur(radius=int(diag * MB_BLUR_FRACTION)))
    canvas = canvas.resize((kernel_size, kernel_size), resample=Image.Resampling.LANCZOS)
    kern = np.asarray(canvas, dtype=np.float64)
    total = kern.sum()
    return kern / total if total > 0 else None


def motion_kernel(rng: np.random.Generator, kernel_size: int, intensity: float) -> np.ndarray:
    """One random camera-shake kernel with the distribution of the ``motionblur`` package's
    ``Kernel(size=(k, k), intensity).kernelMatrix``, the generator of DPS and the paper:
    :func:`motion_path` rasterised by :func:`rasterize_path`. At k = 61, intensity 0.5 the RMS
    radius about the kernel's centroid is about 10 ± 5 px (not the kernel's half-width: the
    path length is random). Drawn again (from the same ``rng``) in the rare case that nothing
    lands on the canvas.

    Args:
        rng: the only source of randomness.
        kernel_size: odd int >= 1.
        intensity: in [0, 1]; 0 gives a straight segment of random length and direction,
            larger values longer, more curved paths.

    Returns:
        (kernel_size, kernel_size) float64, non-negative, sum 1, entry [row, col]. The
        operator convolves with it (see :class:`ConvolutionOperator`).

    Raises:
        ValueError: bad kernel_size or intensity outside [0, 1].
    """
    k = validate_kernel_size(kernel_size)
    intensity = real_number(intensity, "intensity", "motion_blur", low=0.0, high=1.0)
    while True:
        kern = rasterize_path(motion_path(rng, k, intensity), k)
        if kern is not None:
            return kern


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
