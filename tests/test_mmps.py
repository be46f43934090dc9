"""MMPS (solvers/mmps.py) against closed forms on a single full-covariance Gaussian prior (exact
denoiser from guided_diffusion/gmm.py): with k >= m GMRES iterations its g is the exact
∇_{x_t} log p(y | x_t), its samples the exact posterior; cost and parameter errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from guided_diffusion.gaussian_diffusion import create_sampler
from guided_diffusion.gmm import GaussianMixture, GMMEpsilon, as_image, as_vectors
from method_helpers import assert_gaussian_moments
from operators import Physics, get_noise, get_operator
from sampling import sample
from solvers import get_solver
from util.seeding import STREAM_SAMPLER, randn, torch_generators

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D, M, SIGMA = 4, 3, 0.2


def _prior() -> GaussianMixture:
    """N(m, Σ) with a full, anisotropic Σ (J = ∂x0_hat/∂x_t is symmetric, not a multiple of I)."""
    g = np.random.default_rng(4).standard_normal((D, D))
    return GaussianMixture([1.0], [[1.0, -0.5, 0.0, 2.0]], [g @ g.T / D + 0.3 * np.eye(D)])


def _physics(A: np.ndarray) -> Physics:
    phys = Physics(get_operator("dense", matrix=A, input_shape=(D, 1, 1)), get_noise("gaussian", sigma=SIGMA))
    phys.draw(None, (1, D, 1, 1))
    return phys


def _g(name, prior, A, y, x_t, a, **params):
    xt = as_image(x_t).clone().requires_grad_(True)
    flat = as_vectors(xt)
    x0_hat = (flat - math.sqrt(1 - a) * prior.eps(flat, a)) / math.sqrt(a)
    yy = y.reshape(1, -1, 1, 1).expand(x_t.shape[0], -1, 1, 1)
    solver = get_solver(name, **params)
    g, _ = solver.guidance(xt, as_image(x0_hat), yy, torch.full((x_t.shape[0],), a, dtype=torch.float64),
                           _physics(A))
    return as_vectors(g), solver


@pytest.mark.parametrize("a", [0.9, 0.3, 0.01])
def test_mmps_with_m_iterations_is_the_exact_likelihood_score_on_a_gaussian(a):
    """k = m = 3: g = ∇_{x_t} log p(y | x_t) (autograd of the closed-form likelihood) to 1e-8,
    for a general dense A; k = 1 is not (the solve is then inexact), nor TMPD's row sum."""
    prior = _prior()
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(M, D, generator=gen, dtype=torch.float64).numpy()
    x_t = torch.randn(5, D, generator=gen, dtype=torch.float64) * 2
    y = torch.randn(M, generator=gen, dtype=torch.float64)
    xg = x_t.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(prior.measurement_log_likelihood(xg, a, A, y, SIGMA).sum(), xg)
    got, solver = _g("MMPS", prior, A, y, x_t, a, iterations=M)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)
    assert solver.vjps == M + 1
    got1, _ = _g("MMPS", prior, A, y, x_t, a, iterations=1)
    assert not torch.allclose(got1, want, rtol=1e-3, atol=1e-3)
    tmpd, _ = _g("TMPD", prior, A, y, x_t, a)
    assert not torch.allclose(tmpd, want, rtol=1e-3, atol=1e-3)


def test_mmps_samples_the_exact_posterior_of_a_gaussian():
    """DDPM 250 steps, ζ = 1, k = 2 = m: 1000 samples' mean and covariance match the closed-form
    posterior of N(m, Σ) under y = A x + N(0, σ² I) within 4.5 standard errors (+0.02)."""
    prior = _prior()
    n = 1000
    A = np.random.default_rng(1).standard_normal((2, D))
    y = torch.tensor([1.2, -0.7], dtype=torch.float64)
    post = prior.posterior(A, y, SIGMA)
    diff = create_sampler(sampler="ddpm", timestep_respacing="250", model_var_type="fixedsmall", clip_denoised=False)
    gens = torch_generators(0, range(n), STREAM_SAMPLER)
    res = sample(GMMEpsilon.from_schedule(prior), diff, randn((D, 1, 1), gens),
                 y.float().reshape(1, 2, 1, 1).expand(n, 2, 1, 1), get_solver("MMPS", iterations=2),
                 _physics(A), gens, progress=False)
    assert_gaussian_moments(as_vectors(res.x0).double(), post.mean(), post.covariance())


def test_mmps_parameters():
    assert get_solver("MMPS").iterations == 1 and get_solver("mmps", iterations=4).iterations == 4
    with pytest.raises(ValueError, match="iterations"):
        get_solver("MMPS", iterations=2.5)
    with pytest.raises(ValueError, match="iterations"):
        get_solver("MMPS", iterations=0)
