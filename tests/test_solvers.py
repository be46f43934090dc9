"""Tests of the data-consistency steps in ``solvers/``: closed forms against autograd and against
dense-matrix references (numpy.linalg.solve), for a dense test operator and every registered
operator; step-size schedule, t = 0 and σ_n floor of CoDPS+; DPS on a toy network; registry
errors."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import operators
import solvers
from solvers import get_solver, list_solvers
from method_helpers import legacy_solver

N, C, H, W = 2, 3, 16, 16
SIGMA = 0.05
#: Small operator settings for 16x16 images (paper defaults are for 256x256).
OPERATOR_KWARGS = {
    "gaussian_blur": {"kernel_size": 7, "intensity": 1.5},
    "motion_blur": {"kernel_size": 7, "intensity": 0.5},
    "super_resolution": {"scale_factor": 2},
    "inpainting": {},
    "noise": {},
}


class DenseOperator:
    """y = M x on flattened (C, H, W) images, M an (m, d) matrix shared by the batch; ``cov_solve``
    applies the (pseudo-)inverse with torch ops so that autograd can differentiate through it
    (the pseudo-inverse, as the registered operators, where sigma2 = 0 makes it singular)."""

    def __init__(self, matrix: np.ndarray, shape: tuple[int, int, int], name: str = "dense") -> None:
        self.M = torch.from_numpy(matrix)
        self.shape = shape
        self.name = name
        self.is_pixel_mask = name == "inpainting"       # the capability CoDPS+ (use_A_AT: false) asks for

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, m)."""
        return x.flatten(1) @ self.M.to(x.dtype).T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """(N, m) -> (N, C, H, W)."""
        return (y @ self.M.to(y.dtype)).reshape((-1,) + self.shape)

    def cov_solve(self, v: torch.Tensor, r2, sigma2) -> torch.Tensor:
        """(sigma2 I + r2 M Mᵀ)⁺ v per sample; r2, sigma2 floats or (N,) tensors."""
        n, m = v.shape
        r2 = torch.as_tensor(r2, dtype=v.dtype).expand(n).reshape(n, 1, 1)
        sigma2 = torch.as_tensor(sigma2, dtype=v.dtype).expand(n).reshape(n, 1, 1)
        M = self.M.to(v.dtype)
        cov = sigma2 * torch.eye(m, dtype=v.dtype) + r2 * (M @ M.T)
        return (torch.linalg.pinv(cov, hermitian=True) @ v.unsqueeze(-1)).squeeze(-1)


def dense_operator(name: str = "dense") -> DenseOperator:
    """A random 12 x 27 operator on (3, 3, 3) images, or a dense 27 x 27 mask if name is
    "inpainting"."""
    rng = np.random.default_rng(0)
    shape = (3, 3, 3)
    d = math.prod(shape)
    if name == "inpainting":
        matrix = np.diag((rng.random(d) < 0.6).astype(np.float64))
    else:
        matrix = rng.standard_normal((12, d)) / math.sqrt(d)
    return DenseOperator(matrix, shape, name)


def registered_operator(name: str, n: int = N):
    """``operators.get_operator(name)`` with small settings, random parts drawn for n images."""
    op = operators.get_operator(name, **OPERATOR_KWARGS.get(name, {}))
    if callable(getattr(op, "draw", None)):
        op.draw([np.random.default_rng(100 + i) for i in range(n)], (n, C, H, W))
    return op


def x_shape_of(op) -> tuple[int, int, int, int]:
    return (N,) + op.shape if isinstance(op, DenseOperator) else (N, C, H, W)


OPERATOR_CASES = ["dense", "dense_inpainting"] + [f"registered:{name}" for name in operators.list_operators(linear=True)]


def make_operator(case: str):
    if case == "dense":
        return dense_operator()
    if case == "dense_inpainting":
        return dense_operator("inpainting")
    return registered_operator(case.split(":", 1)[1])


def random_inputs(op, dtype=torch.float64, seed: int = 0):
    """x', x0_hat, y (from a random x through the operator plus noise) and ᾱ per sample."""
    g = torch.Generator().manual_seed(seed)
    shape = x_shape_of(op)
    x_prev = torch.randn(shape, generator=g, dtype=dtype)
    x0_hat = torch.rand(shape, generator=g, dtype=dtype) * 2 - 1
    x_true = torch.rand(shape, generator=g, dtype=dtype) * 2 - 1
    y_clean = op.forward(x_true)
    y = y_clean + SIGMA * torch.randn(y_clean.shape, generator=g, dtype=y_clean.dtype)
    alpha_bar = torch.tensor([0.3, 0.85], dtype=dtype)[: shape[0]]
    return x_prev, x0_hat, y.to(dtype), alpha_bar


def operator_dtype(op) -> torch.dtype:
    """float64 if the operator keeps float64 inputs in float64, else float32."""
    probe = torch.zeros(x_shape_of(op), dtype=torch.float64)
    return torch.float64 if op.forward(probe).dtype == torch.float64 else torch.float32


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    if dtype == torch.float64:
        torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def dense_matrices(op, n: int, dtype: torch.dtype) -> np.ndarray:
    """(n, m, d) per-sample matrix of op.forward: the images of the d basis vectors, vmapped
    over a leading basis dimension so that sample i keeps its own kernel/mask."""
    shape = x_shape_of(op)[1:]
    d = math.prod(shape)
    basis = torch.eye(d, dtype=dtype).reshape((d, 1) + shape).expand((d, n) + shape)
    cols = torch.func.vmap(op.forward)(basis)                       # (d, n, *y_shape)
    return cols.reshape(d, n, -1).permute(1, 2, 0).to(torch.float64).numpy()


def is_inpainting(op) -> bool:
    return bool(getattr(op, "is_pixel_mask", False))


# ---------------------------------------------------------------------------------------------
# CoDPS and CoDPS+ against autograd and dense references, every operator


@pytest.mark.parametrize("use_A_AT", [True, False])
@pytest.mark.parametrize("case", OPERATOR_CASES)
def test_codps_equals_autograd_of_loss(case, use_A_AT):
    """x_{t-1} = x' - s ∂ℓ/∂x' with ℓ = ½ (y - Aμ)ᵀ C⁻¹ (y - Aμ), x0_hat held constant."""
    op = make_operator(case)
    dtype = operator_dtype(op)
    x_prev, x0_hat, y, alpha_bar = random_inputs(op, dtype)
    scale, lam = 0.7, 0.5
    solver = legacy_solver("CoDPS", op, SimpleNamespace(sigma=SIGMA), scale=scale, inv_var=lam, use_A_AT=use_A_AT)
    x_next, residual = solver(x_prev, x_prev, x0_hat, y, 10, alpha_bar)

    xp = x_prev.clone().requires_grad_(True)
    a = alpha_bar.reshape(-1, 1, 1, 1)
    r2 = 1 / (a / (1 - a) + lam)
    mu = r2 * (a.sqrt() / (1 - a) * xp + lam * x0_hat)
    diff = y - op.forward(mu)
    if use_A_AT:
        loss = 0.5 * (diff * op.cov_solve(diff, r2.flatten(), SIGMA**2)).sum()
    else:
        loss = 0.5 * (diff**2 / (SIGMA**2 + r2.flatten()).reshape((-1,) + (1,) * (diff.dim() - 1))).sum()
    (grad,) = torch.autograd.grad(loss, xp)
    assert x_next.dtype == x_prev.dtype and x_next.shape == x_prev.shape
    assert_close(x_next, x_prev - scale * grad, dtype)
    assert_close(residual, (y - op.forward(x0_hat)).flatten(1).norm(dim=1), dtype)


@pytest.mark.parametrize("use_A_AT", [True, False])
@pytest.mark.parametrize("method", ["CoDPS", "CoDPS+"])
@pytest.mark.parametrize("case", OPERATOR_CASES)
def test_matches_dense_numpy_reference(case, method, use_A_AT):
    """Both steps equal the formulas evaluated with dense matrices and numpy.linalg.solve."""
    op = make_operator(case)
    dtype = operator_dtype(op)
    x_prev, x0_hat, y, alpha_bar = random_inputs(op, dtype, seed=1)
    scale, lam = 0.3, 2.0
    solver = legacy_solver(method, op, SimpleNamespace(sigma=SIGMA), scale=scale, inv_var=lam, use_A_AT=use_A_AT)
    x_next, _ = solver(x_prev, x_prev, x0_hat, y, 5, alpha_bar)

    n = x_prev.shape[0]
    mats = dense_matrices(op, n, dtype)
    xp, x0 = x_prev.reshape(n, -1).double().numpy(), x0_hat.reshape(n, -1).double().numpy()
    yy = y.reshape(n, -1).double().numpy()
    expected = np.empty_like(xp)
    for i in range(n):
        M, a = mats[i], float(alpha_bar[i])
        r2 = 1 / (a / (1 - a) + lam)
        cov = (SIGMA**2 * np.eye(M.shape[0]) + r2 * M @ M.T) if use_A_AT else (SIGMA**2 + r2) * np.eye(M.shape[0])
        if method == "CoDPS":
            mu = r2 * (math.sqrt(a) / (1 - a) * xp[i] + lam * x0[i])
            expected[i] = xp[i] + scale * r2 * math.sqrt(a) / (1 - a) * M.T @ np.linalg.solve(cov, yy[i] - M @ mu)
        else:
            if not use_A_AT and is_inpainting(op):
                cov = np.eye(M.shape[0])
            jac = math.sqrt(a) / (lam * (1 - a) + a)
            expected[i] = xp[i] + scale * jac * M.T @ np.linalg.solve(cov, yy[i] - M @ x0[i])
    assert_close(x_next, torch.from_numpy(expected).reshape(x_prev.shape), dtype)


@pytest.mark.parametrize("method", ["CoDPS", "CoDPS+"])
@pytest.mark.parametrize("case", OPERATOR_CASES)
def test_no_graph_and_inference_mode(case, method):
    """No autograd graph even for inputs requiring grad; works under torch.inference_mode()."""
    op = make_operator(case)
    x_prev, x0_hat, y, alpha_bar = random_inputs(op, torch.float32)
    solver = legacy_solver(method, op, operators.get_noise("gaussian", sigma=SIGMA), scale=1.0)
    x_next, residual = solver(x_prev, x_prev.clone().requires_grad_(True), x0_hat.clone().requires_grad_(True),
                              y, 3, alpha_bar)
    assert x_next.grad_fn is None and not x_next.requires_grad and residual.grad_fn is None
    with torch.inference_mode():
        xi, ri = solver(x_prev.clone(), x_prev.clone(), x0_hat.clone(), y.clone(), 3, alpha_bar.clone())
    assert not xi.requires_grad and xi.shape == x_prev.shape and ri.shape == (x_prev.shape[0],)
    torch.testing.assert_close(xi, x_next.detach())
    assert torch.isfinite(xi).all()


# ---------------------------------------------------------------------------------------------
# Step-size schedule, t = 0, σ_n floor, dtypes, batch independence


@pytest.mark.parametrize("method", ["CoDPS", "CoDPS+"])
def test_t_div_divides_scale(method):
    op = dense_operator()
    x_prev, x0_hat, y, ab = random_inputs(op)
    noiser = SimpleNamespace(sigma=SIGMA)
    divided = legacy_solver(method, op, noiser, scale=2.0, t_div=10, div_ratio=4)
    quarter = legacy_solver(method, op, noiser, scale=0.5)
    full = legacy_solver(method, op, noiser, scale=2.0)
    assert torch.equal(divided(x_prev, x_prev, x0_hat, y, 9, ab)[0], quarter(x_prev, x_prev, x0_hat, y, 9, ab)[0])
    assert torch.equal(divided(x_prev, x_prev, x0_hat, y, 10, ab)[0], full(x_prev, x_prev, x0_hat, y, 10, ab)[0])
    assert divided.scale_at(9) == 0.5 and divided.scale_at(10) == 2.0


def test_codps_plus_no_correction_at_t0():
    op = dense_operator()
    x_prev, x0_hat, y, ab = random_inputs(op)
    solver = legacy_solver("CoDPS+", op, SimpleNamespace(sigma=SIGMA), scale=5.0)
    x_next, residual = solver(x_prev, x_prev, x0_hat, y, 0, ab)
    assert torch.equal(x_next, x_prev)
    torch.testing.assert_close(residual, (y - op.forward(x0_hat)).norm(dim=1))
    assert not torch.equal(solver(x_prev, x_prev, x0_hat, y, 1, ab)[0], x_prev)


def test_codps_plus_floors_sigma():
    """σ_n = 0 behaves as σ_n = 1e-5, and stays finite for a singular A Aᵀ (inpainting)."""
    op = dense_operator("inpainting")
    x_prev, x0_hat, y, ab = random_inputs(op)
    zero = legacy_solver("CoDPS+", op, SimpleNamespace(sigma=0.0))(x_prev, x_prev, x0_hat, y, 4, ab)[0]
    floor = legacy_solver("CoDPS+", op, SimpleNamespace(sigma=1e-5))(x_prev, x_prev, x0_hat, y, 4, ab)[0]
    assert torch.equal(zero, floor)
    assert torch.isfinite(zero).all()


@pytest.mark.parametrize("use_A_AT", [True, False])
@pytest.mark.parametrize("case", OPERATOR_CASES)
def test_noiseless_measurement_stays_finite(case, use_A_AT):
    """σ_n = 0 (noise "clean"): both steps stay finite, also where A Aᵀ is singular."""
    op = make_operator(case)
    x_prev, x0_hat, y, ab = random_inputs(op)
    for method in ("CoDPS", "CoDPS+"):
        solver = legacy_solver(method, op, operators.get_noise("clean"), use_A_AT=use_A_AT)
        assert torch.isfinite(solver(x_prev, x_prev, x0_hat, y, 4, ab)[0]).all()


def test_inv_var_zero_uses_tweedie_jacobian():
    """λ = 0: J = 1/√ᾱ, and r² = (1 - ᾱ)/ᾱ."""
    op = dense_operator()
    x_prev, x0_hat, y, ab = random_inputs(op)
    x_next = legacy_solver("CoDPS+", op, SimpleNamespace(sigma=SIGMA), inv_var=0)(x_prev, x_prev, x0_hat, y, 4, ab)[0]
    a = ab.reshape(-1, 1, 1, 1)
    g = op.adjoint(op.cov_solve(y - op.forward(x0_hat), ((1 - a) / a).flatten(), SIGMA**2))
    torch.testing.assert_close(x_next, x_prev + g / a.sqrt())


@pytest.mark.parametrize("method", ["CoDPS", "CoDPS+"])
def test_half_x0_hat_is_computed_in_float32(method):
    op = dense_operator()
    x_prev, x0_hat, y, ab = random_inputs(op, torch.float32)
    solver = legacy_solver(method, op, SimpleNamespace(sigma=SIGMA))
    half = x0_hat.half()
    x_next, residual = solver(x_prev, x_prev, half, y, 4, ab)
    assert x_next.dtype == torch.float32 and residual.dtype == torch.float32
    assert torch.equal(x_next, solver(x_prev, x_prev, half.float(), y, 4, ab)[0])


@pytest.mark.parametrize("method", ["CoDPS", "CoDPS+", "DPS"])
def test_samples_do_not_interact(method):
    """Each sample's step depends on its own inputs and ᾱ only."""
    op = dense_operator()
    x_prev, x0_hat, y, ab = random_inputs(op)
    solver = legacy_solver(method, op, SimpleNamespace(sigma=SIGMA), scale=0.5)

    def run(sl):
        if not solver.needs_grad:
            return solver(x_prev[sl], x_prev[sl], x0_hat[sl], y[sl], 6, ab[sl])[0]
        x_t = x0_hat[sl].clone().requires_grad_(True)
        return solver(x_t, x_prev[sl], 0.9 * x_t, y[sl], 6, ab[sl])[0]

    both = run(slice(0, 2))
    torch.testing.assert_close(both[1:], run(slice(1, 2)))
    torch.testing.assert_close(both[:1], run(slice(0, 1)))


# ---------------------------------------------------------------------------------------------
# DPS and the no-correction solver


@pytest.mark.parametrize("name", ["DPS", "ps"])
@pytest.mark.parametrize("case", OPERATOR_CASES)
def test_dps_matches_closed_form_on_linear_network(case, name):
    """x0_hat = a x_t  =>  ∇_{x_t} ||y - A x0_hat|| = a Aᵀ(A x0_hat - y) / ||A x0_hat - y|| per sample."""
    op = make_operator(case)
    x_prev, x_t0, y, ab = random_inputs(op)
    a, zeta = 0.8, 0.3
    solver = legacy_solver(name, op, None, scale=zeta)
    assert solver.needs_grad
    x_t = x_t0.clone().requires_grad_(True)
    x_next, residual = solver(x_t, x_prev, a * x_t, y, 7, ab)
    diff = op.forward(a * x_t0) - y
    norm = diff.flatten(1).norm(dim=1)
    expected = x_prev - zeta * a * op.adjoint(diff / norm.reshape((-1,) + (1,) * (diff.dim() - 1)))
    torch.testing.assert_close(x_next, expected, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(residual, norm)
    assert x_next.grad_fn is None and residual.grad_fn is None


def test_dps_needs_graph():
    op = dense_operator()
    x_prev, x0_hat, y, ab = random_inputs(op)
    with pytest.raises(ValueError, match="requires_grad"):
        legacy_solver("DPS", op, None)(x_prev, x_prev, x0_hat, y, 3, ab)


@pytest.mark.parametrize("name", ["none", "vanilla"])
def test_no_correction(name):
    op = dense_operator()
    x_prev, x0_hat, y, ab = random_inputs(op)
    solver = legacy_solver(name, op, None)
    x_next, residual = solver(x_prev, x_prev, x0_hat, y, 3, ab)
    assert torch.equal(x_next, x_prev) and not solver.needs_grad
    torch.testing.assert_close(residual, (y - op.forward(x0_hat)).norm(dim=1))
    x_next, residual = legacy_solver(name, None, None)(x_prev, x_prev, x0_hat, None, 3, ab)
    assert torch.equal(x_next, x_prev) and torch.equal(residual, torch.zeros(2, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# Registry and argument errors


def test_registry_lists_all_names():
    assert {"CoDPS", "CoDPS+", "codps_plus", "DPS", "ps", "none", "vanilla"} <= set(list_solvers())
    op = dense_operator()
    assert isinstance(legacy_solver("codps+", op, SimpleNamespace(sigma=0.1)).method, solvers.codps.CoDPSPlus)
    assert isinstance(get_solver("codps_plus"), solvers.codps.CoDPSPlus)
    assert not solvers.codps.CoDPS.needs_grad and not solvers.codps.CoDPSPlus.needs_grad


def test_register_rejects_duplicate_name():
    with pytest.raises(ValueError, match="already registered"):
        solvers.register_solver("codps")(type("Dup", (solvers.Solver,), {}))


def test_unknown_solver_lists_valid_names():
    with pytest.raises(ValueError, match="unknown solver 'nope'") as info:
        get_solver("nope")
    message = str(info.value)
    assert "\n" not in message
    for name in list_solvers():
        assert name in message


@pytest.mark.parametrize("name, bad, valid", [
    ("CoDPS+", "step_size", ["scale", "t_div", "div_ratio", "inv_var", "use_A_AT"]),
    ("CoDPS", "inv_variance", ["scale", "t_div", "div_ratio", "inv_var", "use_A_AT"]),
    ("DPS", "t_div", ["scale"]),
])
def test_unknown_param_names_it_and_lists_valid(name, bad, valid):
    with pytest.raises(ValueError, match=bad) as info:
        get_solver(name, **{bad: 1.0})
    for param in valid:
        assert param in str(info.value)


@pytest.mark.parametrize("params", [
    {"scale": -1.0}, {"scale": "1e3"}, {"scale": float("nan")}, {"scale": True},
    {"div_ratio": 0}, {"inv_var": -0.5}, {"t_div": -1}, {"use_A_AT": "true"}, {"use_A_AT": 1},
])
def test_bad_param_values(params):
    with pytest.raises(ValueError, match=next(iter(params))):
        get_solver("CoDPS+", **params)


def test_bad_noiser_operator_and_step():
    op = dense_operator()
    with pytest.raises(ValueError, match="sigma"):
        legacy_solver("CoDPS", op, SimpleNamespace())
    with pytest.raises(ValueError, match="sigma"):
        legacy_solver("CoDPS", op, SimpleNamespace(sigma=-0.1))
    # an operator without cov_solve: the physics solves by conjugate gradients, same step
    x_prev, x0_hat, y, ab = random_inputs(op)
    bare = legacy_solver("CoDPS", SimpleNamespace(forward=op.forward, adjoint=op.adjoint), SimpleNamespace(sigma=0.1))
    assert not bare.physics.has_exact_cov_solve
    torch.testing.assert_close(bare(x_prev, x_prev, x0_hat, y, 3, ab)[0],
                               legacy_solver("CoDPS", op, SimpleNamespace(sigma=0.1))(x_prev, x_prev, x0_hat, y, 3, ab)[0],
                               rtol=1e-6, atol=1e-6)
    legacy_solver("CoDPS", SimpleNamespace(forward=op.forward, adjoint=op.adjoint), SimpleNamespace(sigma=0.1),
                  use_A_AT=False)
    solver = legacy_solver("CoDPS+", op, SimpleNamespace(sigma=0.1))
    with pytest.raises(ValueError, match="alpha_bar"):
        solver(x_prev, x_prev, x0_hat, y, 3, ab[:1].repeat(3))
    with pytest.raises(ValueError, match="t must"):
        solver(x_prev, x_prev, x0_hat, y, torch.tensor([3, 3]), ab)
    with pytest.raises(ValueError, match="t must"):
        solver(x_prev, x_prev, x0_hat, y, 2.5, ab)
