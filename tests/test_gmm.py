"""Gaussian-mixture priors with exact answers (guided_diffusion/gmm.py), the dense operator,
``scale: auto`` and the GMM benchmark: ε against autograd of the log-density, the exact
posterior against importance sampling, CoDPS+'s direction against the exact likelihood score,
the samplers' score weights against their own proposals, and posterior samples against the
exact posterior."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks import gmm as bench
from guided_diffusion.gaussian_diffusion import create_sampler
from guided_diffusion.gmm import GaussianMixture, GMMEpsilon, as_image, as_vectors, grid_mixture
from operators import Physics, get_noise, get_operator
from method_helpers import assert_gaussian_moments, legacy_solver
from sampling import sample
from solvers import get_solver
from util.seeding import STREAM_SAMPLER, randn, torch_generators


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # small tensors (tests/conftest.py)


def three_component(full: bool) -> GaussianMixture:
    """A d = 3 mixture with diagonal or full (rotated) covariances."""
    means = [[-3.0, 0.0, 1.0], [2.0, 2.0, -1.0], [0.0, -4.0, 0.5]]
    if not full:
        return GaussianMixture([0.5, 0.3, 0.2], means, [[1.0, 0.5, 2.0], [0.3, 0.3, 0.3], [2.0, 1.0, 0.7]])
    rng = np.random.default_rng(0)
    covs = []
    for k in range(3):
        q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        covs.append(q @ np.diag(rng.uniform(0.2, 2.0, 3)) @ q.T)
    return GaussianMixture([0.5, 0.3, 0.2], means, np.stack(covs))


# ---------------------------------------------------------------------------------------------
# The mixture: densities, scores, ε-model

@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("alpha_bar", [1.0, 0.7, 0.05, 1e-4])
def test_eps_matches_autograd_of_log_density(full, alpha_bar):
    mix = three_component(full)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    x[0] = torch.tensor([400.0, -300.0, 250.0])          # far from every mean: log-sum-exp keeps it finite
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.log_prob(x, alpha_bar).sum(), x)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(mix.score(x.detach(), alpha_bar), grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mix.eps(x.detach(), alpha_bar), -math.sqrt(1 - alpha_bar) * grad, rtol=1e-9, atol=1e-9)


def test_log_prob_matches_scipy_and_diffusion_moments():
    from scipy.stats import multivariate_normal
    mix = three_component(True)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = 0.4
    covs = mix.component_covariances().numpy()
    want = np.log(sum(float(mix.weights[k]) * multivariate_normal(math.sqrt(a) * mix.means[k].numpy(),
                                                                  a * covs[k] + (1 - a) * np.eye(3)).pdf(x.numpy())
                      for k in range(3)))
    np.testing.assert_allclose(mix.log_prob(x, a).numpy(), want, rtol=1e-10)
    samples, _ = mix.sample(200_000, torch.Generator().manual_seed(3))
    torch.testing.assert_close(samples.mean(0), mix.mean(), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), mix.covariance(), atol=0.08, rtol=0)


def test_eps_model_call_signature_and_timesteps():
    mix = three_component(False)
    model = GMMEpsilon.from_schedule(mix, "linear", 1000)
    x = torch.randn(4, 3, 1, 1)
    t = torch.tensor([999, 10, 10, 500])
    out = model(x, t)
    assert out.shape == x.shape and out.dtype == torch.float32
    for i in range(4):
        want = mix.eps(as_vectors(x[i:i + 1]).double(), model.alphas_cumprod[int(t[i])])
        torch.testing.assert_close(as_vectors(out[i:i + 1]).double(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="integer"):
        model(x, t.float())
    with pytest.raises(ValueError, match="values per sample"):
        model(torch.zeros(2, 4, 1, 1), t[:2])
    with pytest.raises(ValueError, match="timesteps must lie"):
        model(x, torch.tensor([1000, 0, 0, 0]))


def test_constructor_errors_and_single_gaussian():
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([-1.0, 2.0], [[0.0], [1.0]], [1.0, 1.0])
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture([1.0], [[0.0, 0.0]], [0.0])
    with pytest.raises(ValueError, match="covariances must be"):
        GaussianMixture([1.0], [[0.0, 0.0]], np.ones((1, 3)))
    single = GaussianMixture([1.0], [[1.0, -1.0]], [4.0])      # K = 1: N(m, 4 I)
    x = torch.tensor([[0.0, 0.0], [3.0, 1.0]], dtype=torch.float64)
    a = 0.3
    c = a * 4.0 + 1 - a
    torch.testing.assert_close(single.score(x, a), -(x - math.sqrt(a) * torch.tensor([1.0, -1.0],
                                                                                      dtype=torch.float64)) / c)


def test_grid_mixture_layout():
    mix = grid_mixture(4, seed=0)
    assert mix.num_components == 25 and mix.dim == 4
    assert torch.allclose(mix.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert {tuple(m) for m in mix.means[:, :2].tolist()} == {(8.0 * i, 8.0 * j) for i in range(-2, 3)
                                                            for j in range(-2, 3)}
    assert torch.equal(mix.means[:, 0], mix.means[:, 2]) and torch.equal(mix.means[:, 1], mix.means[:, 3])
    assert torch.equal(mix.eigvals, torch.ones(25, 4, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# The exact posterior

def test_posterior_matches_importance_sampling_d2():
    """Closed-form posterior weights, mean and covariance against self-normalised importance
    sampling from the prior (weights N(y; A x, σ²)), 400k draws, d = 2."""
    mix = GaussianMixture([0.5, 0.3, 0.2], [[-3.0, 0.0], [3.0, 0.5], [0.0, 4.0]],
                          [[[1.0, 0.3], [0.3, 0.5]], [[0.6, -0.2], [-0.2, 1.0]], [[1.5, 0.0], [0.0, 0.4]]])
    A = np.array([[0.2, 1.0]])
    y, sigma = np.array([0.3]), 0.5
    post = mix.posterior(A, y, sigma)
    x, labels = mix.sample(400_000, torch.Generator().manual_seed(0))
    logw = -0.5 * ((y[0] - x @ torch.from_numpy(A[0])) / sigma) ** 2
    w = torch.softmax(logw, 0)
    ess = 1.0 / (w ** 2).sum()
    assert ess > 50_000
    est_weights = torch.stack([w[labels == k].sum() for k in range(3)])
    est_mean = w @ x
    est_cov = ((x - est_mean) * w[:, None]).T @ (x - est_mean)
    torch.testing.assert_close(est_weights, post.weights, atol=0.01, rtol=0)
    torch.testing.assert_close(est_mean, post.mean(), atol=0.03, rtol=0)
    torch.testing.assert_close(est_cov, post.covariance(), atol=0.06, rtol=0)
    assert post.weights.max() < 0.9                                  # a genuinely multimodal posterior


def test_posterior_sampler_log_prob_and_assignment():
    mix = three_component(True)
    A = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]])
    post = mix.posterior(A, np.array([0.5, -1.0]), 0.7)
    x, labels = post.sample(200_000, torch.Generator().manual_seed(4))
    torch.testing.assert_close(x.mean(0), post.mean(), atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), post.covariance(), atol=0.04, rtol=0)
    counts = torch.bincount(labels, minlength=3).double() / labels.numel()
    torch.testing.assert_close(counts, post.weights, atol=0.005, rtol=0)
    pts = x[:50]
    torch.testing.assert_close(post.log_prob(pts), post.as_mixture().log_prob(pts), rtol=1e-9, atol=1e-9)
    # responsibilities under the exact posterior equal the prior ones (Bayes, see the docstring)
    torch.testing.assert_close(post.responsibilities(pts), post.as_mixture().responsibilities(pts), rtol=1e-8,
                               atol=1e-10)
    assert torch.equal(post.assign(pts), torch.argmax(post.as_mixture().responsibilities(pts), 1))


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("alpha_bar", [0.9, 0.2, 0.002])
def test_measurement_likelihood_is_bayes_of_diffused_posterior(full, alpha_bar):
    """log p(y | x_t) = log p_t(x_t | y) + log p(y) − log p_t(x_t), the posterior mixture diffused."""
    mix = three_component(full)
    A = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]])
    y, sigma = np.array([0.5, -1.0]), 0.3
    post = mix.posterior(A, y, sigma)
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2
    got = mix.measurement_log_likelihood(x, alpha_bar, A, y, sigma)
    want = post.as_mixture().log_prob(x, alpha_bar) + post.log_evidence - mix.log_prob(x, alpha_bar)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# CoDPS+ direction, score weights, scale auto

def _single_gaussian_likelihood_score(m, s2, A, y, sigma, x_t, a):
    """∇_{x_t} log N(y; A E[x_0|x_t], σ² I + r² A Aᵀ) for the prior N(m, s² I), by autograd."""
    x = x_t.clone().requires_grad_(True)
    mean = m + math.sqrt(a) * s2 / (a * s2 + 1 - a) * (x - math.sqrt(a) * m)
    r2 = s2 * (1 - a) / (a * s2 + 1 - a)
    cov = sigma ** 2 * torch.eye(A.shape[0], dtype=torch.float64) + r2 * A @ A.T
    dist = torch.distributions.MultivariateNormal(mean @ A.T, covariance_matrix=cov)
    (grad,) = torch.autograd.grad(dist.log_prob(y).sum(), x)
    return grad


@pytest.mark.parametrize("prior_mean", [0.0, 1.5])
@pytest.mark.parametrize("a", [0.9, 0.3, 0.01])
def test_codps_plus_direction_is_exact_likelihood_score(prior_mean, a):
    """Prior N(m, s² I), inv_var = 1/s², x0_hat the exact Tweedie estimate: J · g of CoDPS+
    (its step with s = 1 from x' = 0) equals ∇_{x_t} log p(y | x_t) to 1e-6."""
    d, s2, sigma = 5, 2.5, 0.2
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, d, generator=g, dtype=torch.float64)
    m = torch.full((d,), prior_mean, dtype=torch.float64)
    x_t = torch.randn(4, d, generator=g, dtype=torch.float64) * 2
    y = torch.randn(3, generator=g, dtype=torch.float64)
    prior = GaussianMixture([1.0], m[None], [s2])
    x0_hat = (x_t - math.sqrt(1 - a) * prior.eps(x_t, a)) / math.sqrt(a)
    op = get_operator("dense", matrix=A, input_shape=(d, 1, 1))
    solver = legacy_solver("CoDPS+", op, get_noise("gaussian", sigma=sigma), scale=1.0, inv_var=1 / s2)
    ab = torch.full((4,), a, dtype=torch.float64)
    x_next, _ = solver(as_image(x_t), torch.zeros(4, d, 1, 1, dtype=torch.float64), as_image(x0_hat),
                       y.reshape(1, 3, 1, 1).expand(4, 3, 1, 1), 10, ab)
    want = _single_gaussian_likelihood_score(m, s2, A, y, sigma, x_t, a)
    torch.testing.assert_close(as_vectors(x_next), want, rtol=1e-6, atol=1e-6)
    xg = x_t.clone().requires_grad_(True)            # the library's exact likelihood agrees too
    (mine,) = torch.autograd.grad(prior.measurement_log_likelihood(xg, a, A, y, sigma).sum(), xg)
    torch.testing.assert_close(mine, want, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("sampler,resp,eta", [("ddpm", "1000", 0.0), ("ddpm", "250", 0.0),
                                              ("ddim", "ddim50", 1.0), ("ddim", "ddim50", 0.0),
                                              ("ddim", "ddim50", 0.5)])
def test_score_weight_is_the_proposal_shift(sampler, resp, eta):
    """Adding w_t · G to the proposal equals the proposal with ε̂ replaced by ε̂ − √(1 − ᾱ_t) G."""
    diff = create_sampler(sampler=sampler, timestep_respacing=resp, model_var_type="fixedsmall",
                          clip_denoised=False, eta=eta)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 1, 1, generator=g)
    G = torch.randn(3, 4, 1, 1, generator=g)
    noise = torch.randn(3, 4, 1, 1, generator=g)
    for t in (0, diff.num_timesteps // 2, diff.num_timesteps - 1):
        tb = torch.full((3,), t, dtype=torch.long)
        a = float(diff.alphas_cumprod[t])
        eps = lambda z, ts: 0.3 * z
        eps_y = lambda z, ts: 0.3 * z - math.sqrt(1 - a) * G
        base = diff.proposal(diff.p_mean_variance(eps, x, tb), x, tb, noise)
        guided = diff.proposal(diff.p_mean_variance(eps_y, x, tb), x, tb, noise)
        w = diff.score_weight(tb).reshape(-1, 1, 1, 1)
        torch.testing.assert_close(guided, base + w * G, rtol=1e-5, atol=1e-6)
    if sampler == "ddim" and eta == 1.0:
        ddpm = create_sampler(sampler="ddpm", timestep_respacing=resp, model_var_type="fixedsmall")
        np.testing.assert_allclose(diff.score_weights(), ddpm.score_weights(), rtol=1e-10)


def test_scale_auto_parsing_and_errors():
    op = get_operator("dense", matrix=np.eye(2, 3), input_shape=(3, 1, 1))
    noiser = get_noise("gaussian", sigma=0.1)
    for name in ("CoDPS", "CoDPS+"):
        solver = legacy_solver(name, op, noiser, scale="auto")
        assert solver.scale == "auto"
        x = torch.zeros(2, 3, 1, 1)
        with pytest.raises(ValueError, match="weight"):      # a Step without a sampler has no w_t
            solver(x, x, x, torch.ones(2, 2, 1, 1), 5, torch.tensor([0.5, 0.5]))
        legacy_solver(name, op, noiser, scale=0.5)(x, x, x, torch.ones(2, 2, 1, 1), 5, torch.tensor([0.5, 0.5]))
        with pytest.raises(ValueError, match="'auto'"):
            get_solver(name, scale="automatic")
        x_next, _ = solver(x, x, x, torch.ones(2, 2, 1, 1), 0, torch.tensor([0.99, 0.99]),
                           score_weight=torch.tensor([0.1, 0.2]))
        assert (x_next != 0).any()                           # auto also corrects at t = 0


def test_codps_plus_auto_single_gaussian_samples_exact_posterior():
    """Scale auto, prior N(m, 4 I) in d = 4, m = 2 measurements, σ_y = 0.3, DDPM 1000, 1000
    samples: every coordinate of the sample mean within 4.5 standard errors of the exact
    posterior mean, every covariance entry within 4.5 standard errors (Var of a sample
    covariance ≈ (C_ii C_jj + C_ij²)/n) plus 0.02 for the discretisation."""
    d, n, s2, sigma = 4, 1000, 4.0, 0.3
    prior = GaussianMixture([1.0], [[0.5, -1.0, 0.0, 2.0]], [s2])
    A = np.random.default_rng(1).standard_normal((2, d))
    y = torch.tensor([1.2, -0.7], dtype=torch.float64)
    post = prior.posterior(A, y, sigma)
    pm, pc = post.mean(), post.covariance()
    physics = Physics(get_operator("dense", matrix=A, input_shape=(d, 1, 1)), get_noise("gaussian", sigma=sigma))
    solver = get_solver("CoDPS+", scale="auto", inv_var=1 / s2)
    diff = create_sampler(sampler="ddpm", timestep_respacing="1000", model_var_type="fixedsmall", clip_denoised=False)
    gens = torch_generators(0, range(n), STREAM_SAMPLER)
    res = sample(GMMEpsilon.from_schedule(prior), diff, randn((d, 1, 1), gens),
                 y.float().reshape(1, 2, 1, 1).expand(n, 2, 1, 1), solver, physics, gens, progress=False)
    x = as_vectors(res.x0).double()
    assert_gaussian_moments(x, pm, pc)


def test_oracle_likelihood_with_auto_weight_recovers_multimodal_posterior():
    """The exact ∇ log p(y | x_t) with the sampler's weight (DDIM 100) reproduces a bimodal
    posterior: component weights within TV 0.05 (1000 samples), mean within 0.3."""
    mix = GaussianMixture([0.5, 0.3, 0.2], [[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]], [1.0, 1.0, 1.0])
    A, y, sigma = np.array([[0.0, 1.0]]), torch.tensor([0.2], dtype=torch.float64), 0.5
    post = mix.posterior(A, y, sigma)
    assert 0.3 < post.weights[0] < 0.7
    problem = bench.Problem(2, 1, sigma, mix, A, y, torch.zeros(2), post)
    diff = create_sampler(**bench.DIFFUSION, **bench.SAMPLERS["DDIM 100"])
    x, diverged = bench.sample_method(problem, diff, GMMEpsilon.from_schedule(mix), bench.METHODS[-1], 1000, 3)
    assert bench.METHODS[-1].solver == "oracle" and diverged == [None] * 1000
    assert bench.weight_tv(post, x) < 0.05
    assert (x.mean(0) - post.mean()).norm() < 0.3


# ---------------------------------------------------------------------------------------------
# The dense operator

def test_dense_operator_matches_matrix_and_pseudo_inverse():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3, 8))
    op = get_operator("dense", matrix=A)
    x = torch.randn(2, 2, 2, 2, dtype=torch.float64)
    y = op.forward(x)
    assert y.shape == (2, 3, 1, 1) and op.y_shape((2, 2, 2, 2)) == (2, 3, 1, 1)
    torch.testing.assert_close(y.flatten(1), x.flatten(1) @ torch.from_numpy(A).T)
    v = torch.randn(2, 3, 1, 1, dtype=torch.float64)
    aat = torch.from_numpy(A @ A.T)
    for r2, s2 in [(0.5, 0.0), (torch.tensor([1.0, 2.0]), torch.tensor([0.1, 0.0]))]:
        got = op.cov_solve(v, r2, s2).flatten(1)
        for i in range(2):
            r = float(r2[i]) if isinstance(r2, torch.Tensor) else r2
            s = float(s2[i]) if isinstance(s2, torch.Tensor) else s2
            want = torch.linalg.solve(s * torch.eye(3, dtype=torch.float64) + r * aat, v[i].flatten())
            torch.testing.assert_close(got[i], want, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(op.display(y).flatten(1),
                               y.flatten(1) @ torch.from_numpy(np.linalg.pinv(A)).T, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="bound shape"):
        op.forward(torch.zeros(2, 8, 1, 1))
    with pytest.raises(ValueError, match="columns"):
        get_operator("dense", matrix=A).forward(torch.zeros(1, 3, 1, 1))


def test_dense_random_matrix_is_reproducible_and_saved():
    op = get_operator("dense", rows=4, seed=3)
    with pytest.raises(RuntimeError, match="draw"):
        op.adjoint(torch.zeros(1, 4, 1, 1))
    op.draw(None, (2, 1, 5, 5))
    a = op.matrix
    assert a.shape == (4, 25) and np.allclose(np.linalg.norm(a, axis=1), 1.0)
    again = get_operator("dense", rows=4, seed=3)
    again.draw(None, (1, 1, 5, 5))
    np.testing.assert_array_equal(again.matrix, a)
    fresh = get_operator("dense", rows=4, seed=99)
    fresh.load_state_dict(op.state_dict())
    np.testing.assert_array_equal(fresh.matrix, a)


# ---------------------------------------------------------------------------------------------
# The benchmark

def test_sliced_wasserstein_and_weight_tv():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 3, generator=g, dtype=torch.float64)
    dirs = bench.random_directions(500, 3, 1)
    assert bench.sliced_wasserstein(x, x, dirs) == 0.0
    shift = torch.tensor([3.0, 0.0, 4.0], dtype=torch.float64)
    # E_θ[(θ·v)²] = |v|² / d for uniform directions: SW ≈ 5 / √3
    assert bench.sliced_wasserstein(x + shift, x, dirs) == pytest.approx(5 / math.sqrt(3), rel=0.05)
    assert bench.sliced_wasserstein(x[:1500] + shift, x, dirs) == pytest.approx(5 / math.sqrt(3), rel=0.05)
    problem = bench.make_problem(4, 2, 0.1, seed=0)
    exact, _ = problem.posterior.sample(4000, g)
    assert bench.weight_tv(problem.posterior, exact) < 0.03
    prior_draws, _ = problem.prior.sample(4000, g)
    assert bench.weight_tv(problem.posterior, prior_draws) > 0.5


def test_benchmark_smoke(tmp_path):
    """The benchmark loop on one tiny problem, every method, DDIM 100, writes its CSV and table."""
    rows = bench.run(dims=(4,), ms=(1,), sigmas=(0.1,), samples=16, projections=8, samplers=("DDIM 100",))
    methods = [m.label for m in bench.METHODS if "DDIM 100" in m.samplers]
    assert [r["method"] for r in rows] == [bench.EXACT] + methods
    assert all(math.isfinite(r["sw"]) and 0 <= r["weight_tv"] <= 1 for r in rows)
    csv_path, md_path = bench.write_results(rows, str(tmp_path), "gmm", "python -m benchmarks.gmm --test",
                                            dict(bench.QUICK, threads=1, seed=0), 1.0)
    text = open(md_path, encoding="utf-8").read()
    assert "| DDIM 100 | ΠGDM |" in text and open(csv_path).read().startswith(",".join(bench.CSV_FIELDS))


def test_benchmark_combine_reproduces_a_single_run(tmp_path):
    """--combine of two subset runs (σ_y split) gives the rows of one run over the whole grid:
    problems and sampler noise depend only on the seed and the row's key."""
    methods = [m for m in bench.METHODS if m.label in ("prior (no data)", "CoDPS+ (auto)")]
    kw = dict(dims=(4,), ms=(1,), samples=16, projections=8, samplers=("DDIM 100",), methods=methods)
    whole = bench.run(sigmas=(0.1, 1.0), **kw)
    settings = dict(bench.QUICK, threads=1, seed=0)
    a = bench.write_results(bench.run(sigmas=(1.0,), **kw), str(tmp_path), "a", "cmd a", settings, 1.0)[0]
    b = bench.write_results(bench.run(sigmas=(0.1,), **kw), str(tmp_path), "b", "cmd b", settings, 1.0)[0]
    assert bench.main(["--combine", a, b, "--out", str(tmp_path), "--name", "ab", "--projections", "8"]) == 0
    merged = bench.read_rows(str(tmp_path / "ab.csv"))
    key = ("d", "m", "sigma_y", "sampler", "method", "diverged")
    assert [tuple(r[k] for k in key) for r in merged] == [tuple(r[k] for k in key) for r in whole]
    for got, want in zip(merged, whole):
        for k in ("sw", "mean_err", "weight_tv"):
            assert got[k] == pytest.approx(want[k], rel=1e-5), (got["method"], k)
    text = open(tmp_path / "ab.md", encoding="utf-8").read()
    assert "`a.csv`: made by `cmd a`" in text and "`b.csv`: made by `cmd b`" in text
    assert "σ_y ∈ [0.1, 1.0]" in text
    sw_lines = [line for line in text.splitlines() if line.startswith("| DDIM 100 | CoDPS+ (auto) |")
                and line.count("|") == 4][::3]          # the sliced-Wasserstein table of each σ_y
    want = [r["sw"] for r in whole if r["method"] == "CoDPS+ (auto)"]
    assert [float(line.strip("| ").split(" | ")[2]) for line in sw_lines] == pytest.approx(want, rel=1e-2)


def test_benchmark_combine_bad_file(tmp_path, capsys):
    """A CSV that is not the benchmark's fails with exit 2 and names the file; nothing is written."""
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert bench.main(["--combine", str(bad), "--out", str(tmp_path), "--name", "x"]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "missing column" in err
    assert not (tmp_path / "x.csv").exists()


def test_floor_is_median_and_range_over_exact_draws():
    """The exact row is the median and 5–95 % range over ``floor_draws`` sets of exact draws
    (not one realisation); its first draw is the former single "2nd draw"."""
    d, m, sigma, n, proj = 4, 1, 0.1, 64, 16
    rows = bench.run(dims=(d,), ms=(m,), sigmas=(sigma,), samples=n, projections=proj, samplers=("DDIM 100",),
                     methods=bench.METHODS[:1], floor_draws=25)
    floor = rows[0]
    assert floor["method"] == bench.EXACT and floor["floor_draws"] == 25
    problem = bench.make_problem(d, m, sigma, 0)
    directions = bench.random_directions(proj, d, bench.derived_seed(0, d, 99))
    g = bench.reference_generator(0, d, m, sigma)
    reference, _ = problem.posterior.sample(n, g)
    draws = [bench.score(problem, problem.posterior.sample(n, g)[0], reference, directions) for _ in range(25)]
    for k in bench.METRICS:
        vals = np.array([dr[k] for dr in draws])
        assert floor[k] == pytest.approx(np.median(vals), rel=1e-12)
        assert floor[f"{k}_p05"] == pytest.approx(np.percentile(vals, 5), rel=1e-12)
        assert floor[f"{k}_p95"] == pytest.approx(np.percentile(vals, 95), rel=1e-12)
        assert floor[f"{k}_p05"] < floor[k] < floor[f"{k}_p95"]
    g1, g2 = bench.reference_generator(0, d, m, sigma), bench.reference_generator(0, d, m, sigma)
    problem.posterior.sample(n, g1)                             # the reference set, then draw 1
    legacy = bench.exact_floor(problem, reference, directions, n, 1, g1)
    problem.posterior.sample(n, g2)
    second = bench.score(problem, problem.posterior.sample(n, g2)[0], reference, directions)
    assert legacy["per_draw"][0].tolist() == [second[k] for k in bench.METRICS]


def test_tables_show_every_m_and_the_floor_range(tmp_path):
    """The markdown tables have a column per (d, m), not a median over m, and the floor reads
    "median [p05, p95]"."""
    methods = [mt for mt in bench.METHODS if mt.label == "DPS"]
    rows = bench.run(dims=(4,), ms=(1, 2), sigmas=(0.1,), samples=16, projections=8, samplers=("DDIM 100",),
                     methods=methods, floor_draws=20)
    _, md = bench.write_results(rows, str(tmp_path), "g", "cmd", dict(bench.QUICK, threads=1, seed=0), 1.0)
    text = open(md, encoding="utf-8").read()
    assert "median over m" not in text
    tv_table = text.split("## σ_y = 0.1: weight TV")[1].split("##")[0]
    assert "| sampler | method | d=4 m=1 | d=4 m=2 |" in tv_table
    dps = next(line for line in tv_table.splitlines() if line.startswith("| DDIM 100 | DPS |"))
    want = [bench._fmt(r["weight_tv"]) for r in rows if r["method"] == "DPS"]
    assert dps.strip("| ").split(" | ")[2:] == want and len(want) == 2
    floor = next(line for line in tv_table.splitlines() if line.startswith(f"| - | {bench.EXACT} |"))
    f1 = rows[0]
    assert f"{bench._fmt(f1['weight_tv'])} [{bench._fmt(f1['weight_tv_p05'])}, {bench._fmt(f1['weight_tv_p95'])}]" \
        in floor


def test_refloor_replaces_single_draw_rows_by_the_floor(tmp_path):
    """--combine --refloor on a CSV with the old single-draw exact rows (and no floor columns)
    writes the floor a full run writes, keeping the method rows."""
    methods = [mt for mt in bench.METHODS if mt.label == "prior (no data)"]
    kw = dict(dims=(4,), ms=(1,), sigmas=(0.1,), samples=16, projections=8, samplers=("DDIM 100",), methods=methods)
    whole = bench.run(floor_draws=20, **kw)
    old = [dict(r, method=bench.LEGACY_EXACT) if bench.is_exact(r) else r for r in bench.run(floor_draws=1, **kw)]
    path = tmp_path / "old.csv"
    with open(path, "w", encoding="utf-8") as f:                  # the pre-floor CSV layout
        f.write(",".join(bench.CSV_FIELDS[:14]) + "\n")
        for r in old:
            f.write(",".join(str(r[k]) for k in bench.CSV_FIELDS[:14]) + "\n")
    assert bench.read_rows(str(path))[0]["floor_draws"] is None
    assert bench.main(["--combine", str(path), "--refloor", "--floor-draws", "20", "--projections", "8",
                       "--out", str(tmp_path), "--name", "new"]) == 0
    new = bench.read_rows(str(tmp_path / "new.csv"))
    assert [r["method"] for r in new] == [r["method"] for r in whole]
    for got, want in zip(new, whole):
        for k in bench.METRICS:
            assert got[k] == pytest.approx(want[k], rel=1e-5)
    assert new[0]["floor_draws"] == 20 and new[0]["sw_p95"] == pytest.approx(whole[0]["sw_p95"], rel=1e-5)
    assert bench.main(["--refloor", "--out", str(tmp_path)]) == 2    # --refloor needs --combine


def test_quick_run_writes_outside_the_committed_results():
    """``--quick`` without ``--out`` goes to a new temporary folder (a smoke run never rewrites
    benchmarks/results); a full run and ``--combine`` default to benchmarks/results."""
    import os
    from benchmarks.gmm import parse_args
    results = os.path.join(os.path.dirname(os.path.abspath(__import__("benchmarks.gmm").gmm.__file__)), "results")
    quick = parse_args(["--quick"]).out
    assert os.path.isdir(quick) and os.path.abspath(quick) != results and not quick.startswith(results)
    os.rmdir(quick)
    assert parse_args([]).out == results
    assert parse_args(["--quick", "--out", "x"]).out == "x"
