"""The physics of a measurement: one object that owns the operator A, the noise model, the
per-image random draws and the making of y (``measure``, the one place in the code), by
capability (as deepinv's ``Physics`` ⊂ ``LinearPhysics``):

- :class:`Physics`: any differentiable A (phase retrieval, HDR clipping, ...): A, its
  vector-Jacobian and Jacobian-vector products (``A_vjp``, ``A_jvp``: the operator's exact ones,
  else autograd), the residual, and ``linearize(x0)``, a :class:`LinearizedPhysics` with
  A = J_A(x0) for methods that need a linear operator's tools (Aᵀ, ``cov_solve`` by CG);
- :class:`LinearPhysics`: a linear A adds Aᵀ, the covariance solve (σ²I + r²AAᵀ)⁻¹v, the
  spectral view A = U Σ Vᵀ and the pseudo-inverse.

``Physics(operator, noiser)`` builds the class the operator calls for (``LinearPhysics`` for an
operator with ``is_linear`` true; see :func:`make_physics`). Methods ask for capabilities
(``is_linear``, ``spectral is not None``, ``has_exact_cov_solve``), never for operator names."""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .base import LinearOperator, check_x_shape, per_sample
from .spectral import SpectralView, dense_fallback

log = logging.getLogger(__name__)


def _dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def operator_is_linear(operator: Any) -> bool:
    """Whether ``operator`` declares itself linear: its ``is_linear`` attribute; an operator
    without one (duck-typed, from before the attribute existed) counts as linear when it has an
    ``adjoint``."""
    flag = getattr(operator, "is_linear", None)
    if flag is None:
        return callable(getattr(operator, "adjoint", None))
    return bool(flag)


def make_physics(operator: Any, noiser: Any = None, **kwargs: Any) -> "Physics":
    """The physics class ``operator`` calls for: :class:`LinearPhysics` when it is linear
    (:func:`operator_is_linear`), else :class:`Physics`. ``kwargs`` as the constructor's.
    Raises ValueError as the constructors."""
    cls = LinearPhysics if operator_is_linear(operator) else Physics
    return cls(operator, noiser, **kwargs)


def cg(apply: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    """Batched conjugate gradients (Hestenes & Stiefel 1952) for apply(x) = v with an SPD (or
    PSD, v in its range) ``apply``, per-sample step sizes; starts at 0 (so the minimum-norm
    solution of a singular consistent system), stops when every sample's residual is below
    ``tol`` · ||v_n|| or after ``max_iter`` iterations. v: (N, ...), computed in its dtype."""
    b = v

    def bc(k: torch.Tensor) -> torch.Tensor:
        return k.reshape((-1,) + (1,) * (b.dim() - 1))

    def dot(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return (a * c).flatten(1).sum(dim=1)

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
    return x


def _grad_input(x: torch.Tensor) -> torch.Tensor:
    """A detached, normal (not inference-mode) copy of x that autograd may record on."""
    return x.detach().clone()


class Physics:
    """y = noise(A(x)) for images x: (N, C, H, W) in [-1, 1], A any differentiable map.

    Args:
        operator: a registered operator (``operators.get_operator``; an ``operators.base.Operator``).
        noiser: a noise model (``operators.get_noise``) with ``sigma`` (the Gaussian std σ_n on
            the [-1, 1] scale that methods assume) and ``name``; None = noiseless (``clean``).
        use_cg: solve covariances by conjugate gradients even where the operator has an exact
            ``cov_solve`` (linear operators; for tests and comparisons).
        cg_tol, cg_max_iter: relative residual and iteration cap of the conjugate-gradient
            covariance solves (of :meth:`linearize`'s physics, and of a linear operator
            without an exact solve when a method does not pass its own).

    ``Physics(op, noise)`` returns a :class:`LinearPhysics` when ``op`` is linear
    (:func:`operator_is_linear`), so that code written for linear operators keeps working.

    Attributes:
        operator, noiser: as given.
        sigma_n: float, σ_n (0 for clean).
        noise_name: "gaussian", "poisson", "clean", ...
        is_linear: False here (True for :class:`LinearPhysics`).

    Raises:
        ValueError: an operator without a callable ``forward``.

    Example:
        >>> import torch
        >>> from operators import Physics, get_noise, get_operator
        >>> phys = Physics(get_operator("gaussian_blur", kernel_size=5, intensity=1.0),
        ...                get_noise("gaussian", sigma=0.05))
        >>> from util.seeding import torch_generators
        >>> y = phys.measure(torch.zeros(2, 1, 16, 16), None, torch_generators(0, [0, 1], 1))
        >>> tuple(y.shape), phys.is_linear, phys.spectral is not None, phys.has_exact_cov_solve
        ((2, 1, 16, 16), True, True, True)
        >>> pr = Physics(get_operator("phase_retrieval", oversample=2.0))
        >>> pr.is_linear, tuple(pr.y_shape((1, 1, 28, 28)))
        (False, (1, 1, 42, 42))
    """

    is_linear: bool = False

    def __new__(cls, operator: Any = None, *args: Any, **kwargs: Any) -> "Physics":
        if cls is Physics and operator is not None and operator_is_linear(operator):
            cls = LinearPhysics
        return super().__new__(cls)

    def __init__(self, operator: Any, noiser: Any = None, use_cg: bool = False,
                 cg_tol: float = 1e-6, cg_max_iter: int = 200) -> None:
        if operator is None or not callable(getattr(operator, "forward", None)):
            raise ValueError(f"Physics needs an operator with forward and adjoint (a linear one) or forward "
                             f"(is_linear false), got {type(operator).__name__}")
        if noiser is None:
            from .noise import Clean
            noiser = Clean()
        self.operator, self.noiser, self.use_cg = operator, noiser, bool(use_cg)
        self.cg_tol, self.cg_max_iter = float(cg_tol), int(cg_max_iter)
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

    @property
    def jacobian_norm(self) -> float | None:
        """An upper bound on ||J_A(x)||_2 declared by the operator, or None."""
        value = getattr(self.operator, "jacobian_norm", None)
        return None if value is None else float(value)

    # ---- the operator --------------------------------------------------------------------------
    def A(self, x: torch.Tensor) -> torch.Tensor:
        """A(x); x (N, C, H, W) -> measurement shape."""
        return self.operator.forward(x)

    def A_vjp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """J_A(x)ᵀ v, the vector-Jacobian product at x: x (N, C, H, W), v measurement-shaped ->
        (N, C, H, W), detached, x's dtype. The operator's exact ``vjp`` where it has one, else
        reverse-mode autograd through ``forward`` (works inside ``torch.inference_mode``)."""
        own = getattr(self.operator, "vjp", None)
        if callable(own):
            return own(x, v)
        with torch.inference_mode(False), torch.enable_grad():
            xx = _grad_input(x).requires_grad_(True)
            out = self.operator.forward(xx)
            (g,) = torch.autograd.grad(out, xx, grad_outputs=_grad_input(v).to(out.dtype))
        return g.detach().to(x.dtype)

    def A_jvp(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """J_A(x) u, the Jacobian-vector product at x: x, u (N, C, H, W) -> measurement shape,
        detached. The operator's exact ``jvp`` where it has one, else forward-mode autograd
        (``torch.func.jvp``)."""
        own = getattr(self.operator, "jvp", None)
        if callable(own):
            return own(x, u)
        with torch.inference_mode(False):
            _, out = torch.func.jvp(self.operator.forward, (_grad_input(x),), (_grad_input(u).to(x.dtype),))
        return out.detach()

    def linearize(self, x0: torch.Tensor) -> "LinearizedPhysics":
        """The physics of the linear map u ↦ J_A(x0) u (A's first-order Taylor expansion at x0,
        A(x) ≈ A(x0) + J_A(x0)(x − x0)): a :class:`LinearizedPhysics` whose A is ``A_jvp(x0, ·)``,
        Aᵀ is ``A_vjp(x0, ·)`` and ``cov_solve`` is conjugate gradients on σ²I + r² J Jᵀ, with
        this physics' noise. x0: (N, C, H, W). A :class:`LinearPhysics` returns itself."""
        return LinearizedPhysics(self, x0)

    def observed(self, y: torch.Tensor) -> torch.Tensor:
        """Boolean tensor (y's shape or broadcastable) of the entries of y that A measures;
        all of them for a nonlinear operator."""
        return torch.ones_like(y, dtype=torch.bool)

    def pinv_init(self, y: torch.Tensor) -> torch.Tensor:
        """A rough inverse of y, images (N, C, H, W) (RED-diff's ``H_pinv`` initialisation): the
        operator's ``pinv_init`` where it has one, else zeros (mid-grey). Needs a draw/measure
        (the image shape) for the zeros. Raises RuntimeError without either."""
        own = getattr(self.operator, "pinv_init", None)
        if callable(own):
            return own(y)
        if self._x_shape is None:
            raise RuntimeError(f"{self.name}: no image shape yet for an initial estimate (measure first)")
        return torch.zeros((y.shape[0],) + tuple(self._x_shape[1:]), dtype=_dtype(y), device=y.device)

    def y_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        """Measurement shape for images of ``x_shape``."""
        return tuple(self.operator.y_shape(x_shape))

    def residual(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(N,) ||y − A(x)||_2 per sample (detached, float32 or float64)."""
        with torch.no_grad():
            dtype = _dtype(x)
            return (y.detach().to(dtype) - self.A(x.detach().to(dtype))).flatten(1).norm(dim=1)

    # ---- draws and measurements ----------------------------------------------------------------
    def draw(self, rngs: Sequence[np.random.Generator] | None, x_shape: Sequence[int]) -> None:
        """Draw the operator's per-image parts for a batch of ``x_shape`` (image n from rngs[n];
        deterministic operators only check the shape). Raises ValueError / TypeError as
        ``Operator.draw``."""
        shape = check_x_shape(x_shape)
        self.operator.draw(rngs, shape)
        self._x_shape = shape
        if self.is_random:              # a deterministic operator's views stay valid (keyed by shape)
            self._views.clear()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The operator's drawn parts (``Operator.state_dict``)."""
        return self.operator.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (raises ValueError for a mismatch)."""
        self.operator.load_state_dict(state)
        xs = state.get("x_shape")
        self._x_shape = None if xs is None else check_x_shape(xs.tolist() if isinstance(xs, torch.Tensor) else xs)
        self._views.clear()

    def measure(self, x: torch.Tensor, op_rngs: Sequence[np.random.Generator] | None = None,
                noise_generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """y = P(noise(A(x))), the one place a measurement is made.

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
        """The measurement as an image for saving (the operator's ``display``)."""
        return self.operator.display(y)

    def params(self, i: int) -> np.ndarray | None:
        """The kernel / mask of image i (see ``Operator.params``)."""
        return self.operator.params(i)

    # ---- what a nonlinear physics lacks --------------------------------------------------------
    @property
    def has_exact_cov_solve(self) -> bool:
        """False: a nonlinear A has no covariance solve of its own (see :meth:`linearize`)."""
        return False

    @property
    def spectral(self) -> SpectralView | None:
        """None: a nonlinear A has no SVD."""
        return None

    def svd(self) -> SpectralView | None:
        """Same as :attr:`spectral`."""
        return self.spectral

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(operator={self.operator!r}, noise={self.noise_name}, "
                f"sigma_n={self.sigma_n})")


class LinearPhysics(Physics):
    """y = noise(A x) for a linear A (an operator with ``adjoint``): everything of
    :class:`Physics` plus Aᵀ, the covariance solve (σ² I + r² A Aᵀ)⁻¹ v (exact where the
    operator has one, else CG), the spectral view A = U Σ Vᵀ and the pseudo-inverse. Here
    ``A_vjp(x, v) = Aᵀ v``, ``A_jvp(x, u) = A u`` and ``linearize`` returns the physics itself.

    Args: as :class:`Physics`. Raises ValueError for an operator without ``forward`` and
    ``adjoint``.
    """

    is_linear: bool = True

    def __init__(self, operator: Any, noiser: Any = None, use_cg: bool = False,
                 cg_tol: float = 1e-6, cg_max_iter: int = 200) -> None:
        if operator is None or not callable(getattr(operator, "forward", None)) \
                or not callable(getattr(operator, "adjoint", None)):
            raise ValueError(f"Physics needs an operator with forward and adjoint, got {type(operator).__name__}")
        super().__init__(operator, noiser, use_cg, cg_tol, cg_max_iter)

    def A_T(self, y: torch.Tensor) -> torch.Tensor:
        """Aᵀ y; measurement shape -> (N, C, H, W)."""
        return self.operator.adjoint(y)

    def A_vjp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """J_A(x)ᵀ v = Aᵀ v (A is linear; x is not used)."""
        return self.A_T(v)

    def A_jvp(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """J_A(x) u = A u (A is linear; x is not used)."""
        return self.A(u)

    def linearize(self, x0: torch.Tensor) -> "LinearPhysics":
        """This physics itself (a linear A is its own linearisation)."""
        return self

    def observed(self, y: torch.Tensor) -> torch.Tensor:
        """The entries of y that A measures: the nonzeros of A Aᵀ 1 (all but inpainting's holes)."""
        return self.A(self.A_T(torch.ones_like(y))).abs() > 1e-6

    def pinv_init(self, y: torch.Tensor) -> torch.Tensor:
        """Aᵀ (σ_n² I + A Aᵀ)⁻¹ y (A⁺ y for σ_n = 0), images (N, C, H, W)."""
        return self.A_T(self.cov_solve(y, 1.0, self.sigma_n ** 2))

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

        with torch.no_grad():
            x = cg(apply, b, tol, max_iter)
        return x.to(v.dtype)

    # ---- spectral view -------------------------------------------------------------------------
    @property
    def spectral(self) -> SpectralView | None:  # noqa: F811 (overrides Physics.spectral)
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



class LinearizedPhysics(LinearPhysics):
    """The linearisation of a physics at x0 (:meth:`Physics.linearize`): the linear map
    u ↦ J u, J = J_A(x0), with the noise of the parent physics. A = ``parent.A_jvp(x0, ·)``,
    Aᵀ = ``parent.A_vjp(x0, ·)`` and ``cov_solve`` = conjugate gradients on the SPD
    σ² I + r² J Jᵀ (CoDPS / CoDPS+ linearised, ΠGDM, TMPD and MMPS on nonlinear A: docs/methods.md).
    No spectral view (J changes with x0). Methods written for a linear physics run on it
    unchanged; the residual y − A(x0) must still be formed with the parent's nonlinear A.

    Args:
        parent: the :class:`Physics` (nonlinear A).
        x0: (N, C, H, W) the expansion point (e.g. x0_hat), detached.

    Attributes: ``parent``, ``x0``; ``operator`` / ``noiser`` are the parent's (draws and names).
    """

    def __init__(self, parent: Physics, x0: torch.Tensor) -> None:
        # no LinearPhysics.__init__: the parent's operator has no adjoint; A and Aᵀ are J, Jᵀ.
        Physics.__init__(self, parent.operator, parent.noiser, True, parent.cg_tol, parent.cg_max_iter)
        self.parent = parent
        self.x0 = x0.detach()
        self._x_shape = parent.x_shape

    def A(self, u: torch.Tensor) -> torch.Tensor:
        """J_A(x0) u; u (N, C, H, W) -> measurement shape."""
        return self.parent.A_jvp(self.x0, u.to(self.x0.dtype))

    def A_T(self, v: torch.Tensor) -> torch.Tensor:
        """J_A(x0)ᵀ v; v measurement-shaped -> (N, C, H, W)."""
        return self.parent.A_vjp(self.x0, v)

    @property
    def has_exact_cov_solve(self) -> bool:
        """False: the covariance is solved by conjugate gradients."""
        return False

    def cov_solve(self, v: torch.Tensor, r2: float | torch.Tensor, sigma2: float | torch.Tensor,
                  tol: float | None = None, max_iter: int | None = None) -> torch.Tensor:
        """(σ² I + r² J Jᵀ)⁻¹ v by CG (:meth:`LinearPhysics.cg_cov_solve`), with the parent's
        ``cg_tol`` / ``cg_max_iter`` unless given. v measurement-shaped (N, ...); r2, sigma2
        floats or (N,) tensors."""
        return self.cg_cov_solve(v, r2, sigma2, tol=self.cg_tol if tol is None else tol,
                                 max_iter=self.cg_max_iter if max_iter is None else max_iter)

    @property
    def spectral(self) -> SpectralView | None:
        """None (J depends on x0)."""
        return None

    def observed(self, y: torch.Tensor) -> torch.Tensor:
        """As the parent's (all entries for a nonlinear A)."""
        return self.parent.observed(y)

    def linearize(self, x0: torch.Tensor) -> "LinearizedPhysics":
        """The parent's linearisation at the new point x0."""
        return self.parent.linearize(x0)

    def __repr__(self) -> str:
        return f"LinearizedPhysics(parent={self.parent!r})"
