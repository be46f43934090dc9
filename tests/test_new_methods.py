"""RED-diff, DAPS and TMPD (solvers/reddiff.py, daps.py, tmpd.py) against closed forms on a
single-Gaussian prior (exact denoiser from guided_diffusion/gmm.py), batch-size invariance, and
an end-to-end run on the embedded MNIST prior."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from guided_diffusion.gaussian_diffusion import create_sampler
from guided_diffusion.gmm import GaussianMixture, GMMEpsilon, as_image, as_vectors
from method_helpers import assert_gaussian_moments
from operators import Physics, get_noise, get_operator
from sampling import make_step, sample
from solvers import get_solver
from solvers.reddiff import REDDiff
from util.seeding import STREAM_NOISE, STREAM_OPERATOR, STREAM_SAMPLER, numpy_rngs, randn, torch_generators

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dense_physics(A: np.ndarray, sigma: float) -> Physics:
    d = A.shape[1]
    phys = Physics(get_operator("dense", matrix=A, input_shape=(d, 1, 1)), get_noise("gaussian", sigma=sigma))
    phys.draw(None, (1, d, 1, 1))
    return phys


# ---------------------------------------------------------------------------------------------
# DAPS: the exact conditional draw and the Langevin chain against the dense Gaussian formula

def _daps_mean(x0_hat, A, y, r2, tau2):
    """Mean of N(x; x0_hat, r² I) · N(y; A x, τ² I) (dense, float64)."""
    C = tau2 * np.eye(A.shape[0]) + r2 * A @ A.T
    return x0_hat + r2 * A.T @ np.linalg.solve(C, y - A @ x0_hat)


@pytest.mark.parametrize("langevin,inv_var", [(False, 0.0), (True, 0.0), (False, 1.0)])
def test_daps_conditional_draw_matches_the_dense_gaussian(langevin, inv_var):
    """Last level (ᾱ_{t-1} = 1, so the output is the x_0 draw itself): 4000 draws of
    x_0 | x0_hat, y have the dense formula's mean and covariance (mean within 4.5 standard
    errors; covariance within 0.06 absolute, Langevin with a step 50× below the stability limit
    and 3000 steps: its O(η) bias is ~1 %)."""
    d, n = 3, 4000
    A = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]])
    tau, a = 0.5, 0.5                                     # r² = 1/(ᾱ/(1 − ᾱ) + λ) = 1/(1 + λ)
    r2 = 1.0 / (1.0 + inv_var)
    phys = dense_physics(A, tau)
    x0h = np.array([0.3, -1.0, 2.0])
    y = np.array([1.0, 0.5])
    mean = _daps_mean(x0h, A, y, r2, tau ** 2)
    C = tau ** 2 * np.eye(2) + r2 * A @ A.T
    cov = r2 * np.eye(d) - r2 ** 2 * A.T @ np.linalg.solve(C, A)
    lam_max = np.linalg.eigvalsh(A.T @ A / tau ** 2 + np.eye(d) / r2).max()
    params = dict(langevin=langevin, tau=tau, inv_var=inv_var)
    if langevin:
        params.update(langevin_steps=3000, lr=0.02 / lam_max, lr_min_ratio=1.0)
    method = get_solver("DAPS", **params)
    x0_hat = torch.tensor(x0h, dtype=torch.float64).reshape(1, d, 1, 1).expand(n, d, 1, 1).contiguous()
    step = make_step(x0_hat, x0_hat, x0_hat, 0, a, alpha_bar_prev=1.0)
    step.generators = torch_generators(3, range(n), STREAM_SAMPLER)
    yy = torch.tensor(y, dtype=torch.float64).reshape(1, 2, 1, 1).expand(n, 2, 1, 1)
    x = as_vectors(method.step(step, yy, phys)).numpy()
    se = np.sqrt(np.diag(cov) / n)
    assert (np.abs(x.mean(0) - mean) < 4.5 * se).all(), (x.mean(0), mean)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.06)
    assert step.residual.shape == (n,)


def test_daps_exact_with_the_true_r_samples_the_exact_posterior_of_a_gaussian_prior():
    """Prior N(m, s² I) and inv_var = 1/s²: r_t² is then the true Var[x_0 | x_t] and N(x0_hat, r_t²)
    the true p(x_0 | x_t), so each DAPS level maps p_t(· | y) to p_{t−1}(· | y) exactly, with any
    number of levels: DDIM 20, 2000 samples have the exact posterior's mean (within 4.5
    standard errors) and covariance (within 4.5 standard errors + 0.02)."""
    d, n, s2, sigma = 4, 2000, 4.0, 0.3
    prior = GaussianMixture([1.0], [[0.5, -1.0, 0.0, 2.0]], [s2])
    A = np.random.default_rng(1).standard_normal((2, d))
    y = torch.tensor([1.2, -0.7], dtype=torch.float64)
    post = prior.posterior(A, y, sigma)
    pm, pc = post.mean(), post.covariance()
    diff = create_sampler(sampler="ddim", timestep_respacing="ddim20", model_var_type="fixedsmall",
                          clip_denoised=False, eta=1.0)
    gens = torch_generators(0, range(n), STREAM_SAMPLER)
    res = sample(GMMEpsilon.from_schedule(prior), diff, randn((d, 1, 1), gens),
                 y.float().reshape(1, 2, 1, 1).expand(n, 2, 1, 1),
                 get_solver("DAPS", langevin=False, tau=sigma, inv_var=1 / s2), dense_physics(A, sigma), gens,
                 progress=False)
    x = as_vectors(res.x0).double()
    assert_gaussian_moments(x, pm, pc)


def test_daps_nfe_per_level_and_parameter_errors():
    """ode_steps = k: min(k, t + 1) network calls at level t (the loop's + the rest through
    step.denoise), counted in the NFE; non-integer counts are refused."""
    prior = GaussianMixture([1.0], [[0.5, -1.0, 0.0, 2.0]], [2.0])
    phys = dense_physics(np.random.default_rng(0).standard_normal((2, 4)), 0.1)
    diff = create_sampler(sampler="ddim", timestep_respacing="ddim10", model_var_type="fixedsmall",
                          clip_denoised=False, eta=1.0)
    gens = torch_generators(0, range(2), STREAM_SAMPLER)
    y = torch.zeros(2, 2, 1, 1)
    out = sample(GMMEpsilon.from_schedule(prior), diff, randn((4, 1, 1), gens), y,
                 get_solver("DAPS", ode_steps=3, langevin=False), phys, gens, progress=False)
    assert out.nfe == sum(min(3, t + 1) for t in range(10)) and torch.isfinite(out.x0).all()
    with pytest.raises(ValueError, match="integer"):
        get_solver("DAPS", ode_steps=1.5)
    with pytest.raises(ValueError, match="integer"):
        get_solver("DAPS", langevin_steps=2.5)


# ---------------------------------------------------------------------------------------------
# TMPD: exact on a Gaussian prior

def _tmpd_step(exact_cov, prior, A, y, sigma, x_t, a):
    """TMPD's correction w·G with w = 1 from x' = 0: equals G = ∇_{x_t} log p(y | x_t) (approx.)."""
    n = x_t.shape[0]
    xt = as_image(x_t).clone().requires_grad_(True)
    flat = as_vectors(xt)
    x0_hat = (flat - math.sqrt(1 - a) * prior.eps(flat, a)) / math.sqrt(a)
    step = make_step(xt, as_image(x0_hat), torch.zeros(n, x_t.shape[1], 1, 1, dtype=torch.float64),
                     10, torch.full((n,), a, dtype=torch.float64), weight=1.0)
    yy = torch.as_tensor(y, dtype=torch.float64).reshape(1, -1, 1, 1).expand(n, -1, 1, 1)
    return as_vectors(get_solver("TMPD", exact_cov=exact_cov).step(step, yy, dense_physics(A, sigma)))


def _exact_score(prior, A, y, sigma, x_t, a):
    xg = x_t.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(prior.measurement_log_likelihood(xg, a, A, y, sigma).sum(), xg)
    return g


@pytest.mark.parametrize("a", [0.9, 0.3, 0.01])
def test_tmpd_exact_cov_is_the_exact_likelihood_score_on_a_gaussian_prior(a):
    """Prior N(m, s² I): Tweedie's covariance (1−ᾱ)/√ᾱ · J is the true Cov[x_0 | x_t], so TMPD's
    step (exact_cov, w = 1) equals ∇_{x_t} log p(y | x_t) to 1e-8 for a general dense A."""
    d, s2, sigma = 5, 2.5, 0.2
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, d, generator=g, dtype=torch.float64).numpy()
    prior = GaussianMixture([1.0], [[1.5, 0.0, -1.0, 0.5, 2.0]], [s2])
    x_t = torch.randn(4, d, generator=g, dtype=torch.float64) * 2
    y = torch.randn(3, generator=g, dtype=torch.float64)
    want = _exact_score(prior, A, y, sigma, x_t, a)
    torch.testing.assert_close(_tmpd_step(True, prior, A, y, sigma, x_t, a), want, rtol=1e-8, atol=1e-8)
    # row-sum approximation: exact when A J Aᵀ is diagonal (coordinate selection) ...
    sel = np.eye(d)[[0, 2, 3]]
    torch.testing.assert_close(_tmpd_step(False, prior, sel, y, sigma, x_t, a),
                               _exact_score(prior, sel, y, sigma, x_t, a), rtol=1e-8, atol=1e-8)
    # ... and not for a general A
    assert not torch.allclose(_tmpd_step(False, prior, A, y, sigma, x_t, a), want, rtol=1e-3, atol=1e-3)


def test_tmpd_differs_from_codps_plus_on_a_mixture():
    """On a two-component mixture the network's Jacobian is not λ-isotropic: TMPD's exact-cov
    direction differs from CoDPS+'s (auto, λ = 1) between the modes, and agrees with the exact
    score better there (the point of the moment projection)."""
    prior = GaussianMixture([0.5, 0.5], [[-3.0, 0.0], [3.0, 0.0]], [1.0, 1.0])
    A, y, sigma, a = np.array([[1.0, 1.0]]) / math.sqrt(2), torch.tensor([0.5], dtype=torch.float64), 0.3, 0.5
    x_t = torch.tensor([[0.2, 0.1], [-0.4, 0.3]], dtype=torch.float64)
    tmpd = _tmpd_step(True, prior, A, y, sigma, x_t, a)
    x0_hat = (x_t - math.sqrt(1 - a) * prior.eps(x_t, a)) / math.sqrt(a)
    step = make_step(as_image(x_t), as_image(x0_hat), torch.zeros(2, 2, 1, 1, dtype=torch.float64), 10,
                     torch.full((2,), a, dtype=torch.float64), weight=1.0)
    codps = as_vectors(get_solver("CoDPS+", scale="auto", inv_var=1.0).step(
        step, y.reshape(1, 1, 1, 1).expand(2, 1, 1, 1), dense_physics(A, sigma)))
    exact = _exact_score(prior, A, y, sigma, x_t, a)
    assert (tmpd - codps).norm() > 0.1 * exact.norm()
    assert (tmpd - exact).norm() < (codps - exact).norm()


# ---------------------------------------------------------------------------------------------
# RED-diff: the gradient and its fixed point on a Gaussian prior

def test_reddiff_gradient_and_fixed_point_on_a_gaussian_prior():
    """The step's gradient equals autograd of ℓ_t with sg(ε̂ − ε) (the network not
    differentiated); with the exact denoiser of N(m, s² I) and ε = 0 (its expectation, ε̂ − ε
    being affine in ε) it vanishes at the closed-form fixed point μ* and not elsewhere."""
    d, s2, a, lam = 4, 2.0, 0.4, 0.25
    prior = GaussianMixture([1.0], [[0.5, -1.0, 0.0, 2.0]], [s2])
    A = np.random.default_rng(2).standard_normal((2, d))
    phys = dense_physics(A, 0.1)
    y = torch.tensor([1.2, -0.7], dtype=torch.float64)
    method = get_solver("RED-diff", grad_term_weight=lam)
    mu_star = REDDiff.fixed_point(prior.means[0], s2, torch.from_numpy(A), y, a, lam)
    ab = torch.full((1,), a, dtype=torch.float64)

    def grad_at(mu, eps):
        x_t = math.sqrt(a) * mu + math.sqrt(1 - a) * eps
        eps_hat = prior.eps(x_t[None], a)[0]
        g, _ = method.gradient(as_image(mu[None]), as_image(eps_hat[None]), as_image(eps[None]),
                               y.reshape(1, 2, 1, 1), ab, phys)
        return as_vectors(g)[0], eps_hat

    zero = torch.zeros(d, dtype=torch.float64)
    g_star, _ = grad_at(mu_star, zero)
    assert g_star.abs().max() < 1e-12
    g_off, _ = grad_at(mu_star + 0.3, zero)
    assert g_off.abs().max() > 1e-3
    eps = torch.randn(d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mu = mu_star.clone().requires_grad_(True)
    g, eps_hat = grad_at(mu.detach(), eps)
    w = lam * math.sqrt((1 - a) / a)
    loss = ((y - torch.from_numpy(A) @ mu) ** 2).mean() / 2 + w * ((eps_hat - eps).detach() * mu).mean()
    (want,) = torch.autograd.grad(loss, mu)
    torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-12)


def test_reddiff_converges_to_the_fixed_point_of_the_final_steps():
    """A run on a 1-component prior (DDIM 200, noiseless-ish y): μ ends near the least-squares
    fit in the range of A (within 0.05) and near the prior mean in its null space, where only the
    stochastic regulariser acts (Adam on the noisy sg(ε̂ − ε) leaves a spread: each sample within
    0.6, their mean within 0.3), and the state is reset between runs (a second run repeats the
    first exactly)."""
    d = 4
    prior = GaussianMixture([1.0], [[0.5, -1.0, 0.0, 2.0]], [1.0])
    A = np.eye(d)[:2]
    phys = dense_physics(A, 0.01)
    y = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1).expand(3, 2, 1, 1)
    diff = create_sampler(sampler="ddim", timestep_respacing="ddim200", model_var_type="fixedsmall",
                          clip_denoised=False, eta=1.0)
    method = get_solver("RED-diff", lr=0.05)
    runs = []
    for _ in range(2):
        gens = torch_generators(0, range(3), STREAM_SAMPLER)
        runs.append(sample(GMMEpsilon.from_schedule(prior), diff, randn((d, 1, 1), gens), y, method, phys, gens,
                           progress=False).x0)
    torch.testing.assert_close(runs[0], runs[1])
    x = as_vectors(runs[0])
    torch.testing.assert_close(x[:, :2], torch.tensor([[1.0, 0.0]]).expand(3, 2), atol=0.05, rtol=0)
    null = x[:, 2:] - torch.tensor([[0.0, 2.0]])
    assert null.abs().max() < 0.6 and null.mean(0).abs().max() < 0.3, null


# ---------------------------------------------------------------------------------------------
# Batch-size invariance (state, Langevin noise, VJPs): image 0 alone = image 0 in a batch of 3

@pytest.mark.parametrize("name,params", [("RED-diff", {}), ("DAPS", dict(langevin_steps=5)),
                                         ("DAPS", dict(langevin=False)), ("TMPD", dict(exact_cov=True)),
                                         ("TMPD", {})])
def test_same_seed_same_sample_whatever_the_batch(name, params):
    prior = GaussianMixture([0.5, 0.5], [[-2.0, 0.0, 1.0], [2.0, 1.0, 0.0]], [1.0, 0.5])
    phys = dense_physics(np.random.default_rng(1).standard_normal((2, 3)), 0.1)
    diff = create_sampler(sampler="ddpm", timestep_respacing="20", model_var_type="fixedsmall", clip_denoised=False)
    y1 = torch.tensor([0.3, -0.2]).reshape(1, 2, 1, 1)
    outs = []
    for n in (1, 3):
        gens = torch_generators(5, range(n), STREAM_SAMPLER)
        outs.append(sample(GMMEpsilon.from_schedule(prior), diff, randn((3, 1, 1), gens), y1.expand(n, 2, 1, 1),
                           get_solver(name, **params), phys, gens, progress=False).x0)
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# End to end on the embedded prior with the committed configs

@pytest.mark.parametrize("prefix", ["reddiff", "daps", "tmpd"])
def test_embedded_prior_end_to_end_with_committed_config(prefix):
    """Each method's committed DDIM inpainting values (its method table), at the shipped 100 DDIM steps, 2 test digits:
    finite samples that fit the measurement better than the zero image does."""
    from builder import build_model, build_physics, build_sampler, build_solver, compose_conditioning
    from util.config import apply_tuned, load_yaml
    import glob
    from PIL import Image
    cfg_dir = os.path.join(REPO, "configs", "MNIST", "DDIM")
    model_cfg = load_yaml(os.path.join(cfg_dir, "model_config.yaml"))
    model_cfg["model_path"] = os.path.join(REPO, model_cfg["model_path"])
    model = build_model(model_cfg, "cpu")
    paths = sorted(glob.glob(os.path.join(REPO, "samples", "mnist", "*.png")))[:2]
    x = torch.from_numpy(np.stack([np.asarray(Image.open(p), dtype=np.float32) for p in paths]) / 127.5 - 1.0)[:, None]
    task_path = os.path.join(cfg_dir, "inpainting_config.yaml")   # with the method's table values
    task = load_yaml(task_path)
    task["conditioning"]["method"] = {"reddiff": "RED-diff", "daps": "DAPS", "tmpd": "TMPD"}[prefix]
    cfg = {"conditioning": compose_conditioning(task["conditioning"], task_path), "measurement": task["measurement"]}
    physics = build_physics(cfg["measurement"])
    idx = [0, 1]
    y = physics.measure(x, numpy_rngs(22, idx, STREAM_OPERATOR), torch_generators(22, idx, STREAM_NOISE))
    # as main.py runs it by default: at the diffusion config's respacing (ddim100) with the values
    # tuned there (at ddim20 the tuned TMPD reaches only 10.3 dB on inpainting, leaderboard.md)
    respacing = load_yaml(os.path.join(cfg_dir, "diffusion_config.yaml"))["timestep_respacing"]
    solver = build_solver(apply_tuned(cfg, respacing)["conditioning"], physics)
    sampler = build_sampler({**load_yaml(os.path.join(cfg_dir, "diffusion_config.yaml")), "timestep_respacing": respacing})
    gens = torch_generators(22, idx, STREAM_SAMPLER)
    out = sample(model, sampler, randn((1, 32, 32), gens), y, solver, physics, gens, progress=False)
    assert torch.isfinite(out.x0).all() and out.diverged_at == [None, None]
    assert (physics.residual(y, out.x0) < 0.5 * physics.residual(y, torch.zeros_like(x))).all()
