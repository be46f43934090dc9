"""A dense linear operator y = A vec(x) with an explicit m × d matrix, for small problems (the
Gaussian-mixture benchmark, compressed sensing on tiny images), with an exact ``cov_solve`` from
one eigendecomposition of A Aᵀ."""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
import torch

from .base import LinearOperator, check_x_shape, per_sample, register_operator

log = logging.getLogger(__name__)


def random_matrix(rows: int, cols: int, seed: int, normalize_rows: bool = True) -> np.ndarray:
    """A random (rows, cols) float64 matrix with i.i.d. N(0, 1) entries from
    ``numpy.random.default_rng(seed)``, each row scaled to unit Euclidean norm if
    ``normalize_rows`` (else entries N(0, 1/cols), rows of norm ≈ 1)."""
    a = np.random.default_rng(seed).standard_normal((rows, cols))
    if normalize_rows:
        return a / np.linalg.norm(a, axis=1, keepdims=True)
    return a / math.sqrt(cols)


@register_operator("dense")
class Dense(LinearOperator):
    """y = A vec(x) for x: (N, C, H, W) with C·H·W = d and an (m, d) matrix A shared by the batch;
    y: (N, m, 1, 1). A^T y is reshaped to the input shape, and

        (sigma2 I + r2 A Aᵀ)⁻¹ v = Q diag(1 / (sigma2 + r2 e)) Qᵀ v,    A Aᵀ = Q diag(e) Qᵀ,

    with the eigendecomposition computed once in float64 (eigenvalues below m·eps·max(e) are
    set to 0, and 1/0 → 0 gives the pseudo-inverse where the matrix is singular).

    Either ``matrix`` is given, or a random A (Gaussian entries, see :func:`random_matrix`) of
    ``rows`` rows is drawn from ``seed`` for the input size d. The operator binds to the
    image shape (C, H, W) of its first ``draw``/``forward`` (or ``input_shape``); inputs of another
    shape then raise ValueError. It is deterministic (``is_random`` False): the same arguments
    give the same A; :meth:`state_dict` still saves A so that a run can be reloaded exactly.

    Args:
        matrix: (m, d) array-like / tensor, or None for a random A.
        rows: m of the random A (ignored when ``matrix`` is given), >= 1.
        seed: seed of the random A.
        normalize_rows: random A with unit-norm rows (True) or entries N(0, 1/d) (False).
        input_shape: optional (C, H, W) to bind to at construction.
        device: default device (hint).

    Raises:
        ValueError: a matrix that is not 2-D and finite, rows < 1, an input whose C·H·W differs
            from the matrix's d or whose shape differs from the bound one.
        RuntimeError: ``adjoint``/``cov_solve``/``display`` before the shape is bound.

    Example:
        >>> import torch
        >>> from operators import get_operator
        >>> op = get_operator("dense", matrix=[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
        >>> op.forward(torch.ones(2, 4, 1, 1)).flatten(1).tolist()
        [[1.0, 2.0], [1.0, 2.0]]
    """

    #: y is a vector of m projections (N, m, 1, 1), not pixels: measurement mode reads it from .npy
    #: only and does not hold it to the [-1, 1] image scale (its entries reach ~10 on a d = 16 mixture).
    y_is_image = False

    def __init__(self, matrix: Any = None, rows: int = 8, seed: int = 0, normalize_rows: bool = True,
                 input_shape: Sequence[int] | None = None, device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        self._matrix: np.ndarray | None = None
        if matrix is not None:
            arr = matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
            arr = np.array(arr, dtype=np.float64)
            if arr.ndim != 2 or arr.size == 0 or not np.isfinite(arr).all():
                raise ValueError(f"dense: matrix must be a finite non-empty (m, d) array, got shape {arr.shape}")
            self._matrix = arr
        if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
            raise ValueError(f"dense: rows must be an integer >= 1, got {rows!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"dense: seed must be an integer, got {seed!r}")
        self.rows, self.seed, self.normalize_rows = int(rows), int(seed), bool(normalize_rows)
        self._shape: tuple[int, int, int] | None = None
        if input_shape is not None:
            shape = check_x_shape((1, *input_shape))[1:]
            self._bind(shape)

    # ---- binding to an input size --------------------------------------------------------------
    @property
    def matrix(self) -> np.ndarray:
        """A as an (m, d) float64 array (RuntimeError for a random A before the size is known)."""
        if self._matrix is None:
            raise RuntimeError("dense: the random matrix is drawn for the input size; call draw(None, x_shape) "
                               "or forward first")
        return self._matrix

    def _bind(self, shape: tuple[int, int, int]) -> None:
        d = math.prod(shape)
        if self._shape is not None:
            if shape != self._shape:
                raise ValueError(f"dense: input shape {shape} differs from the bound shape {self._shape}")
            return
        if self._matrix is None:
            self._matrix = random_matrix(self.rows, d, self.seed, self.normalize_rows)
            log.debug("dense: drew a random %dx%d matrix (seed %d)", self.rows, d, self.seed)
        elif self._matrix.shape[1] != d:
            raise ValueError(f"dense: input has C*H*W = {d} values, the matrix has {self._matrix.shape[1]} columns")
        self._shape = shape
        self._cache.clear()

    def validate_shape(self, x_shape: tuple[int, int, int, int]) -> None:
        """ValueError if C·H·W does not match the matrix or the shape differs from the bound one."""
        shape = tuple(x_shape[1:])
        if self._shape is not None and shape != self._shape:
            raise ValueError(f"dense: input shape {shape} differs from the bound shape {self._shape}")
        if self._matrix is not None and math.prod(shape) != self._matrix.shape[1]:
            raise ValueError(f"dense: input has C*H*W = {math.prod(shape)} values, the matrix has "
                             f"{self._matrix.shape[1]} columns")

    def draw(self, rngs: Sequence[np.random.Generator] | None, x_shape: Sequence[int]) -> None:
        """Validate ``x_shape`` = (N, C, H, W) and bind to (C, H, W) (drawing the random A from
        ``seed``, not from ``rngs``, which may be None)."""
        super().draw(rngs, x_shape)
        self._bind(tuple(check_x_shape(x_shape)[1:]))

    def y_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        """(N, m, 1, 1)."""
        shape = check_x_shape(x_shape)
        self.validate_shape(shape)
        m = self._matrix.shape[0] if self._matrix is not None else self.rows
        return (shape[0], m, 1, 1)

    # ---- cached tensors ------------------------------------------------------------------------
    def _a(self, ref: torch.Tensor) -> torch.Tensor:
        """A (m, d) in ref's dtype/device, cached."""
        return self._cached(("A", ref.dtype, ref.device),
                            lambda: torch.from_numpy(self.matrix).to(device=ref.device, dtype=ref.dtype))

    def _eig(self) -> tuple[np.ndarray, np.ndarray]:
        """(e (m,), Q (m, m)) of A Aᵀ in float64, computed once."""
        def build() -> tuple[np.ndarray, np.ndarray]:
            a = self.matrix
            e, q = np.linalg.eigh(a @ a.T)
            e = np.where(e > e.max(initial=0.0) * a.shape[0] * np.finfo(np.float64).eps, e, 0.0)
            return e, q
        return self._cached(("eig",), build)

    def _eig_t(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e, q = self._eig()
        return self._cached(("eig", ref.dtype, ref.device), lambda: (
            torch.from_numpy(e).to(device=ref.device, dtype=ref.dtype),
            torch.from_numpy(q).to(device=ref.device, dtype=ref.dtype)))

    def _bound(self) -> tuple[int, int, int]:
        if self._shape is None:
            raise RuntimeError("dense: call draw(None, x_shape) or forward before adjoint/cov_solve/display")
        return self._shape

    # ---- the operator --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = A vec(x); (N, C, H, W) -> (N, m, 1, 1)."""
        if x.dim() != 4:
            raise ValueError(f"dense: expected a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        self._bind(tuple(x.shape[1:]))
        y = x.reshape(x.shape[0], -1) @ self._a(x).T
        return y.reshape(x.shape[0], -1, 1, 1)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Aᵀ y; (N, m, 1, 1) (or (N, m)) -> (N, C, H, W) of the bound shape."""
        shape = self._bound()
        return (y.reshape(y.shape[0], -1) @ self._a(y)).reshape(y.shape[0], *shape)

    def cov_solve(self, v: torch.Tensor, r2: float | torch.Tensor, sigma2: float | torch.Tensor) -> torch.Tensor:
        """(sigma2 I + r2 A Aᵀ)⁻¹ v (pseudo-inverse where singular); v: (N, m, 1, 1) or (N, m);
        r2, sigma2: floats or (N,) tensors. Returns v's shape and dtype."""
        self._bound()
        n = v.shape[0]
        e, q = self._eig_t(v)
        flat = v.reshape(n, -1)
        den = per_sample(sigma2, n, v) + per_sample(r2, n, v) * e.reshape(1, -1, 1, 1)   # (N|1, m, 1, 1)
        den = den.reshape(den.shape[0], -1)
        zero = den == 0
        inv = torch.where(zero, torch.zeros_like(den), 1.0 / torch.where(zero, torch.ones_like(den), den))
        return (((flat @ q) * inv) @ q.T).reshape(v.shape)

    def spectral_view(self, x_shape: tuple[int, int, int, int]):
        """:class:`operators.spectral.DenseView` of the matrix (one full SVD, float64), or None when
        d = C·H·W > :data:`operators.spectral.DENSE_SVD_MAX_DIM` (V alone would be d × d: 309 GB at
        3×256×256), so that methods needing a view refuse the operator instead of running out of memory."""
        from .spectral import DENSE_SVD_MAX_DIM, DenseView, numpy_matrix
        self._bind(tuple(x_shape[1:]))
        if math.prod(x_shape[1:]) > DENSE_SVD_MAX_DIM:
            return None
        return DenseView(numpy_matrix(self.matrix), x_shape, self.y_shape(x_shape))

    def display(self, y: torch.Tensor) -> torch.Tensor:
        """The minimum-norm back-projection A⁺ y = Aᵀ (A Aᵀ)⁺ y, shaped as the input (N, C, H, W)."""
        return self.adjoint(self.cov_solve(y, 1.0, 0.0))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"matrix": (m, d) float64, "input_shape": (3,) int64}`` once bound, else ``{}``."""
        if self._shape is None:
            return {}
        return {"matrix": torch.from_numpy(self.matrix.copy()),
                "input_shape": torch.tensor(self._shape, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (``{}`` is accepted and changes nothing).

        Raises:
            ValueError: unexpected keys, or a matrix inconsistent with the input shape.
        """
        if not state:
            return
        if set(state) != {"matrix", "input_shape"}:
            raise ValueError(f"dense: state_dict keys {sorted(state)} do not match the expected "
                             "['input_shape', 'matrix']")
        mat = state["matrix"]
        mat = mat.detach().cpu().numpy() if isinstance(mat, torch.Tensor) else np.asarray(mat)
        shp = state["input_shape"]
        shape = tuple(int(s) for s in (shp.tolist() if isinstance(shp, torch.Tensor) else shp))
        mat = np.array(mat, dtype=np.float64)
        if mat.ndim != 2 or mat.shape[1] != math.prod(shape):
            raise ValueError(f"dense: matrix of shape {mat.shape} does not match input shape {shape}")
        self._matrix, self._shape = mat, None
        self._bind(check_x_shape((1, *shape))[1:])

    def __repr__(self) -> str:
        m = "random" if self._matrix is None else "x".join(map(str, self._matrix.shape))
        return f"Dense(matrix={m}, shape={self._shape})"
