"""The method registry and the ``Solver`` base class: a posterior-sampling method ("solver")
turns the sampler's step record (x_t, x0_hat, ε̂, the unconditional proposal x'_{t-1}, ...) and
the measurement into x_{t-1}.

Methods are chosen by name (``get_solver("CoDPS+", scale=0.05, ...)``); a new method is one
``@register_solver(...)`` class with a ``step(step, y, physics)``. Names match case-insensitively.
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


def get_solver(name: str, **params: Any) -> "Solver":
    """Build the method registered as ``name``.

    Args:
        name: a registered name (case-insensitive), see :func:`list_solvers`.
        **params: the method's parameters (e.g. ``scale``, ``t_div``, ``div_ratio``,
            ``inv_var``, ``use_A_AT``); each method lists its own in ``Solver.params``.

    Returns:
        The method instance; the measurement (``operators.Physics``) is given to each step.

    Raises:
        ValueError: unknown name (message lists the valid names), unknown parameter (message
            names it and lists the method's valid parameters), or a parameter of the wrong type
            or value.

    Example:
        >>> get_solver("nope")  # doctest: +ELLIPSIS
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
    return cls(**params)


def list_methods() -> list[type["Solver"]]:
    """The registered method classes, each once (aliases collapsed), in registration order."""
    seen: list[type["Solver"]] = []
    for cls in _REGISTRY.values():
        if cls not in seen:
            seen.append(cls)
    return seen


@dataclass(frozen=True)
class Param:
    """Specification of one solver parameter.

    Attributes:
        default: value used when the parameter is not given.
        kind: ``"bool"`` (a real ``bool``), ``"nonneg"`` (finite real >= 0), ``"positive"``
            (finite real > 0) or ``"nonneg_or_auto"`` (finite real >= 0, or the string
            ``"auto"``, kept as is), ``"choice"`` (one of the strings in ``choices``, exact) or
            ``"str"`` (a non-empty string, e.g. a file path). Numbers are stored as ``float``;
            other strings such as ``"1e3"`` are rejected rather than converted.
        doc: one line for error messages and documentation.
        choices: the valid strings of a ``"choice"`` parameter.
        neutral: the parameter is an option added after the method's results were recorded, whose
            default reproduces the method exactly as it ran before (e.g. a reference-code
            convention, off by default); benchmark cache keys leave it out at that default
            (``benchmarks.evaluate.key_params``), so the recorded cells stay valid. An option whose
            default changes the method's output must not be neutral.
    """

    default: float | bool | str
    kind: str
    doc: str
    choices: tuple[str, ...] = ()
    neutral: bool = False

    def parse(self, owner: str, name: str, value: Any) -> float | bool:
        """Validate ``value`` for parameter ``name`` of solver ``owner``.

        Returns:
            ``bool`` for kind ``"bool"``, ``"auto"`` for kind ``"nonneg_or_auto"`` given
            ``"auto"``, the string for kinds ``"choice"`` / ``"str"``, else ``float``.

        Raises:
            ValueError: wrong type, not finite, negative, or zero where positive is required.
        """
        where = f"solver {owner!r} parameter {name!r}"
        if self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise ValueError(f"{where} must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        if self.kind == "str":
            if not isinstance(value, str) or not value:
                raise ValueError(f"{where} must be a non-empty string, got {value!r}")
            return value
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
    """Base class of posterior-sampling methods ("solvers"). One method is one registered class
    with a ``step``; the loop (:func:`sampling.sample`) calls, once per reverse step,

        ``x_prev = method.step(step, y, physics)``

    Args (of ``step``):
        step: a :class:`sampling.Step` — x_t, t, t_prev, ᾱ_t, ᾱ_{t-1}, ε̂, x0_hat, the sampler's
            unconditional proposal x'_{t-1}, its noise z and σ_t, η, the lazy likelihood weight
            ``step.weight`` and ``step.denoise(x, t)`` for extra network calls (see
            docs/framework.md for shapes and ranges).
        y: the measurement (``physics.measure``), or None for unconditional sampling.
        physics: an :class:`operators.Physics` (A, ``A_vjp`` / ``A_jvp``, σ_n, ``linearize``;
            for a linear operator an :class:`operators.LinearPhysics`: also Aᵀ, ``cov_solve``,
            ``spectral``).

    Returns (of ``step``): x_{t-1}, (N, C, H, W), dtype of ``step.proposal``; the loop detaches it.
    A method that computes ||y − A x0_hat|| anyway may store it in ``step.residual`` (N,).

    Class attributes:
        needs_grad: True when the step differentiates through the network (the loop then builds
            x_t with ``requires_grad=True`` and keeps the graph to x0_hat / ε̂); the others run
            under ``torch.inference_mode()``.
        needs_linear: True (default) when the method needs a linear operator; ``check``
            refuses a nonlinear physics then.
        params: ``{name: Param}``, the only keyword parameters the constructor accepts.
        names: the registered names (set by :func:`register_solver`).

    Computation is float64 when the proposal is float64, else float32 (FFT maths stays fp32).
    """

    needs_grad: ClassVar[bool] = False
    #: True when the method needs a linear operator (Aᵀ, covariance solves, an SVD); the base
    #: ``check`` then refuses a nonlinear physics (``physics.is_linear`` false) with one line.
    #: Methods that run on any differentiable A (through ``A_vjp`` / ``A_jvp`` or
    #: ``physics.linearize``) set it False.
    needs_linear: ClassVar[bool] = True
    params: ClassVar[dict[str, Param]] = {}
    names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: Any) -> None:
        """Set each entry of ``params`` (or its default) as an attribute.

        Raises:
            ValueError: a parameter not in ``type(self).params`` (message names it and lists
                the valid ones), or an invalid value (see :meth:`Param.parse`).
        """
        owner = self.name
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            valid = ", ".join(sorted(self.params)) or "none (this solver takes no parameters)"
            raise ValueError(f"solver {owner!r} got unknown parameter(s) {', '.join(map(repr, unknown))}; "
                             f"valid parameters: {valid}")
        for name, spec in self.params.items():
            setattr(self, name, spec.parse(owner, name, params.get(name, spec.default)))

    @property
    def name(self) -> str:
        """The first registered name (or the class name)."""
        return self.names[0] if self.names else type(self).__name__

    def check(self, physics: Any) -> None:
        """Raise ValueError (one line) if this method cannot run with ``physics`` (e.g. it needs
        a spectral view the operator lacks). Called by the builder and at the start of the
        loop. Default: a physics is required, and a linear one when :attr:`needs_linear`."""
        if physics is None:
            raise ValueError(f"solver {self.name!r} needs a measurement (physics); only 'none' runs without")
        if self.needs_linear and not getattr(physics, "is_linear", True):
            runs = ", ".join(sorted({cls.names[0] for cls in list_methods()
                                     if not cls.needs_linear and cls.names and cls.names[0] != "none"}))
            raise ValueError(f"solver {self.name!r} needs a linear operator (Aᵀ, covariance solves or an SVD); "
                             f"{physics.name!r} is nonlinear; methods that run on it: {runs}")

    def step(self, step: Any, y: torch.Tensor | None, physics: Any) -> torch.Tensor:
        """One corrected reverse step; see the class docstring."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.params)
        return f"{type(self).__name__}({args})"


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 if ``x`` is float64, else float32 (half/bfloat16 inputs are computed in fp32)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape an (N,) tensor to (N, 1, ..., 1) so that it broadcasts against ``like`` (N, ...)."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def check_sigma(physics: Any, owner: str) -> float:
    """σ_n of ``physics`` as a float. Raises ValueError unless a physics with a finite real σ_n >= 0."""
    sigma = getattr(getattr(physics, "noiser", None), "sigma", None) if physics is not None else None
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"solver {owner!r} needs a noise model with a real sigma >= 0, got {sigma!r}")
    return float(sigma)


@register_solver("none", "vanilla")
class NoCorrection(Solver):
    """No data consistency: x_{t-1} = x'_{t-1}, the sampler's proposal (unconditional sampling).
    ``physics`` and ``y`` may be None. Takes no parameters."""

    needs_grad = False
    needs_linear = False
    params = {}

    def check(self, physics: Any) -> None:
        """Accepts anything (None included)."""

    def step(self, step: Any, y: torch.Tensor | None, physics: Any) -> torch.Tensor:
        """Return ``step.proposal``."""
        return step.proposal.detach()
