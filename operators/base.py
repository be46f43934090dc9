"""Base classes of the measurement operators y = A(x) (+ noise): :class:`Operator` (any
differentiable map, e.g. phase retrieval) and :class:`LinearOperator` (adds Aᵀ and the
covariance solve), and the two name registries (operators and noise models) through which
configs choose them."""
from __future__ import annotations

import inspect
import logging
import math
import numbers
from typing import Any, Callable, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

_OPERATORS: dict[str, type] = {}
_NOISES: dict[str, type] = {}


# --------------------------------------------------------------------------------------------
# Registries
# --------------------------------------------------------------------------------------------

def _register(registry: dict[str, type], kind: str, name: str) -> Callable[[type], type]:
    """Decorator factory shared by :func:`register_operator` and :func:`register_noise`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")

    def decorator(cls: type) -> type:
        if name in registry and registry[name] is not cls:
            raise ValueError(f"{kind} {name!r} is already registered (by {registry[name].__name__})")
        registry[name] = cls
        cls.name = name
        return cls

    return decorator


def _build(registry: dict[str, type], kind: str, name: str, kwargs: dict[str, Any], extra: dict[str, Any]) -> Any:
    """Check ``name`` and the keys of ``kwargs`` against ``registry`` and the class signature,
    then build the instance. Raises ValueError (one line) for an unknown name, an unknown
    keyword or a missing required one."""
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(registry))}")
    cls = registry[name]
    sig = inspect.signature(cls.__init__)
    accepted = [p for p in list(sig.parameters)[1:] if p not in extra
                and sig.parameters[p].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise ValueError(f"{kind} {name!r}: unknown argument(s) {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(accepted) or '(none)'}")
    missing = [p for p in accepted if sig.parameters[p].default is inspect.Parameter.empty and p not in kwargs]
    if missing:
        raise ValueError(f"{kind} {name!r}: missing required argument(s) {', '.join(map(repr, missing))}; "
                         f"valid: {', '.join(accepted)}")
    return cls(**kwargs, **extra)


def register_operator(name: str) -> Callable[[type], type]:
    """Class decorator registering an :class:`Operator` (linear: :class:`LinearOperator`) subclass
    under ``name`` (and setting its ``name`` attribute), e.g. ``@register_operator("motion_blur")``.

    Raises:
        ValueError: ``name`` empty or already taken by another class.
    """
    return _register(_OPERATORS, "operator", name)


def get_operator(name: str, device: str | torch.device = "cpu", **kwargs: Any) -> "Operator":
    """Build the operator registered as ``name`` with keyword arguments ``kwargs``.

    Args:
        name: a name from :func:`list_operators`.
        device: default device of the operator (spectra and masks are built on the device of
            the tensors it is applied to, so this is only a hint).
        **kwargs: the operator's own arguments (see its class docstring).

    Raises:
        ValueError: unknown name (lists the valid ones), unknown or missing argument (lists the
            valid ones), or an invalid value (raised by the operator, names the argument).

    Example:
        >>> import torch
        >>> from operators import get_operator
        >>> op = get_operator("gaussian_blur", kernel_size=5, intensity=1.0)
        >>> op.forward(torch.zeros(2, 3, 16, 16)).shape
        torch.Size([2, 3, 16, 16])
    """
    return _build(_OPERATORS, "operator", name, kwargs, {"device": device})


def list_operators(linear: bool | None = None) -> list[str]:
    """Sorted names of the registered operators; ``linear`` True / False keeps only those whose
    class declares ``is_linear`` so (None: all)."""
    return sorted(n for n, cls in _OPERATORS.items()
                  if linear is None or bool(getattr(cls, "is_linear", False)) == linear)


def register_noise(name: str) -> Callable[[type], type]:
    """Class decorator registering a noise model under ``name`` (sets its ``name`` attribute).

    Raises:
        ValueError: ``name`` empty or already taken by another class.
    """
    return _register(_NOISES, "noise", name)


def get_noise(name: str, **kwargs: Any) -> Any:
    """Build the noise model registered as ``name``; the result is a callable
    ``noiser(y, generators) -> y_noisy`` with attribute ``sigma`` (see :mod:`operators.noise`).

    Raises:
        ValueError: unknown name, unknown/missing argument, or invalid value (one line each).

    Example:
        >>> from operators import get_noise
        >>> noiser = get_noise("gaussian", sigma=0.05)
        >>> noiser.sigma
        0.05
    """
    return _build(_NOISES, "noise", name, kwargs, {})


def list_noises() -> list[str]:
    """Sorted names of the registered noise models."""
    return sorted(_NOISES)


# --------------------------------------------------------------------------------------------
# Small helpers shared by the operators
# --------------------------------------------------------------------------------------------

def check_x_shape(x_shape: Sequence[int]) -> tuple[int, int, int, int]:
    """``x_shape`` as a tuple (N, C, H, W) of positive ints; ValueError otherwise."""
    try:
        shape = tuple(int(s) for s in x_shape)
    except (TypeError, ValueError):
        raise ValueError(f"x_shape must be (N, C, H, W), got {x_shape!r}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"x_shape must be 4 positive ints (N, C, H, W), got {x_shape!r}")
    return shape  # type: ignore[return-value]


def real_number(value: Any, key: str, owner: str, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> float:
    """``value`` as a finite python float in [low, high] (low excluded if ``low_open``).

    Raises:
        ValueError: naming ``owner`` and ``key``, for a non-number (bools included), nan/inf or a
            value out of range.
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (low is None or (v > low if low_open else v >= low)) and (high is None or v <= high)
    if not ok:
        lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
        hi = "" if high is None else f"<= {high}"
        rng = " and ".join(b for b in (lo, hi) if b)
        raise ValueError(f"{owner}: {key} must be a finite number{' ' + rng if rng else ''}, got {value!r}")
    return float(value)


def per_sample(value: float | torch.Tensor, n: int, ref: torch.Tensor) -> float | torch.Tensor:
    """A python number, or a tensor of shape (n, 1, 1, 1) on ``ref``'s device in ``ref``'s real
    dtype, for broadcasting a per-sample scalar over (N, C, H, W).

    Args:
        value: python int/float, a 0-d or (1,) tensor, or an (n,) tensor.
        n: batch size N.
        ref: tensor whose device and (real) dtype the result takes.

    Raises:
        ValueError: a tensor of any other shape.
    """
    if not isinstance(value, torch.Tensor):
        return float(value)
    if value.dim() > 1 or (value.dim() == 1 and value.shape[0] not in (1, n)):
        raise ValueError(f"per-sample value must be a float, a 0-d tensor or an ({n},) tensor, "
                         f"got shape {tuple(value.shape)}")
    dtype = ref.real.dtype if ref.is_complex() else ref.dtype
    return value.to(device=ref.device, dtype=dtype).reshape(-1, 1, 1, 1)


def safe_reciprocal(den: torch.Tensor) -> torch.Tensor:
    """1 / den where den != 0 and 0 where den == 0 (the pseudo-inverse of a diagonal), so that a
    singular sigma2 I + r2 A A^T (sigma2 = 0, A A^T with a null space) gives the minimum-norm
    solution instead of inf/nan."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(den), 1.0 / torch.where(zero, torch.ones_like(den), den))


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------

class Operator:
    """A measurement operator A (any differentiable map) acting on images x: (N, C, H, W)
    float32/float64 in [-1, 1]: ``forward`` (A x) and its random parts. Nonlinear operators
    (phase retrieval, HDR clipping) subclass this directly and declare ``is_linear = False``;
    linear ones subclass :class:`LinearOperator`. An operator may supply exact derivatives
    ``vjp(x, v)`` (J_A(x)ᵀ v) and ``jvp(x, u)`` (J_A(x) u); without them ``operators.Physics``
    uses autograd (``torch.func``), and ``pinv_init(y)`` (a rough inverse, RED-diff's
    ``H_pinv``), and a bound ``jacobian_norm`` on ||J_A(x)||_2 for step sizes.

    Random operators (``is_random = True``: motion blur, inpainting) draw their per-image parts
    (kernel, mask) once per batch with :meth:`draw`; they are never re-drawn by ``forward``.
    Calling them before ``draw`` raises RuntimeError; a batch whose size N or (H, W) differs
    from the drawn one raises ValueError. Deterministic operators need no ``draw`` (it only
    validates the shape) and accept any N.

    All operations are batched, device-agnostic (they run on the input's device) and written
    with differentiable torch ops (DPS backpropagates through ``forward``).

    Attributes:
        name: the registered name.
        is_random: whether :meth:`draw` draws per-image parts.
        device: default device given at construction (a hint; inputs decide).
    """

    name: str = "operator"
    #: whether A is linear (then it is a :class:`LinearOperator` with ``adjoint``); the dense-SVD
    #: fallback, the observed mask A(Aᵀ1) and A^T-based methods exist only for linear operators.
    is_linear: bool = False
    #: an upper bound on the spectral norm of J_A(x) over x (or None when unknown); DAPS's
    #: ``lr: auto`` uses it where there is no SVD.
    jacobian_norm: float | None = None
    #: whether y is an image (pixels on the [-1, 1] scale) that measurement mode may read from a
    #: .png/.jpg; False for e.g. Fourier magnitudes (read from .npy only).
    y_is_image: bool = True
    is_random: bool = False
    #: A = diag(m) with a 0/1 pixel mask m that has missing pixels (inpainting): a capability that
    #: CoDPS+'s paper variant (``use_A_AT: false``) asks for.
    is_pixel_mask: bool = False
    #: key under which a random operator stores its drawn array in :meth:`state_dict`.
    _state_key: str = ""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self._cache: dict[tuple, Any] = {}
        self._x_shape: tuple[int, int, int, int] | None = None   # drawn (N, C, H, W), random ops
        self._drawn: np.ndarray | None = None                     # drawn (N, ...) array, random ops

    # ---- to implement ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = A x; x: (N, C, H, W) -> y: ``y_shape(x.shape)``."""
        raise NotImplementedError

    def y_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        """Measurement shape for an input of shape ``x_shape`` = (N, C, H, W); ValueError for a
        shape the operator cannot handle."""
        shape = check_x_shape(x_shape)
        self.validate_shape(shape)
        return shape

    def validate_shape(self, x_shape: tuple[int, int, int, int]) -> None:
        """Raise ValueError if the operator cannot act on images of ``x_shape`` (e.g. a kernel
        larger than the image). Default: accepts everything."""

    def _draw(self, rngs: Sequence[np.random.Generator], x_shape: tuple[int, int, int, int]) -> np.ndarray:
        """Random operators: the (N, ...) array of per-image parts drawn from ``rngs``."""
        raise NotImplementedError

    # ---- shared behaviour --------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`forward`."""
        return self.forward(x)

    def draw(self, rngs: Sequence[np.random.Generator] | None, x_shape: Sequence[int]) -> None:
        """Draw the per-image random parts for a batch of shape ``x_shape`` = (N, C, H, W), image
        n from ``rngs[n]`` only, and keep them (with their spectra, built lazily once) until the
        next ``draw``/``load_state_dict``. Deterministic operators only validate the shape and
        ignore ``rngs`` (which may then be None).

        Raises:
            ValueError: bad shape for this operator, or ``len(rngs) != N``.
            TypeError: an entry of ``rngs`` is not a ``numpy.random.Generator``.
        """
        shape = check_x_shape(x_shape)
        self.validate_shape(shape)
        if not self.is_random:
            return
        if rngs is None or len(rngs) != shape[0]:
            raise ValueError(f"{self.name}: draw needs one numpy Generator per image (N={shape[0]}), "
                             f"got {None if rngs is None else len(rngs)}")
        for g in rngs:
            if not isinstance(g, np.random.Generator):
                raise TypeError(f"{self.name}: rngs must be numpy.random.Generator, got {type(g).__name__}")
        drawn = np.asarray(self._draw(rngs, shape))
        self._set_drawn(drawn, shape)
        log.debug("%s: drew %s for batch %s", self.name, self._state_key, shape)

    def _set_drawn(self, drawn: np.ndarray, shape: tuple[int, int, int, int]) -> None:
        self._drawn = drawn
        self._x_shape = shape
        self._cache.clear()

    def _check_batch(self, t: torch.Tensor, spatial: tuple[int, int] | None = None) -> None:
        """For random operators: RuntimeError before ``draw``; ValueError if ``t``'s batch size
        (or its spatial size, compared with ``spatial`` or the drawn (H, W)) does not match."""
        if t.dim() != 4:
            raise ValueError(f"{self.name}: expected a (N, C, H, W) tensor, got shape {tuple(t.shape)}")
        if not self.is_random:
            return
        if self._x_shape is None:
            raise RuntimeError(f"{self.name}: call draw(rngs, x_shape) (or load_state_dict) before using "
                               "the operator; its random kernel/mask is drawn once per batch")
        n, _, h, w = self._x_shape
        if t.shape[0] != n:
            raise ValueError(f"{self.name}: batch size {t.shape[0]} does not match the drawn batch size {n}; "
                             "call draw again for the new batch")
        if tuple(t.shape[-2:]) != (spatial or (h, w)):
            raise ValueError(f"{self.name}: spatial size {tuple(t.shape[-2:])} does not match the drawn "
                             f"{spatial or (h, w)}")

    def _cached(self, key: tuple, build: Callable[[], Any]) -> Any:
        """``self._cache[key]``, built by ``build()`` the first time (spectra, masks per
        (H, W, dtype, device)); the cache is cleared by ``draw``/``load_state_dict``."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def params(self, i: int) -> np.ndarray | None:
        """The kernel (k, k) or mask (H, W) used for image ``i`` of the current batch (float64
        numpy array), or None for operators without one. Random operators raise RuntimeError
        before ``draw`` and IndexError for ``i`` outside the batch.

        Kernel convention (also of the saved ``params/<image>.npy`` and of :meth:`state_dict`):
        the blur operators **convolve**, y[p] = Σ_i k[i] x[p − (i − c)] with c the kernel
        centre, so the impulse response is k itself. The paper's code (and DPS's) applies its
        kernels with ``F.conv2d``, which **correlates**: a kernel taken from (or given to) that
        code must be rotated by 180° (``k[::-1, ::-1]``) to describe the same blur. The
        built-in Gaussian kernels are symmetric, so only motion-blur and external kernels
        differ."""
        if not self.is_random:
            return None
        if self._drawn is None:
            raise RuntimeError(f"{self.name}: nothing drawn yet; call draw(rngs, x_shape) first")
        if not 0 <= i < self._drawn.shape[0]:
            raise IndexError(f"{self.name}: image index {i} outside the drawn batch of {self._drawn.shape[0]}")
        return np.array(self._drawn[i], dtype=np.float64)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The drawn random parts as plain CPU tensors: ``{<key>: (N, ...) float64, "x_shape":
        (4,) int64}`` (key "kernels" or "masks"); ``{}`` for deterministic operators.
        Kernels are stored for convolution (see :meth:`params`: rotate by 180° for code that
        applies them with ``F.conv2d``). Raises RuntimeError for a random operator before
        ``draw``."""
        if not self.is_random:
            return {}
        if self._drawn is None:
            raise RuntimeError(f"{self.name}: nothing drawn yet; call draw(rngs, x_shape) first")
        return {self._state_key: torch.from_numpy(np.array(self._drawn, dtype=np.float64)),
                "x_shape": torch.tensor(self._x_shape, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (tensors or numpy arrays). Kernels are
        read as convolution kernels (see :meth:`params`): a kernel exported from the paper's
        or DPS's code, which correlate with ``F.conv2d``, must be rotated by 180°
        (``k[::-1, ::-1]``) first.

        Raises:
            ValueError: unexpected/missing keys or shapes inconsistent with this operator.
        """
        expected = {self._state_key, "x_shape"} if self.is_random else set()
        if set(state) != expected:
            raise ValueError(f"{self.name}: state_dict keys {sorted(state)} do not match the expected "
                             f"{sorted(expected)}")
        if not self.is_random:
            return
        arr = state[self._state_key]
        arr = arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
        xs = state["x_shape"]
        shape = check_x_shape(xs.tolist() if isinstance(xs, torch.Tensor) else xs)
        self.validate_shape(shape)
        self._validate_drawn(np.array(arr, dtype=np.float64), shape)
        self._set_drawn(np.array(arr, dtype=np.float64), shape)

    def _validate_drawn(self, arr: np.ndarray, shape: tuple[int, int, int, int]) -> None:
        """Random operators: ValueError if ``arr`` is not a valid drawn array for ``shape``."""
        if arr.shape[0] != shape[0]:
            raise ValueError(f"{self.name}: {self._state_key} has {arr.shape[0]} entries for a batch of {shape[0]}")

    def display(self, y: torch.Tensor) -> torch.Tensor:
        """The measurement shown as an image of the input size (N, C, H, W); default: y itself."""
        return y

    def project_measurement(self, y: torch.Tensor) -> torch.Tensor:
        """y restricted to what A can produce, applied by ``Physics.measure`` after the noise
        (inpainting: zeros at missing pixels); default: y unchanged."""
        return y

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class LinearOperator(Operator):
    """A linear measurement operator A acting on images x: (N, C, H, W) float32/float64 in
    [-1, 1], with everything a solver needs (DPS, Chung et al. 2023; CoDPS/CoDPS+, "Gaussian is
    All You Need"): ``forward`` (A x), ``adjoint`` (A^T y), ``cov_solve`` ((sigma2 I + r2 A A^T)^{-1} v,
    the covariance of y given x_t under CoDPS's Gaussian posterior) and its random parts (see
    :class:`Operator` for draws, state and shapes). Its derivatives are exact: J_A = A, so
    ``vjp(x, v) = A^T v`` and ``jvp(x, u) = A u``.
    """

    name: str = "linear"
    is_linear: bool = True

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y; y: measurement shape -> (N, C, H, W)."""
        raise NotImplementedError

    def cov_solve(self, v: torch.Tensor, r2: float | torch.Tensor, sigma2: float | torch.Tensor) -> torch.Tensor:
        """(sigma2 I + r2 A A^T)^{-1} v in measurement space (CoDPS, "Gaussian is All You Need":
        the covariance of y given x_t); r2, sigma2 python floats or (N,) tensors (per sample).
        Where the matrix is singular (sigma2 = 0 and A A^T not invertible) the pseudo-inverse
        is applied."""
        raise NotImplementedError

    def vjp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """J_A(x)ᵀ v = Aᵀ v (x only fixes nothing: A is linear); v measurement-shaped -> (N, C, H, W)."""
        return self.adjoint(v)

    def jvp(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """J_A(x) u = A u; u (N, C, H, W) -> measurement shape."""
        return self.forward(u)

    def spectral_view(self, x_shape: tuple[int, int, int, int]) -> Any:
        """This operator's own SVD view (``operators.spectral.SpectralView``) for images of
        ``x_shape``, or None (then ``Physics`` falls back to a dense SVD for small images)."""
        return None
