"""OPC (solvers/opc.py) and the analytic variances (benchmarks/analytic_variance.py) against
closed forms: on a single Gaussian prior N(m, s² I) the Monte-Carlo r_t² of the authors'
estimator is the exact Var[x_0 | x_t] = 1 / (1/s² + ᾱ/(1−ᾱ)), and OPC's Type II step with it is
the exact E[x_0 | x_t, y]; the diagonal-covariance CG and the mask solve against dense algebra;
bad parameters and tables fail with one-line messages."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.analytic_variance import estimate, interpolate_log, time_grid
from guided_diffusion.gmm import GaussianMixture, GMMEpsilon
from operators import Physics, get_noise, get_operator
from sampling import make_step
from solvers import get_solver
from solvers.opc import cg_diag_cov_solve

D, S2, SIGMA = 16, 0.7, 0.1


def single_gaussian():
    m = torch.linspace(-0.5, 0.5, D, dtype=torch.float64)
    prior = GaussianMixture([1.0], m[None], [S2])
    return prior, GMMEpsilon.from_schedule(prior, "linear", 1000)


def exact_r2(a: float) -> float:
    return 1.0 / (1.0 / S2 + a / (1.0 - a))


def test_analytic_variance_is_exact_on_a_single_gaussian():
    prior, model = single_gaussian()
    x0, _ = prior.sample(400, generator=torch.Generator().manual_seed(0))
    grid = np.array([5, 100, 400, 800])
    r2, se = estimate(model, model.alphas_cumprod, x0.reshape(-1, D, 1, 1), grid, seed=0, batch=100)
    for t, v, e in zip(grid, r2, se):
        truth = exact_r2(float(model.alphas_cumprod[t]))
        assert abs(v - truth) < 4 * e, (t, v, truth, e)
        assert abs(v - truth) < 0.1 * truth


def test_time_grid_and_interpolation():
    g = time_grid(1000, 3, 250)
    assert g.tolist() == [0, 1, 2, 250, 500, 750, 999]
    r = interpolate_log(np.array([0, 10]), np.array([1.0, 100.0]), 11)
    assert r[5] == pytest.approx(10.0) and r[0] == 1.0 and r[10] == pytest.approx(100.0)


def dense_physics(rows=6):
    op = get_operator("dense", rows=rows, seed=3, input_shape=(D, 1, 1))
    return Physics(op, get_noise("gaussian", sigma=SIGMA))


def test_type_II_with_the_exact_r2_is_the_exact_posterior_mean(tmp_path):
    prior, model = single_gaussian()
    a = torch.from_numpy(model.alphas_cumprod)
    path = str(tmp_path / "table.pt")
    torch.save({"alpha_bar": a, "r2": 1.0 / (1.0 / S2 + a / (1 - a))}, path)
    phys = dense_physics()
    g = torch.Generator().manual_seed(1)
    x_true = prior.sample(2, generator=g)[0].reshape(2, D, 1, 1)
    phys.draw(None, tuple(x_true.shape))
    y = phys.A(x_true) + SIGMA * torch.randn(phys.A(x_true).shape, generator=g, dtype=torch.float64)
    t = 300
    at = float(a[t])
    x_t = at ** 0.5 * x_true + (1 - at) ** 0.5 * torch.randn(x_true.shape, generator=g, dtype=torch.float64)
    eps = model(x_t, torch.tensor([t, t]))
    x0_hat = (x_t - (1 - at) ** 0.5 * eps) / at ** 0.5
    step = make_step(x_t, x0_hat, x_t, t, at, eps=eps)
    solver = get_solver("OPC", cov="analytic", var_table=path, mle_sigma_thres=1e9)
    x_hat = solver.conditional_x0(step, y, phys)
    # closed form: precision 1/s² + ᾱ/(1−ᾱ) + AᵀA/σ², information m/s² + √ᾱ x_t/(1−ᾱ) + Aᵀy/σ²
    A = torch.stack([phys.A(torch.eye(D, dtype=torch.float64)[i].reshape(1, D, 1, 1)).flatten()
                     for i in range(D)], 1)
    P = (1 / S2 + at / (1 - at)) * torch.eye(D, dtype=torch.float64) + A.T @ A / SIGMA ** 2
    info = prior.means[0][None] / S2 + at ** 0.5 * x_t.flatten(1) / (1 - at) + y.flatten(1) @ A / SIGMA ** 2
    truth = torch.linalg.solve(P, info.T).T
    # OPC clips x̂ to [-1, 1] like the reference; compare where the truth is inside
    inside = truth.abs() < 1
    assert inside.float().mean() > 0.5
    assert torch.allclose(x_hat.flatten(1)[inside], truth[inside], rtol=1e-8, atol=1e-8)


def test_diagonal_cg_matches_the_dense_solve():
    phys = dense_physics()
    g = torch.Generator().manual_seed(2)
    x = torch.zeros(2, D, 1, 1, dtype=torch.float64)
    phys.draw(None, tuple(x.shape))
    v = torch.randn(phys.A(x).shape, generator=g, dtype=torch.float64)
    var = torch.rand(2, D, 1, 1, generator=g, dtype=torch.float64) + 0.05
    u = cg_diag_cov_solve(phys, v, var, 0.01, tol=1e-12, max_iter=500)
    A = torch.stack([phys.A(torch.eye(D, dtype=torch.float64)[i].reshape(1, D, 1, 1)).flatten()
                     for i in range(D)], 1)
    for n in range(2):
        M = 0.01 * torch.eye(A.shape[0], dtype=torch.float64) + A @ torch.diag(var[n].flatten()) @ A.T
        assert torch.allclose(u[n].flatten(), torch.linalg.solve(M, v[n].flatten()), rtol=1e-9, atol=1e-10)


def test_mask_solve_is_exact_with_a_diagonal_covariance():
    phys = Physics(get_operator("inpainting", mask_type="random", mask_prob_range=(0.5, 0.6)),
                   get_noise("gaussian", sigma=SIGMA))
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    phys.draw([np.random.default_rng(0)], tuple(x.shape))
    g = torch.Generator().manual_seed(3)
    diff = phys.A(torch.randn(x.shape, generator=g, dtype=torch.float64))
    var = torch.rand(x.shape, generator=g, dtype=torch.float64) + 0.1
    m = get_solver("OPC").solve(phys, diff, var, SIGMA ** 2)
    mask = phys.A(torch.ones_like(x)).flatten()
    M = torch.diag(mask) @ torch.diag(var.flatten()) @ torch.diag(mask) + SIGMA ** 2 * torch.eye(64, dtype=torch.float64)
    truth = mask * torch.linalg.solve(M, diff.flatten())
    assert torch.allclose(m.flatten(), truth, rtol=1e-12, atol=1e-12)


def test_parameters_and_table_errors(tmp_path):
    with pytest.raises(ValueError, match="cov.*analytic, convert"):
        get_solver("OPC", cov="full")
    with pytest.raises(ValueError, match="guidance.*II, I"):
        get_solver("OPC", guidance="2")
    assert get_solver("OPC", guidance="I").needs_grad and not get_solver("OPC").needs_grad
    solver = get_solver("OPC", var_table=str(tmp_path / "missing.pt"), mle_sigma_thres=1e9)
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="missing.pt.*benchmarks.analytic_variance"):
        solver.analytic_r2(make_step(x, x, x, 3, 0.9))
    path = str(tmp_path / "other.pt")
    torch.save({"alpha_bar": torch.full((10,), 0.5, dtype=torch.float64), "r2": torch.ones(10, dtype=torch.float64)}, path)
    with pytest.raises(ValueError, match="another schedule"):
        get_solver("OPC", var_table=path).analytic_r2(make_step(x, x, x, 3, 0.9))
