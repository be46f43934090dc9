"""DDRM, DDNM+ and DiffPIR (solvers/ddrm.py, ddnm.py, diffpir.py) against closed forms: one step
of each against a dense numpy implementation of the paper's formulas (explicit SVD, every branch
exercised), DiffPIR's proximal step against a dense solve for every registered operator,
noiseless DDRM / DDNM samples on a single-Gaussian prior (exact denoiser) satisfying A x = y and
centred on the exact posterior mean, DDNM+ = DDRM (η_b = 1) for noisy measurements, and the
refusals. The registry-driven end-to-end runs are in tests/test_framework.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from guided_diffusion.gaussian_diffusion import create_sampler
from guided_diffusion.gmm import GaussianMixture, GMMEpsilon, as_vectors
from operators import LinearOperator, Physics, get_noise, get_operator, list_operators
from sampling import make_step, sample
from solvers import get_solver
from util.seeding import STREAM_OPERATOR, STREAM_SAMPLER, numpy_rngs, randn, torch_generators

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SING = np.array([2.0, 0.5, 0.05])        # singular values of the dense test operator (m = 3, d = 5)


def dense_problem(sigma: float, seed: int = 0):
    """A = U diag(SING) Vᵀ (3 × 5, two null directions) as a dense Physics, with U, V."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    v, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    a = u @ np.diag(SING) @ v[:, :3].T
    noise = get_noise("gaussian", sigma=sigma) if sigma > 0 else get_noise("clean")
    phys = Physics(get_operator("dense", matrix=a, input_shape=(5, 1, 1)), noise)
    phys.draw(None, (2, 5, 1, 1))
    return phys, a


def one_step(phys, alpha_bar, alpha_bar_prev, seed=1):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(2, 5, 1, 1, generator=g, dtype=torch.float64)
    x0 = torch.randn(2, 5, 1, 1, generator=g, dtype=torch.float64)
    z = torch.randn(2, 5, 1, 1, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, 1, 1, generator=g, dtype=torch.float64)
    step = make_step(x_t, x0, torch.zeros_like(x0), 5, alpha_bar, alpha_bar_prev, noise=z)
    return step, y


def svd_coords(phys, a, step, y):
    """Coordinates in the view's SVD basis (checked against numpy in tests/test_physics.py):
    (s (d,), Vᵀx0_hat, Vᵀε̂, z read in coefficient layout (DDRM's fresh noise), Uᵀy)."""
    view = phys.spectral
    vt = lambda t: view.V_T(t).numpy()      # noqa: E731  (the view's V, checked against numpy in test_physics)
    s = view.sing(view.V_T(step.x0_hat)).numpy().reshape(-1)
    x0c = vt(step.x0_hat)
    return s, x0c, vt(step.eps), step.noise.numpy().reshape(x0c.shape), view.U_T(y).numpy()


@pytest.mark.parametrize("sv_zero", [0.0, "auto"])
@pytest.mark.parametrize("sigma", [0.0, 0.3])
@pytest.mark.parametrize("eta, eta_b", [(0.85, 1.0), (0.4, 0.7)])
def test_ddrm_step_matches_the_three_cases(sigma, eta, eta_b, sv_zero):
    """One DDRM step (Kawar et al. 2022, eqs. 7–8) against the formulas coefficient by
    coefficient: σ_{t-1} = 0.4 makes s σ_{t-1} = 0.8 ≥ σ_y, 0.2 < σ_y, 0.02 < σ_y (σ_y = 0.3), and
    two null directions. With the cutoff sv_zero = "auto" (= σ_y / 2), s = 0.05 ≤ 0.15 counts as 0:
    its coefficient follows the null-space line (as the reference code's ZERO and deepinv's
    s > σ_y rule)."""
    phys, a = dense_problem(sigma)
    sig_prev = 0.4
    ab_prev = 1 / (1 + sig_prev ** 2)
    step, y = one_step(phys, 0.5, ab_prev)
    got = get_solver("DDRM", eta=eta, eta_b=eta_b, sv_zero=sv_zero).step(step, y, phys)
    s, x0c, epsc, zc, uy = svd_coords(phys, a, step, y)
    cut = sigma / 2 if sv_zero == "auto" else 0.0
    assert (sigma > 0 and sv_zero == "auto") == bool(((s > 0) & (s <= cut)).any())
    s = np.where(s > cut, s, 0.0)
    want = np.zeros_like(x0c)
    for n in range(2):
        for i in range(5):
            if s[i] == 0:
                want[n, i] = x0c[n, i] + math.sqrt(1 - eta ** 2) * sig_prev * epsc[n, i] + eta * sig_prev * zc[n, i]
                continue
            yb = uy[n, i] / s[i]
            if s[i] * sig_prev >= sigma:
                std = math.sqrt(max(sig_prev ** 2 - eta_b ** 2 * sigma ** 2 / s[i] ** 2, 0.0))
                want[n, i] = (1 - eta_b) * x0c[n, i] + eta_b * yb + std * zc[n, i]
            else:
                want[n, i] = (x0c[n, i] + math.sqrt(1 - eta ** 2) * sig_prev * (yb - x0c[n, i]) / (sigma / s[i])
                              + eta * sig_prev * zc[n, i])
    branches = {("null" if s[i] == 0 else "precise" if s[i] * sig_prev >= sigma else "noisy") for i in range(5)}
    assert branches == ({"null", "precise"} if sigma == 0 else {"null", "precise", "noisy"})
    want_x = math.sqrt(ab_prev) * phys.spectral.V(torch.from_numpy(want))
    torch.testing.assert_close(got, want_x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sv_zero", [0.0, "auto"])
@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_ddnm_step_matches_eqs_17_and_51(sigma, sv_zero):
    """One DDNM+ step against the per-singular-value λ_i, d₁, d₂ of Wang et al. 2023 (eq. 17, eq. 51),
    computed densely: x̂0 = x0_hat − V Λ Σ⁺ Uᵀ (A x0_hat − y), x_{t-1} = a x̂0 + V(d₁ Vᵀz + d₂ Vᵀε̂).
    With sv_zero = "auto" (= σ_y / 2), s = 0.05 ≤ 0.15 counts as a null direction."""
    phys, a_mat = dense_problem(sigma)
    eta = 0.85
    ab_prev = 0.8
    step, y = one_step(phys, 0.5, ab_prev)
    got = get_solver("DDNM", eta=eta, sv_zero=sv_zero).step(step, y, phys)
    a, sig = math.sqrt(ab_prev), math.sqrt(1 - ab_prev)
    view = phys.spectral
    s = view.sing(view.V_T(step.x0_hat)).numpy().reshape(-1)
    s = np.where(s > (sigma / 2 if sv_zero == "auto" else 0.0), s, 0.0)
    corr = view.U_T(phys.A(step.x0_hat) - y).numpy()
    zc, ec = view.V_T(step.noise).numpy(), view.V_T(step.eps).numpy()
    lam, d1, d2 = np.ones(5), np.full(5, eta * sig), np.full(5, math.sqrt(1 - eta ** 2) * sig)
    for i in range(5):
        if sigma > 0 and s[i] > 0:
            budget = a * sigma / s[i]
            if sig < budget:
                lam[i], d1[i], d2[i] = s[i] * sig * math.sqrt(1 - eta ** 2) / (a * sigma), eta * sig, 0.0
            else:
                lam[i], d1[i], d2[i] = 1.0, math.sqrt(sig ** 2 - budget ** 2), 0.0
    if sigma > 0:
        assert 0 < lam.min() < 1 and (lam == 1).any()                    # both branches exercised
    shrink = np.where(s > 0, lam * corr / np.where(s > 0, s, 1), 0)
    x0_new = step.x0_hat.numpy().reshape(2, 5) - view.V(torch.from_numpy(shrink)).numpy().reshape(2, 5)
    want = a * x0_new + view.V(torch.from_numpy(d1 * zc + d2 * ec)).numpy().reshape(2, 5)
    np.testing.assert_allclose(got.numpy().reshape(2, 5), want, rtol=1e-10, atol=1e-10)
    if sigma == 0:        # DDNM (eq. 13): x̂0 = A⁺y + (I − A⁺A) x0_hat
        pinv = np.linalg.pinv(a_mat)
        x0 = step.x0_hat.numpy().reshape(2, 5)
        want0 = (pinv @ y.numpy().reshape(2, 3).T).T + ((np.eye(5) - pinv @ a_mat) @ x0.T).T
        np.testing.assert_allclose(x0_new, want0, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["DDRM", "DDNM"])
def test_cutoff_makes_small_singular_directions_ignore_y(name):
    """With the default cutoff (σ_y / 2 = 0.15), the measurement along the left singular vector of
    s = 0.05 has no effect on the step (null space); with sv_zero = 0 it has (the code before)."""
    phys, a = dense_problem(0.3)
    step, y = one_step(phys, 0.5, 0.9)
    view = phys.spectral
    s = view.sing(view.V_T(step.x0_hat)).reshape(-1)
    e = torch.zeros(2, 5, dtype=torch.float64)
    e[:, int(torch.nonzero((s > 0) & (s < 0.1)).flatten()[0])] = 1.0
    y2 = y + view.U(e).reshape(y.shape)                    # move y along that direction only
    assert torch.allclose(view.U_T(y2 - y), e)
    for sv_zero, same in (("auto", True), (0.0, False)):
        solver = get_solver(name, eta=0.85, sv_zero=sv_zero)
        out1, out2 = solver.step(step, y, phys), solver.step(step, y2, phys)
        assert torch.allclose(out1, out2, atol=1e-12) == same


def test_ddnm_plus_equals_ddrm_with_eta_b_1_for_noisy_measurements():
    """With σ_y > 0, the per-coefficient DDNM+ update and DDRM at η_b = 1 are the same map of
    (x0_hat, ε̂, z) (same λ and noise in every branch); on inpainting (V = I) the same noise
    realisation too, so the steps agree exactly."""
    phys = Physics(get_operator("inpainting", mask_type="random", mask_prob_range=(0.5, 0.5)),
                   get_noise("gaussian", sigma=0.2))
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    y = phys.measure(x, numpy_rngs(2, [0, 1], STREAM_OPERATOR), torch_generators(2, [0, 1], 7))
    g = torch.Generator().manual_seed(3)
    for ab, ab_prev in [(0.3, 0.5), (0.9, 0.99), (0.99, 1.0)]:
        x_t, x0, z = (torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
        step = make_step(x_t, x0, torch.zeros_like(x0), 3, ab, ab_prev, noise=z)
        for eta in (0.3, 0.85):
            torch.testing.assert_close(get_solver("DDNM", eta=eta).step(step, y, phys),
                                       get_solver("DDRM", eta=eta, eta_b=1.0).step(step, y, phys))


@pytest.mark.parametrize("name", list_operators(linear=True))
def test_diffpir_prox_matches_dense_solve(name):
    """DiffPIR's data step, z + Aᵀ(ρI + AAᵀ)⁻¹(y − Az) via cov_solve, equals the dense
    (AᵀA + ρI)⁻¹(Aᵀy + ρz) for every registered operator (per-sample kernels / masks), ρ (N,);
    and the full step is Alg. 1's re-noising of it."""
    from test_physics import SHAPE, per_sample_matrices, physics_for, rand
    phys = physics_for(name)
    method = get_solver("DiffPIR", lam=3.0, zeta=0.4)
    z, y = rand(SHAPE, 1), phys.A(rand(SHAPE, 2)) + 0.05 * rand(phys.y_shape(SHAPE), 3)
    rho = torch.tensor([0.02, 0.7], dtype=torch.float64)
    got = method.prox(z, y, rho, phys).reshape(SHAPE[0], -1).numpy()
    mats = per_sample_matrices(phys)
    for i in range(SHAPE[0]):
        a = mats[i]
        want = np.linalg.solve(a.T @ a + rho[i].item() * np.eye(a.shape[1]),
                               a.T @ y[i].reshape(-1).numpy() + rho[i].item() * z[i].reshape(-1).numpy())
        np.testing.assert_allclose(got[i], want, rtol=1e-7, atol=1e-8)
    ab, ab_prev = torch.tensor([0.4, 0.6], dtype=torch.float64), torch.tensor([0.5, 0.7], dtype=torch.float64)
    x_t, noise = rand(SHAPE, 4), rand(SHAPE, 5)
    step = make_step(x_t, z, torch.zeros_like(z), 7, ab, ab_prev, noise=noise)
    out = method.step(step, y, phys)
    rho_t = 3.0 * (0.05 / 2) ** 2 * ab / (1 - ab)                           # λ σ² / σ̄_t², σ on [0, 1]
    x0 = method.prox(z, y, rho_t, phys)
    a, ap = ab.reshape(-1, 1, 1, 1), ab_prev.reshape(-1, 1, 1, 1)
    eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
    want = ap.sqrt() * x0 + (1 - ap).sqrt() * (math.sqrt(0.6) * eps + math.sqrt(0.4) * noise)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["DDRM", "DDNM"])
def test_noiseless_samples_satisfy_Ax_equals_y_and_centre_on_the_posterior(name):
    """Single-Gaussian prior N(m, 2 I) in d = 5 (exact denoiser), noiseless y = A x with 3 of 5
    directions observed, DDIM 50, 400 samples in float64: A x = y to 1e-5 for every sample, and the
    sample mean within 4.5 standard errors of the exact posterior mean A⁺y + (I − A⁺A) m (the prior
    is isotropic, so the unobserved directions keep the prior's mean)."""
    phys, a = dense_problem(0.0)
    m = np.array([0.5, -1.0, 0.0, 2.0, 1.0])
    prior = GaussianMixture([1.0], [m], [2.0])
    n = 400
    y1 = torch.tensor([0.7, -0.4, 0.1], dtype=torch.float64)
    y = y1.reshape(1, 3, 1, 1).expand(n, 3, 1, 1).contiguous()
    phys.draw(None, (n, 5, 1, 1))
    diff = create_sampler(sampler="ddim", timestep_respacing="ddim50", model_var_type="fixedsmall",
                          clip_denoised=False, eta=1.0)
    gens = torch_generators(0, range(n), STREAM_SAMPLER)
    model = GMMEpsilon.from_schedule(prior)
    res = sample(lambda x, t: model(x, t).double(), diff, randn((5, 1, 1), gens).double(), y,
                 get_solver(name), phys, gens, progress=False)
    x = as_vectors(res.x0).double()
    np.testing.assert_allclose((a @ x.numpy().T).T, y1.numpy()[None].repeat(n, 0), rtol=0, atol=1e-5)
    pinv = np.linalg.pinv(a)
    post_mean = pinv @ y1.numpy() + (np.eye(5) - pinv @ a) @ m
    null = np.eye(5) - pinv @ a                                            # posterior covariance 2 (I − A⁺A)
    se = np.sqrt(np.clip(np.diag(2.0 * null), 1e-12, None) / n)
    assert (np.abs(x.mean(0).numpy() - post_mean) <= 4.5 * se + 1e-6).all(), (x.mean(0).numpy() - post_mean) / se


def test_noiseless_inpainting_final_sample_is_consistent():
    """DDRM and DDNM on images (inpainting, 8×8, the test ε-network of test_framework): the final
    sample equals y at every observed pixel (to 1e-5)."""
    from test_framework import Net, SAMPLERS
    phys = Physics(get_operator("inpainting", mask_type="random", mask_prob_range=(0.5, 0.6)), get_noise("clean"))
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    y = phys.measure(x, numpy_rngs(5, [0, 1], STREAM_OPERATOR))
    for name in ("DDRM", "DDNM"):
        gens = torch_generators(9, [0, 1], STREAM_SAMPLER)
        out = sample(Net(), create_sampler(**SAMPLERS["ddim"]), randn((1, 8, 8), gens), y, get_solver(name),
                     phys, gens, progress=False)
        torch.testing.assert_close(phys.A(out.x0), y, rtol=1e-5, atol=1e-5)


def test_parameters_and_refusals():
    """Bad parameters raise one clear error; DDRM / DDNM refuse an operator without a spectral
    view, DiffPIR runs on it (conjugate gradients)."""
    for name in ("DDNM", "DDRM"):
        with pytest.raises(ValueError, match="eta"):
            get_solver(name, eta=1.5)
    with pytest.raises(ValueError, match="zeta"):
        get_solver("DiffPIR", zeta=2.0)
    with pytest.raises(ValueError, match="lam"):
        get_solver("DiffPIR", lam=0.0)
    with pytest.raises(ValueError, match="unknown parameter"):
        get_solver("DDRM", scale=1.0)

    class Pool(LinearOperator):
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 2)

        def adjoint(self, y):
            return torch.nn.functional.interpolate(y, scale_factor=2, mode="nearest") / 4

    big = Physics(Pool(), get_noise("gaussian", sigma=0.05))
    big.draw(None, (1, 3, 64, 64))
    for name in ("DDRM", "DDNM"):
        with pytest.raises(ValueError, match="spectral view"):
            get_solver(name).check(big)
    get_solver("DiffPIR").check(big)
    assert all(not get_solver(n).needs_grad for n in ("DDRM", "DDNM", "DiffPIR"))


@pytest.mark.parametrize("name", ["DDRM", "DDNM", "DiffPIR"])
def test_same_seed_same_result_whatever_the_batch(name):
    """Motion blur with per-image kernels: image i restored in a batch of 3 equals image i alone."""
    from test_framework import Net, SAMPLERS
    from util.seeding import STREAM_NOISE

    def restore(indices):
        phys = Physics(get_operator("motion_blur", kernel_size=5, intensity=0.5), get_noise("gaussian", sigma=0.05))
        x = (torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(4)) * 2 - 1)[indices]
        y = phys.measure(x, numpy_rngs(5, indices, STREAM_OPERATOR), torch_generators(5, indices, STREAM_NOISE))
        gens = torch_generators(9, indices, STREAM_SAMPLER)
        return sample(Net(), create_sampler(**SAMPLERS["ddim"]), randn((1, 8, 8), gens), y, get_solver(name),
                      phys, gens, progress=False).x0

    batch = restore([0, 1, 2])
    for k in range(3):
        torch.testing.assert_close(batch[k], restore([k])[0], rtol=1e-4, atol=1e-4)


def test_gmm_benchmark_method_filter(capsys):
    """benchmarks.gmm --methods: an unknown name fails with exit 2 and lists the valid ones; the
    three methods are in its list, on DDIM 100."""
    from benchmarks import gmm as bench
    assert bench.main(["--methods", "nope"]) == 2
    assert "unknown method(s) nope" in capsys.readouterr().err
    assert {m.solver for m in bench.METHODS if m.samplers == ("DDIM 100",)} >= {"DDRM", "DDNM", "DiffPIR"}


def test_large_dense_operator_has_no_view_and_is_refused():
    """A dense operator on more than DENSE_SVD_MAX_DIM values gives no spectral view (its full SVD
    would not fit in memory), so DDRM refuses it with a clear error instead of allocating d × d."""
    from operators.spectral import DENSE_SVD_MAX_DIM
    d = DENSE_SVD_MAX_DIM + 4
    phys = Physics(get_operator("dense", rows=3, seed=0), get_noise("gaussian", sigma=0.05))
    phys.draw(None, (1, d, 1, 1))
    assert phys.spectral is None
    with pytest.raises(ValueError, match="spectral view"):
        get_solver("DDRM").check(phys)
