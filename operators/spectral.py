"""Spectral views A = U Σ Vᵀ of the measurement operators, as operations (never as matrices,
except for small dense problems), for the methods that work per singular value (DDRM, DDNM).

Every view is built for one image shape (N, C, H, W) and has a fixed *coefficient layout*:
``V_T(x)`` maps images to coefficient tensors, ``U_T(y)`` maps measurements to the same layout
(entry j pairs with the singular value ``singulars[j]``), so that, for every x,

    singulars * V_T(x) == U_T(A x),     A x == U(singulars * V_T(x)),

V is orthonormal (V(V_T(x)) = x, ||V_T(x)|| = ||x||), ``U_T(y)`` is 0 where the singular value
is 0, and ``U`` ignores those entries. Coefficients are real (white noise in coefficients is
white noise in pixels).

Layouts: circular blur, inpainting and the identity keep the image layout (N, C, H, W); the
dense views (explicit matrices) use (N, d), d = C·H·W.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

#: Largest C·H·W for which an operator without its own view gets a dense SVD.
DENSE_SVD_MAX_DIM = 64 * 64


def _real_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def dht2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D discrete Hartley transform over the last two axes: Re F − Im F with F the
    unitary DFT (``fft2(norm="ortho")``). Real, orthonormal and its own inverse (Bracewell 1983)."""
    f = torch.fft.fft2(x.to(_real_dtype(x)), norm="ortho")
    return f.real - f.imag


class SpectralView:
    """Base class; see the module docstring for the contract. Attributes: ``x_shape`` (N, C, H, W)
    the view was built for, ``singulars`` (float32 tensor broadcastable to the coefficient
    layout, ≥ 0, 0 on the null space of A)."""

    x_shape: tuple[int, int, int, int]
    singulars: torch.Tensor

    def V_T(self, x: torch.Tensor) -> torch.Tensor:
        """Coefficients Vᵀ x of images x (N, C, H, W)."""
        raise NotImplementedError

    def V(self, z: torch.Tensor) -> torch.Tensor:
        """Images V z (N, C, H, W) of coefficients z."""
        raise NotImplementedError

    def U_T(self, y: torch.Tensor) -> torch.Tensor:
        """Uᵀ y in the coefficient layout (0 where the singular value is 0)."""
        raise NotImplementedError

    def U(self, z: torch.Tensor) -> torch.Tensor:
        """The measurement U z (entries of z with singular value 0 are ignored)."""
        raise NotImplementedError

    def sing(self, like: torch.Tensor) -> torch.Tensor:
        """``singulars`` in ``like``'s real dtype and device (from a float64 copy where kept)."""
        return getattr(self, "_sing64", self.singulars).to(device=like.device, dtype=_real_dtype(like))


class DiagonalView(SpectralView):
    """U = V = I, Σ = a per-pixel 0/1 (or constant) gain: inpainting (Σ = mask, y kept in the
    full image geometry with zeros at missing pixels) and the identity (Σ = 1).

    Args:
        gain: callable ``gain(like) -> (B, 1|C, H, W)`` tensor of singular values on like's
            device/dtype.
        x_shape: (N, C, H, W).
    """

    def __init__(self, gain: Callable[[torch.Tensor], torch.Tensor], x_shape: Sequence[int]) -> None:
        self.x_shape = tuple(int(s) for s in x_shape)
        self._gain = gain
        self.singulars = gain(torch.zeros(1, dtype=torch.float32)).float()

    def V_T(self, x):  # noqa: D102
        return x.to(_real_dtype(x)).clone()

    def V(self, z):  # noqa: D102
        return z.clone()

    def U_T(self, y):  # noqa: D102
        return y.to(_real_dtype(y)) * (self.sing(y) > 0)

    def U(self, z):  # noqa: D102
        return z * (self.sing(z) > 0)


class CircularBlurView(SpectralView):
    """SVD of a circular convolution A = F⁻¹ diag(K̂) F (any real kernel, per image or shared):
    A = Φ M with M the zero-phase filter |K̂| and Φ the all-pass filter of phase K̂/|K̂| (1 where
    K̂ = 0). M is diagonal in the (real, orthonormal, self-inverse) Hartley basis because |K̂| is
    symmetric, so V = DHT, Σ = |K̂| (on the full H×W frequency grid), U = Φ DHT.

    Args:
        spectrum: complex (B, 1, H, W) full ``fft2`` of the periodically embedded kernels, B in {1, N}.
        x_shape: (N, C, H, W).
    """

    def __init__(self, spectrum: torch.Tensor, x_shape: Sequence[int]) -> None:
        self.x_shape = tuple(int(s) for s in x_shape)
        spec = spectrum.to(torch.complex128)
        mag = spec.abs()
        self._phase = torch.where(mag > 0, spec / torch.where(mag > 0, mag, torch.ones_like(mag)),
                                  torch.ones_like(spec))
        self.singulars = mag.float()
        self._sing64 = mag

    def _ph(self, like: torch.Tensor) -> torch.Tensor:
        cd = torch.complex128 if like.dtype == torch.float64 else torch.complex64
        return self._phase.to(device=like.device, dtype=cd)

    def V_T(self, x):  # noqa: D102
        return dht2(x)

    def V(self, z):  # noqa: D102
        return dht2(z)

    def U_T(self, y):  # noqa: D102
        g = torch.fft.fft2(y.to(_real_dtype(y)), norm="ortho") * self._ph(y).conj()
        return (g.real - g.imag) * (self.sing(y) > 0)

    def U(self, z):  # noqa: D102
        z = z * (self.sing(z) > 0)
        return torch.fft.ifft2(torch.fft.fft2(dht2(z), norm="ortho") * self._ph(z), norm="ortho").real


class DenseView(SpectralView):
    """SVD of an explicit (m, d) matrix A = U Σ Vᵀ (``torch.linalg.svd``, float64), for the dense
    operator and, as a fallback, any deterministic operator on images with C·H·W ≤
    :data:`DENSE_SVD_MAX_DIM`. Coefficients: (N, d); singulars (1, d): the min(m, d) singular
    values then zeros (values below max(m, d)·eps·σ_max are set to 0).

    Args:
        matrix: (m, d) float64 tensor.
        x_shape: (N, C, H, W) with C·H·W = d.
        y_shape: the measurement shape of one batch (N, ...), m entries per image.
    """

    def __init__(self, matrix: torch.Tensor, x_shape: Sequence[int], y_shape: Sequence[int]) -> None:
        self.x_shape = tuple(int(s) for s in x_shape)
        self._y_tail = tuple(int(s) for s in y_shape[1:])
        a = matrix.to(torch.float64).cpu()
        m, d = a.shape
        u, s, vh = torch.linalg.svd(a, full_matrices=True)
        s = torch.where(s > s.max() * max(m, d) * torch.finfo(torch.float64).eps, s, torch.zeros_like(s))
        self._k = min(m, d)
        self._u, self._vh = u, vh
        sing = torch.zeros(1, d, dtype=torch.float64)
        sing[0, : self._k] = s[: self._k]
        self.singulars = sing.float()
        self._sing64 = sing

    def _mat(self, m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return m.to(device=like.device, dtype=_real_dtype(like))

    def V_T(self, x):  # noqa: D102
        return x.reshape(x.shape[0], -1).to(_real_dtype(x)) @ self._mat(self._vh, x).T

    def V(self, z):  # noqa: D102
        return (z @ self._mat(self._vh, z)).reshape(z.shape[0], *self.x_shape[1:])

    def U_T(self, y):  # noqa: D102
        n = y.shape[0]
        c = y.reshape(n, -1).to(_real_dtype(y)) @ self._mat(self._u, y)[:, : self._k]
        out = torch.zeros(n, self.singulars.shape[1], dtype=c.dtype, device=c.device)
        out[:, : self._k] = c
        return out * (self.sing(out) > 0)

    def U(self, z):  # noqa: D102
        z = z * (self.sing(z) > 0)
        y = z[:, : self._k] @ self._mat(self._u, z)[:, : self._k].T
        return y.reshape(z.shape[0], *self._y_tail)


def explicit_matrix(forward: Callable[[torch.Tensor], torch.Tensor], x_shape: Sequence[int]) -> torch.Tensor:
    """The (m, d) matrix of a linear ``forward`` acting on one image of shape x_shape[1:]
    (applied to the d unit images in float64, in chunks of 256)."""
    c, h, w = (int(s) for s in x_shape[1:])
    d = c * h * w
    cols = []
    for start in range(0, d, 256):
        k = min(256, d - start)
        e = torch.zeros(k, d, dtype=torch.float64)
        e[torch.arange(k), torch.arange(start, start + k)] = 1.0
        cols.append(forward(e.reshape(k, c, h, w)).reshape(k, -1))
    return torch.cat(cols).T.contiguous()


def dense_fallback(operator: Any, x_shape: Sequence[int]) -> DenseView | None:
    """A :class:`DenseView` of a deterministic operator declared linear on images with C·H·W ≤
    :data:`DENSE_SVD_MAX_DIM`, else None (an operator with ``is_linear`` false never gets one:
    the "SVD" of a nonlinear map means nothing)."""
    if getattr(operator, "is_linear", True) is False:
        return None
    if getattr(operator, "is_random", False) or math.prod(x_shape[1:]) > DENSE_SVD_MAX_DIM:
        return None
    with torch.no_grad():
        mat = explicit_matrix(operator.forward, x_shape)
    return DenseView(mat, x_shape, operator.y_shape(x_shape))


def numpy_matrix(m: np.ndarray) -> torch.Tensor:
    """An (m, d) numpy array as a float64 tensor."""
    return torch.from_numpy(np.asarray(m, dtype=np.float64))


class SuperResolutionView(SpectralView):
    """SVD of A = S K (circular blur K with spectrum K̂ on the H×W grid, then keeping every s-th
    pixel). In Hartley coordinates x̃ = DHT(x), ỹ = DHT_low(A x) (both real, orthonormal):

        ỹ(l) = (1/s) Σ_j [Re K̂(l_j) x̃(l_j) − Im K̂(l_j) x̃(−l_j)],   l_j the s² aliases of l,

    (the DFT of a subsampled signal averages its aliases), so each low-res frequency pair
    {l, −l} only sees the 2s² coefficients of its aliases (s² when l = −l): A is block-diagonal
    with blocks B (2 × 2s² or 1 × s²), whose rows are orthogonal with norm² λ(l) = mean_j |K̂(l_j)|²
    (the eigenvalues of A Aᵀ). Each block's SVD B = W S Zᵀ (batched, float64) gives U (W, on
    the low-res Hartley basis), Σ (√λ) and V (Z, the range direction plus an orthonormal basis of
    the s² − 1 aliases' null space). Coefficient layout (N, C, H, W): block P's coefficients sit
    at its own frequency positions (its singular values at the first one or two).

    Args:
        spectrum: complex (1, 1, H, W) full ``fft2`` of the embedded kernel.
        s: the scale factor; x_shape: (N, C, H, W).
    """

    def __init__(self, spectrum: torch.Tensor, s: int, x_shape: Sequence[int]) -> None:
        self.x_shape = tuple(int(v) for v in x_shape)
        big_h, big_w = self.x_shape[2:]
        h, w = big_h // s, big_w // s
        k = spectrum.reshape(big_h, big_w).to(torch.complex128).numpy()
        re, im = k.real.ravel(), k.imag.ravel()
        rows_i = np.arange(big_h)[:, None] * big_w
        flat = (rows_i + np.arange(big_w)[None]).ravel()
        neg = ((-(flat // big_w)) % big_h) * big_w + (-(flat % big_w)) % big_w      # −k on the H×W grid
        lo = [(l1, l2) for l1 in range(h) for l2 in range(w)]
        alias = {(l1, l2): np.array([(l1 + p * h) * big_w + l2 + q * w for p in range(s) for q in range(s)])
                 for l1, l2 in lo}
        pairs, singles = [], []
        for l1, l2 in lo:
            m = ((-l1) % h, (-l2) % w)
            if m == (l1, l2):
                singles.append((l1, l2))
            elif (l1, l2) < m:
                pairs.append(((l1, l2), m))

        def row(l: tuple[int, int], pos: dict[int, int], n: int) -> np.ndarray:
            r = np.zeros(n)
            for j in alias[l]:
                r[pos[j]] += re[j] / s
                r[pos[neg[j]]] -= im[j] / s
            return r

        self._blocks = []     # (P (B, n) flat x positions, lowres (B, r) flat y positions, W (B, r, r), S (B, r), Z (B, n, n))
        for group, r in ((pairs, 2), (singles, 1)):
            if not group:
                continue
            ps, ys, mats = [], [], []
            for item in group:
                ls = item if r == 2 else (item,)
                p = np.concatenate([alias[l] for l in ls])
                pos = {int(j): i for i, j in enumerate(p)}
                ps.append(p)
                ys.append([l[0] * w + l[1] for l in ls])
                mats.append(np.stack([row(l, pos, len(p)) for l in ls]))
            u, sv, vh = torch.linalg.svd(torch.from_numpy(np.stack(mats)), full_matrices=True)
            self._blocks.append((torch.from_numpy(np.stack(ps)), torch.from_numpy(np.array(ys)), u, sv, vh))
        sing = torch.zeros(big_h * big_w, dtype=torch.float64)
        for p, _, _, sv, _ in self._blocks:
            sing[p[:, : sv.shape[1]].reshape(-1)] = sv.reshape(-1)
        tol = sing.max() * big_h * big_w * torch.finfo(torch.float64).eps
        sing = torch.where(sing > tol, sing, torch.zeros_like(sing))
        self._sing64 = sing.reshape(1, 1, big_h, big_w)
        self.singulars = self._sing64.float()
        self._lo = (h, w)

    def _t(self, m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return m.to(device=like.device, dtype=_real_dtype(like))

    def V_T(self, x):  # noqa: D102
        xt = dht2(x)
        flat = xt.reshape(*xt.shape[:2], -1)
        out = torch.zeros_like(flat)
        for p, _, _, _, vh in self._blocks:
            p = p.to(flat.device)
            out[..., p] = torch.einsum("bij,ncbj->ncbi", self._t(vh, flat), flat[..., p])
        return out.reshape(xt.shape)

    def V(self, z):  # noqa: D102
        flat = z.reshape(*z.shape[:2], -1).to(_real_dtype(z))
        out = torch.zeros_like(flat)
        for p, _, _, _, vh in self._blocks:
            p = p.to(flat.device)
            out[..., p] = torch.einsum("bji,ncbj->ncbi", self._t(vh, flat), flat[..., p])
        return dht2(out.reshape(z.shape))

    def U_T(self, y):  # noqa: D102
        yt = dht2(y).reshape(*y.shape[:2], -1)
        n, c = y.shape[:2]
        out = torch.zeros(n, c, self.x_shape[2] * self.x_shape[3], dtype=yt.dtype, device=yt.device)
        for p, ys, u, sv, _ in self._blocks:
            r = sv.shape[1]
            coef = torch.einsum("bji,ncbj->ncbi", self._t(u, yt), yt[..., ys.to(yt.device)])
            out[..., p[:, :r].to(yt.device)] = coef
        out = out.reshape(n, c, *self.x_shape[2:])
        return out * (self.sing(out) > 0)

    def U(self, z):  # noqa: D102
        z = z * (self.sing(z) > 0)
        flat = z.reshape(*z.shape[:2], -1)
        h, w = self._lo
        yt = torch.zeros(*z.shape[:2], h * w, dtype=flat.dtype, device=flat.device)
        for p, ys, u, sv, _ in self._blocks:
            r = sv.shape[1]
            yt[..., ys.to(flat.device)] = torch.einsum("bij,ncbj->ncbi", self._t(u, flat), flat[..., p[:, :r].to(flat.device)])
        return dht2(yt.reshape(*z.shape[:2], h, w))
