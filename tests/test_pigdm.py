"""ΠGDM (solvers/pigdm.py): the step against its closed form on linear networks (vectors and
images), against the exact likelihood score of a unit-variance Gaussian prior (where ΠGDM's
r_t² = 1 − ᾱ_t is exact), its errors, and end-to-end runs through both samplers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from guided_diffusion.gaussian_diffusion import create_sampler
from guided_diffusion.gmm import GaussianMixture, GMMEpsilon, as_image, as_vectors
from method_helpers import legacy_solver
from operators import Physics, get_noise, get_operator
from sampling import sample
from solvers import get_solver, list_solvers
from util.seeding import STREAM_OPERATOR, STREAM_SAMPLER, numpy_rngs, randn, torch_generators


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # small tensors (tests/conftest.py)


OPERATORS = [("dense", dict(matrix=np.random.default_rng(0).standard_normal((5, 12)) / 3, input_shape=(3, 2, 2))),
             ("gaussian_blur", dict(kernel_size=5, intensity=1.0)),
             ("inpainting", dict(mask_type="random")),
             ("super_resolution", dict(scale_factor=2))]


def _shape(name):
    return (2, 3, 2, 2) if name == "dense" else (2, 3, 16, 16)


@pytest.mark.parametrize("sigma", [0.05, 0.0])
@pytest.mark.parametrize("name,kw", OPERATORS, ids=[o[0] for o in OPERATORS])
def test_step_matches_closed_form_on_linear_network(name, kw, sigma):
    """x0_hat = c x_t + b  =>  g = c Aᵀ (r² A Aᵀ + σ² I)⁻¹ (y − A x0_hat), x_next = x' + ζ w g."""
    shape = _shape(name)
    op = get_operator(name, **kw)
    op.draw(numpy_rngs(1, range(shape[0]), STREAM_OPERATOR), shape)
    g = torch.Generator().manual_seed(0)
    x_t0 = torch.randn(shape, generator=g, dtype=torch.float64)
    x_prev = torch.randn(shape, generator=g, dtype=torch.float64)
    y = op.forward(torch.rand(shape, generator=g, dtype=torch.float64))
    ab = torch.tensor([0.3, 0.8], dtype=torch.float64)
    w = torch.tensor([0.05, 0.2], dtype=torch.float64)
    c, zeta = 1.7, 0.6
    solver = legacy_solver("PiGDM", op, get_noise("gaussian", sigma=sigma), scale=zeta)
    assert solver.needs_grad
    x_t = x_t0.clone().requires_grad_(True)
    x0_hat = c * x_t + 0.1
    x_next, residual = solver(x_t, x_prev, x0_hat, y, 7, ab, score_weight=w)
    diff = y - op.forward(c * x_t0 + 0.1)
    g_want = c * op.adjoint(op.cov_solve(diff, 1 - ab, sigma ** 2))
    torch.testing.assert_close(x_next, x_prev + zeta * w.reshape(-1, 1, 1, 1) * g_want, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(residual, diff.flatten(1).norm(dim=1))
    assert x_next.grad_fn is None and residual.grad_fn is None


@pytest.mark.parametrize("a", [0.95, 0.4, 0.02])
def test_guidance_is_exact_likelihood_score_for_unit_gaussian_prior(a):
    """Prior N(m, I): Var[x_0 | x_t] = 1 − ᾱ = ΠGDM's r_t², so g = ∇_{x_t} log p(y | x_t) exactly
    (through the exact ε of the prior)."""
    d = 6
    g = torch.Generator().manual_seed(2)
    prior = GaussianMixture([1.0], torch.randn(1, d, generator=g, dtype=torch.float64), [1.0])
    A = torch.randn(3, d, generator=g, dtype=torch.float64)
    y = torch.randn(3, generator=g, dtype=torch.float64)
    sigma = 0.3
    x = torch.randn(4, d, generator=g, dtype=torch.float64)
    solver = legacy_solver("PiGDM", get_operator("dense", matrix=A, input_shape=(d, 1, 1)),
                           get_noise("gaussian", sigma=sigma))
    x_t = as_image(x).requires_grad_(True)
    x0_hat = (x_t - math.sqrt(1 - a) * as_image(prior.eps(as_vectors(x_t), a))) / math.sqrt(a)
    zeros = torch.zeros(4, d, 1, 1, dtype=torch.float64)
    x_next, _ = solver(x_t, zeros, x0_hat, y.reshape(1, 3, 1, 1).expand(4, 3, 1, 1), 5,
                       torch.full((4,), a, dtype=torch.float64), score_weight=torch.ones(4, dtype=torch.float64))
    xg = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(prior.measurement_log_likelihood(xg, a, A, y, sigma).sum(), xg)
    torch.testing.assert_close(as_vectors(x_next), want, rtol=1e-8, atol=1e-8)


def test_errors_and_registry():
    assert {"PiGDM", "pgdm"} <= set(list_solvers())
    op = get_operator("noise")
    noiser = get_noise("gaussian", sigma=0.1)
    solver = legacy_solver("pgdm", op, noiser, scale=2.0)
    x = torch.zeros(2, 3, 4, 4)
    ab = torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match="requires_grad"):
        solver(x, x, x, x, 3, ab, score_weight=torch.ones(2))
    x_t = x.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="weight"):         # a Step without a sampler has no w_t
        solver(x_t, x, 2 * x_t, x, 3, ab)
    with pytest.raises(ValueError, match="unknown parameter"):
        get_solver("PiGDM", inv_var=1.0)
    with pytest.raises(ValueError, match="sigma"):
        legacy_solver("PiGDM", op, object())
    with pytest.raises(ValueError, match="forward and adjoint"):
        legacy_solver("PiGDM", object(), noiser)


@pytest.mark.parametrize("sampler,resp", [("ddpm", "20"), ("ddim", "ddim10")])
def test_end_to_end_on_a_gaussian_prior(sampler, resp):
    """Through sampling.sample (which gives Step.weight and keeps the graph): finite
    samples, and on a unit-Gaussian prior with 10-20 steps the sample mean moves from the prior
    mean towards the exact posterior mean."""
    d, n = 3, 200
    prior = GaussianMixture([1.0], [[2.0, -1.0, 0.0]], [1.0])
    A = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    y = torch.tensor([0.0, 1.0], dtype=torch.float64)
    post = prior.posterior(A, y, 0.1)
    physics = Physics(get_operator("dense", matrix=A, input_shape=(d, 1, 1)), get_noise("gaussian", sigma=0.1))
    diff = create_sampler(sampler=sampler, timestep_respacing=resp, model_var_type="fixedsmall", clip_denoised=False)
    gens = torch_generators(0, range(n), STREAM_SAMPLER)
    res = sample(GMMEpsilon.from_schedule(prior), diff, randn((d, 1, 1), gens),
                 y.float().reshape(1, 2, 1, 1).expand(n, 2, 1, 1), get_solver("PiGDM"), physics, gens, progress=False)
    x = as_vectors(res.x0).double()
    assert res.diverged_at == [None] * n and torch.isfinite(x).all()
    assert (x.mean(0) - post.mean()).norm() < 0.3 * (prior.mean() - post.mean()).norm()


def test_runs_on_images_with_a_registered_operator():
    """Image-shaped use: ΠGDM with super-resolution through the DDIM loop on a linear ε-model."""
    shape = (2, 3, 16, 16)
    op = get_operator("super_resolution", scale_factor=2)
    noiser = get_noise("gaussian", sigma=0.05)
    y = op.forward(torch.rand(shape) * 2 - 1)
    diff = create_sampler(sampler="ddim", timestep_respacing="ddim5", model_var_type="fixedlarge")
    gens = torch_generators(1, range(2), STREAM_SAMPLER)
    res = sample(lambda x, t: 0.5 * x, diff, randn(shape[1:], gens), y, get_solver("PiGDM"), Physics(op, noiser), gens,
                 progress=False)
    assert res.x0.shape == shape and torch.isfinite(res.x0).all() and res.nfe == 5
