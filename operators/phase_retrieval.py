"""Fourier phase retrieval, y = |F(pad(x))| (+ noise), as in DPS (Chung et al., ICLR 2023,
§4 and code ``PhaseRetrievalOperator``) and DAPS (Zhang et al., CVPR 2025, code
``forward_operator.PhaseRetrieval``): a nonlinear operator, with exact derivatives."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .base import Operator, check_x_shape, real_number, register_operator

#: the two input conventions: DAPS maps x to [0, 1] before padding, DPS pads x in [-1, 1].
INPUT_RANGES = ("unit", "signed")


def _complex(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.complex128 if x.dtype == torch.float64 else torch.complex64)


def fft2c(u: torch.Tensor) -> torch.Tensor:
    """Orthonormal centred 2-D DFT over the last two axes, fftshift(fft2(ifftshift(u), ortho)) (the
    fastMRI ``fft2c`` both reference codes use); unitary."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(_complex(u), dim=dims), norm="ortho"), dim=dims)


def ifft2c(z: torch.Tensor) -> torch.Tensor:
    """Inverse (= adjoint) of :func:`fft2c`: fftshift(ifft2(ifftshift(z), ortho))."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(z, dim=dims), norm="ortho"), dim=dims)


@register_operator("phase_retrieval")
class PhaseRetrieval(Operator):
    """Fourier phase retrieval: for images x (N, C, H, W) in [-1, 1],

        u = a x + b           (``input_range: unit``: a = b = ½, DAPS; ``signed``: a = 1, b = 0, DPS)
        y = |F_c(P u)|        (N, C, H + 2 p_h, W + 2 p_w), real, ≥ 0

    per channel, with P the zero padding by p_h = int(oversample / 8 · H) rows and
    p_w = int(oversample / 8 · W) columns on each side (for 256 × 256 images and oversample 2
    both reference codes pad 64) and F_c the orthonormal centred 2-D DFT (:func:`fft2c`). Noise
    (``measurement.noise``, Gaussian σ in both references) is added to y.

    Derivatives (exact, z = F_c(P u), φ = z / |z|, 0 where z = 0 as autograd's ``abs``):

        J u' = a · Re(conj(φ) ⊙ F_c(P u')),     Jᵀ v = a · Pᵀ Re(F_c^H(φ ⊙ v))

    so ||J|| ≤ a (F_c unitary, P an isometry): ``jacobian_norm``. The map is invariant to a
    shift of u within the padded frame and to the 180° rotation u ↦ u(−·) (the twin image):
    a method can only recover x up to these (docs/methods.md).

    Args:
        oversample (float >= 0, default 2.0): the reference codes' ``oversample``.
        input_range ("unit" or "signed", default "unit"): DAPS's [0, 1] shift or DPS's none.
        device: default device (hint).

    Raises:
        ValueError: a bad ``oversample`` or ``input_range`` (one line, naming the key).

    Example:
        >>> import torch
        >>> from operators import get_operator
        >>> op = get_operator("phase_retrieval", oversample=2.0)
        >>> op.forward(-torch.ones(1, 1, 28, 28)).abs().max().item()   # x = −1 is u = 0
        0.0
        >>> tuple(op.y_shape((1, 1, 28, 28)))
        (1, 1, 42, 42)
    """

    is_linear = False
    #: y holds Fourier magnitudes, not pixels: measurement mode reads it from .npy only.
    y_is_image = False

    def __init__(self, oversample: float = 2.0, input_range: str = "unit", device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        self.oversample = real_number(oversample, "oversample", "operator 'phase_retrieval'", low=0.0)
        if input_range not in INPUT_RANGES:
            raise ValueError(f"operator 'phase_retrieval': input_range must be one of {', '.join(INPUT_RANGES)}, "
                             f"got {input_range!r}")
        self.input_range = input_range
        self.a, self.b = (0.5, 0.5) if input_range == "unit" else (1.0, 0.0)
        self.jacobian_norm = self.a

    def pads(self, h: int, w: int) -> tuple[int, int]:
        """(p_h, p_w) = (int(oversample/8 · H), int(oversample/8 · W)) zero rows/columns per side."""
        return int(self.oversample / 8.0 * h), int(self.oversample / 8.0 * w)

    def y_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        """(N, C, H + 2 p_h, W + 2 p_w)."""
        n, c, h, w = check_x_shape(x_shape)
        ph, pw = self.pads(h, w)
        return n, c, h + 2 * ph, w + 2 * pw

    def _pad(self, u: torch.Tensor) -> torch.Tensor:
        ph, pw = self.pads(*u.shape[-2:])
        return F.pad(u, (pw, pw, ph, ph))

    def _crop(self, u: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        ph, pw = self.pads(*hw)
        return u[..., ph:ph + hw[0], pw:pw + hw[1]]

    def _spectrum(self, x: torch.Tensor) -> torch.Tensor:
        self._check_batch(x)
        return fft2c(self._pad(self.a * x + self.b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = |F_c(P(a x + b))|; x (N, C, H, W) -> (N, C, H + 2 p_h, W + 2 p_w), x's real dtype."""
        return self._spectrum(x).abs()

    @staticmethod
    def _phase(z: torch.Tensor) -> torch.Tensor:
        mag = z.abs()
        return torch.where(mag > 0, z / torch.where(mag > 0, mag, torch.ones_like(mag)), torch.zeros_like(z))

    def vjp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """J_A(x)ᵀ v = a · Pᵀ Re(F_c^H(φ ⊙ v)); x (N, C, H, W), v (N, C, H', W') -> (N, C, H, W)."""
        phi = self._phase(self._spectrum(x))
        g = ifft2c(phi * v.to(phi.real.dtype)).real
        return (self.a * self._crop(g, tuple(x.shape[-2:]))).to(x.dtype)

    def jvp(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """J_A(x) u = a · Re(conj(φ) ⊙ F_c(P u)); x, u (N, C, H, W) -> (N, C, H', W')."""
        phi = self._phase(self._spectrum(x))
        return (self.a * (phi.conj() * fft2c(self._pad(u.to(x.dtype)))).real).to(x.dtype)

    def pinv_init(self, y: torch.Tensor) -> torch.Tensor:
        """A rough inverse, RED-diff's ``H_pinv``: u = Pᵀ|F_c^H y| (zero phase), x = (u − b) / a,
        images (N, C, H, W) with H = (H' ) / (1 + oversample/4) recovered from the padding."""
        hp, wp = y.shape[-2:]
        h, w = self._unpadded(hp), self._unpadded(wp)
        u = self._crop(ifft2c(_complex(y)).abs(), (h, w))
        return ((u - self.b) / self.a).to(y.dtype if y.is_floating_point() else torch.float32)

    def _unpadded(self, size: int) -> int:
        """The image size H whose padded size is ``size`` (ValueError if none)."""
        guess = int(round(size / (1.0 + self.oversample / 4.0)))
        for h in range(max(1, guess - 3), guess + 4):
            if h + 2 * int(self.oversample / 8.0 * h) == size:
                return h
        raise ValueError(f"operator 'phase_retrieval': no image size pads to {size} at oversample {self.oversample}")

    def display(self, y: torch.Tensor) -> torch.Tensor:
        """The log-magnitude spectrum log(1 + y), scaled per image to [-1, 1] and resized
        (antialiased bilinear) from (H', W') to the image size (N, C, H, W), so that it sits in
        the run's pictures beside the images: a magnitude spectrum spans decades, its logarithm
        shows its structure. (The saved ``measurement/*.npy`` keeps y itself, (C, H', W').)"""
        lg = torch.log1p(y.clamp(min=0).float())
        top = lg.flatten(1).amax(dim=1).clamp(min=1e-12).reshape(-1, *([1] * (y.dim() - 1)))
        shown = 2.0 * lg / top - 1.0
        size = (self._unpadded(y.shape[-2]), self._unpadded(y.shape[-1]))
        return F.interpolate(shown, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)

    def __repr__(self) -> str:
        return f"PhaseRetrieval(oversample={self.oversample}, input_range={self.input_range!r})"


__all__ = ["PhaseRetrieval", "fft2c", "ifft2c"]
