"""The solver registry and the ``Solver`` base class: a solver is the data-consistency step that
turns the sampler's unconditional proposal x'_{t-1} into a measurement-consistent x_{t-1}.

Solvers are chosen by name (``get_solver("CoDPS+", operator, noiser, scale=0.05, ...)``); a new
method is one ``@register_solver(...)`` class. Names match case-insensitively.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch

_REGISTRY: dict[str, type["Solver"]] = {}


def register_solver(*names: str) -> Callable[[type["Solver"]], type["Solver"]]:
    """Class decorator registering a ``Solver`` subclass under one or more names.

    Args:
        *names: non-empty names, e.g. ``register_solver("CoDPS+", "codps_plus")``. Names are
            unique case-insensitively across the registry.

    Returns:
        The decorator; it returns the class unchanged and records ``cls.names = names``.

    Raises:
        ValueError: no names given, a name is empty or not a string, or a name is already taken.
    """
    if not names:
        raise ValueError("register_solver needs at least one name")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"solver names must be non-empty strings, got {name!r}")

    def decorator(cls: type["Solver"]) -> type["Solver"]:
        taken = {key.lower(): key for key in _REGISTRY}
        for name in names:
            if name.lower() in taken:
                raise ValueError(f"solver name {name!r} is already registered (as {taken[name.lower()]!r})")
        for name in names:
            _REGISTRY[name] = cls
        cls.names = tuple(names)
        return cls

    return decorator


def list_solvers() -> list[str]:
    """All registered solver names (aliases included), sorted case-insensitively."""
    return sorted(_REGISTRY, key=str.lower)


def get_solver(name: str, operator: Any, noiser: Any, **params: Any) -> "Solver":
    """Build the solver registered as ``name``.

    Args:
        name: a registered name (case-insensitive), see :func:`list_solvers`.
        operator: the measurement operator (``forward``, ``adjoint``, ``cov_solve``, ``name``);
            may be ``None`` only for ``none``/``vanilla``.
        noiser: the noise model with attribute ``sigma`` (std on the [-1, 1] scale); may be
            ``None`` for solvers that do not use it (``none``, ``DPS``).
        **params: the solver's parameters (e.g. ``scale``, ``t_div``, ``div_ratio``,
            ``inv_var``, ``use_A_AT``); each solver lists its own in ``Solver.params``.

    Returns:
        The solver instance.

    Raises:
        ValueError: unknown name (message lists the valid names), unknown parameter (message
            names it and lists the solver's valid parameters), or a parameter of the wrong type
            or value.

    Example:
        >>> get_solver("nope", None, None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown solver 'nope'; valid solvers: ...
    """
    if isinstance(name, str):
        cls = _REGISTRY.get(name)
        if cls is None:
            matches = [key for key in _REGISTRY if key.lower() == name.lower()]
            cls = _REGISTRY[matches[0]] if matches else None
    else:
        cls = None
    if cls is None:
        raise ValueError(f"unknown solver {name!r}; valid solvers: {', '.join(list_solvers())}")
    return cls(operator, noiser, **params)


@dataclass(frozen=True)
class Param:
    """Specification of one solver parameter.

    Attributes:
        default: value used when the parameter is not given.
        kind: ``"bool"`` (a real ``bool``), ``"nonneg"`` (finite real >= 0), ``"positive"``
            (finite real > 0) or ``"nonneg_or_auto"`` (finite real >= 0, or the string
            ``"auto"``, kept as is). Numbers are stored as ``float``; other strings such as
            ``"1e3"`` are rejected rather than converted.
        doc: one line for error messages and documentation.
    """

    default: float | bool
    kind: str
    doc: str

    def parse(self, owner: str, name: str, value: Any) -> float | bool:
        """Validate ``value`` for parameter ``name`` of solver ``owner``.

        Returns:
            ``bool`` for kind ``"bool"``, ``"auto"`` for kind ``"nonneg_or_auto"`` given
            ``"auto"``, else ``float``.

        Raises:
            ValueError: wrong type, not finite, negative, or zero where positive is required.
        """
        where = f"solver {owner!r} parameter {name!r}"
        if self.kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{where} must be true or false, got {value!r}")
            return bool(value)
        if self.kind == "nonneg_or_auto" and isinstance(value, str) and value == "auto":
            return "auto"
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            extra = " or 'auto'" if self.kind == "nonneg_or_auto" else ""
            raise ValueError(f"{where} must be a number{extra}, got {value!r} ({type(value).__name__})")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{where} must be finite, got {value!r}")
        if self.kind in ("nonneg", "nonneg_or_auto") and value < 0:
            raise ValueError(f"{where} must be >= 0, got {value!r}")
        if self.kind == "positive" and value <= 0:
            raise ValueError(f"{where} must be > 0, got {value!r}")
        return value


class Solver:
    """Base class of data-consistency steps.

    A solver is called once per respaced reverse step, after the sampler has proposed the
    unconditional x'_{t-1}:

        ``x_next, residual = solver(x_t, x_prev, x0_hat, y, t, alpha_bar)``

    Args (of ``__call__``):
        x_t: (N, C, H, W) current sample x_t. For ``needs_grad`` solvers it has
            ``requires_grad=True``.
        x_prev: (N, C, H, W) the sampler's unconditional proposal x'_{t-1} (before correction).
        x0_hat: (N, C, H, W) Tweedie estimate E[x_0 | x_t], roughly in [-1, 1]; for
            ``needs_grad`` solvers a differentiable function of ``x_t``. Half precision is
            accepted and cast to float32.
        y: measurement, shape of ``operator.forward(x)`` (e.g. (N, C, h, w)).
        t: int, respaced step index counting down to 0 (shared by the batch).
        alpha_bar: (N,) float tensor, ᾱ_t of the respaced process at this step, in (0, 1).
        score_weight: only passed (as a keyword) to solvers whose ``uses_score_weight`` is
            True: (N,) float tensor, the sampler's weight w_t such that adding
            w_t · ∇_{x_t} log p(y | x_t) to its proposal gives the proposal of the conditional
            score ∇ log p_t(x_t) + ∇ log p(y | x_t) (see ``GaussianDiffusion.score_weight``).

    Returns (of ``__call__``):
        x_next: (N, C, H, W) corrected x_{t-1}, detached, dtype of ``x_prev``.
        residual: (N,) per-sample ||y - A x0_hat||_2 (detached; for progress display).

    Class attributes:
        needs_grad: True when the step differentiates through the network (the sampler must
            then pass ``x_t`` with ``requires_grad=True`` and keep the graph to ``x0_hat``).
        params: ``{name: Param}``, the only keyword parameters the constructor accepts.
        names: the registered names (set by :func:`register_solver`).
        uses_score_weight: True when the step needs the sampler's ``score_weight`` keyword
            (may be set per instance, e.g. by ``scale: auto``); the sampler passes it only then,
            so solvers with the plain six-argument call keep working.

    Computation is float64 when ``x_prev`` is float64, else float32 (FFT maths stays fp32).
    """

    needs_grad: ClassVar[bool] = False
    uses_score_weight: bool = False
    params: ClassVar[dict[str, Param]] = {}
    names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, operator: Any, noiser: Any, **params: Any) -> None:
        """Store ``operator`` and ``noiser`` and set each entry of ``params`` (or its default)
        as an attribute.

        Raises:
            ValueError: a parameter not in ``type(self).params`` (message names it and lists
                the valid ones), or an invalid value (see :meth:`Param.parse`).
        """
        owner = self.names[0] if self.names else type(self).__name__
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            valid = ", ".join(sorted(self.params)) or "none (this solver takes no parameters)"
            raise ValueError(f"solver {owner!r} got unknown parameter(s) {', '.join(map(repr, unknown))}; "
                             f"valid parameters: {valid}")
        self.operator = operator
        self.noiser = noiser
        for name, spec in self.params.items():
            setattr(self, name, spec.parse(owner, name, params.get(name, spec.default)))

    def __call__(self, x_t: torch.Tensor, x_prev: torch.Tensor, x0_hat: torch.Tensor, y: torch.Tensor,
                 t: int, alpha_bar: torch.Tensor, score_weight: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """One data-consistency step; see the class docstring for shapes."""
        raise NotImplementedError

    def residual(self, y: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
        """(N,) per-sample ||y - A x0_hat||_2, detached, in the compute dtype.

        Raises:
            ValueError: the solver has no operator.
        """
        if self.operator is None:
            raise ValueError(f"solver {self.names[0]!r} has no operator to compute the residual")
        with torch.no_grad():
            dtype = compute_dtype(x0_hat)
            diff = y.to(dtype) - self.operator.forward(x0_hat.detach().to(dtype))
            return diff.flatten(1).norm(dim=1).to(dtype)

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.params)
        return f"{type(self).__name__}({args})"


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 if ``x`` is float64, else float32 (half/bfloat16 inputs are computed in fp32)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape an (N,) tensor to (N, 1, ..., 1) so that it broadcasts against ``like`` (N, ...)."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def as_step(t: Any) -> int:
    """The step index ``t`` as a python int.

    Args:
        t: int (or numpy integer, or a one-element integer tensor), >= 0.

    Raises:
        ValueError: not an integer, a tensor with more than one element, or negative.
    """
    if isinstance(t, torch.Tensor):
        if t.numel() != 1 or t.is_floating_point():
            raise ValueError(f"t must be one integer step index shared by the batch, got a tensor "
                             f"of shape {tuple(t.shape)} and dtype {t.dtype}")
        t = t.item()
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Integral):
        raise ValueError(f"t must be an integer step index, got {t!r}")
    if t < 0:
        raise ValueError(f"t must be >= 0, got {t}")
    return int(t)


def as_alpha_bar(alpha_bar: Any, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """ᾱ_t as an (n,) tensor of ``dtype`` on ``device``.

    Args:
        alpha_bar: (n,) tensor, a 0-dim tensor or a python number (broadcast to n), values in
            (0, 1) (not checked, to avoid a device sync per step).

    Raises:
        ValueError: a tensor whose shape is neither (n,) nor scalar.
    """
    return _per_sample_vector(alpha_bar, n, dtype, device, "alpha_bar")


def _per_sample_vector(value: Any, n: int, dtype: torch.dtype, device: torch.device, name: str) -> torch.Tensor:
    """``value`` (an (n,) tensor, a 0-dim tensor or a python number) as an (n,) tensor of
    ``dtype`` on ``device``; a scalar is broadcast (expanded, no copy).

    Raises:
        ValueError: a tensor whose shape is neither (n,) nor scalar (names ``name``).
    """
    v = torch.as_tensor(value, dtype=dtype, device=device)
    if v.dim() == 0:
        return v.expand(n)
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one value per sample), got {tuple(v.shape)}")
    return v


def as_score_weight(score_weight: Any, n: int, dtype: torch.dtype, device: torch.device, owner: str) -> torch.Tensor:
    """The sampler's likelihood-score weight w_t as an (n,) tensor of ``dtype`` on ``device``.

    Args:
        score_weight: (n,) tensor, a 0-dim tensor or a python number, or None.
        owner: the solver's name, for the error message.

    Raises:
        ValueError: None (the solver was called without the sampler's ``score_weight``), or a
            tensor whose shape is neither (n,) nor scalar.
    """
    if score_weight is None:
        raise ValueError(f"solver {owner!r} needs the sampler's score_weight (scale: auto / ΠGDM); call it "
                         "through GaussianDiffusion.sample or pass score_weight=sampler.score_weight(t)")
    return _per_sample_vector(score_weight, n, dtype, device, "score_weight")


@register_solver("none", "vanilla")
class NoCorrection(Solver):
    """No data consistency: x_{t-1} = x'_{t-1} (unconditional sampling).

    ``operator``, ``noiser`` and ``y`` may be ``None``; the residual is then zeros, else
    ||y - A x0_hat||_2 per sample. Takes no parameters.
    """

    needs_grad = False
    params = {}

    def __call__(self, x_t: torch.Tensor, x_prev: torch.Tensor, x0_hat: torch.Tensor, y: torch.Tensor | None,
                 t: int, alpha_bar: torch.Tensor, score_weight: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (x_prev detached, residual (N,)); see :class:`Solver` for shapes."""
        if self.operator is None or y is None:
            residual = torch.zeros(x_prev.shape[0], dtype=compute_dtype(x_prev), device=x_prev.device)
        else:
            residual = self.residual(y, x0_hat)
        return x_prev.detach(), residual
