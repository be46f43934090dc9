"""operators.Physics for every registered operator (picked up from the registry): the spectral
view against dense linear algebra (U Σ Vᵀ x = A x, V orthonormal, UᵀU = I on the range, the
singular values equal numpy's), the pseudo-inverse against numpy.linalg.pinv, the conjugate-
gradient cov_solve against the exact one, and measure (the one place y is made)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from operators import LinearOperator, Physics, get_noise, get_operator, list_operators
from util.seeding import STREAM_NOISE, STREAM_OPERATOR, numpy_rngs, torch_generators

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (2, 2, 8, 8)
#: Settings for 8x8 images; an operator not listed is built with its defaults.
SMALL = {
    "gaussian_blur": dict(kernel_size=5, intensity=1.0),
    "motion_blur": dict(kernel_size=5, intensity=0.5),
    "super_resolution": dict(scale_factor=2, degradation="bicubic"),
    "inpainting": dict(mask_type="random", mask_prob_range=(0.4, 0.6)),
    "dense": dict(rows=40, seed=1),
}


def physics_for(name: str, noise: str = "gaussian", **kw) -> Physics:
    noiser = get_noise(noise, sigma=0.05) if noise == "gaussian" else get_noise(noise)
    phys = Physics(get_operator(name, **SMALL.get(name, {})), noiser, **kw)
    phys.draw(numpy_rngs(3, range(SHAPE[0]), STREAM_OPERATOR), SHAPE)
    return phys


def per_sample_matrices(phys: Physics) -> np.ndarray:
    """(N, m, d) float64: sample n's matrix of A (its own kernel / mask)."""
    n, d = SHAPE[0], math.prod(SHAPE[1:])
    basis = torch.eye(d, dtype=torch.float64).reshape(d, 1, *SHAPE[1:]).expand(d, n, *SHAPE[1:])
    cols = torch.func.vmap(phys.A)(basis)                      # (d, N, *y)
    return cols.reshape(d, n, -1).permute(1, 2, 0).numpy()


def rand(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", list_operators(linear=True))
def test_spectral_view_is_an_svd_of_A(name):
    phys = physics_for(name)
    view = phys.spectral
    assert view is not None, f"{name}: no spectral view on {SHAPE} images"
    x = rand(SHAPE)
    z = view.V_T(x)
    s = view.sing(z)
    assert (s >= 0).all()
    y = phys.A(x)
    torch.testing.assert_close(s * z, view.U_T(y), rtol=1e-9, atol=1e-9)            # Σ Vᵀ x = Uᵀ A x
    torch.testing.assert_close(view.U(s * z), y, rtol=1e-9, atol=1e-9)               # U Σ Vᵀ x = A x
    torch.testing.assert_close(view.V(z), x, rtol=1e-9, atol=1e-9)                   # V Vᵀ = I
    torch.testing.assert_close(z.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))   # ‖Vᵀx‖ = ‖x‖
    w = rand(z.shape, 1) * (s > 0)
    torch.testing.assert_close(view.U_T(view.U(w)), w, rtol=1e-9, atol=1e-9)         # UᵀU = I on the range
    torch.testing.assert_close(view.V_T(view.V(w)), w, rtol=1e-9, atol=1e-9)
    mats = per_sample_matrices(phys)
    sb = torch.broadcast_to(s, z.shape).reshape(SHAPE[0], -1).numpy()
    for i in range(SHAPE[0]):
        want = np.sort(np.linalg.svd(mats[i], compute_uv=False))[::-1]
        got = np.sort(sb[i])[::-1][: len(want)]
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)
        assert np.all(np.sort(sb[i])[::-1][len(want):] == 0)


@pytest.mark.parametrize("name", list_operators(linear=True))
def test_pseudo_inverse_matches_numpy(name):
    phys = physics_for(name)
    y = phys.A(rand(SHAPE, 2)) + 0.01 * rand(phys.y_shape(SHAPE), 3)
    got = phys.A_pinv(y).reshape(SHAPE[0], -1).numpy()
    mats = per_sample_matrices(phys)
    yy = y.reshape(SHAPE[0], -1).numpy()
    for i in range(SHAPE[0]):
        np.testing.assert_allclose(got[i], np.linalg.pinv(mats[i], rcond=1e-10) @ yy[i], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("sigma2", [0.05 ** 2, 0.0])
@pytest.mark.parametrize("name", list_operators(linear=True))
def test_cg_cov_solve_matches_exact(name, sigma2):
    exact = physics_for(name)
    cg = physics_for(name, use_cg=True)
    assert exact.has_exact_cov_solve and not cg.has_exact_cov_solve
    r2 = torch.tensor([0.3, 0.8], dtype=torch.float64)
    v = exact.A(rand(SHAPE, 4))                                      # in the range: also fine for σ² = 0
    want = exact.cov_solve(v, r2, sigma2)
    got = cg.cov_solve(v, r2, sigma2, tol=1e-12, max_iter=2000)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * want.abs().max().item())


def test_measure_is_the_operator_plus_noise_and_zero_where_unobserved():
    phys = physics_for("inpainting")
    x = rand(SHAPE, 5).clamp(-1, 1)
    y = phys.measure(x, numpy_rngs(3, range(2), STREAM_OPERATOR), torch_generators(3, range(2), STREAM_NOISE))
    noise = get_noise("gaussian", sigma=0.05)(phys.A(x), torch_generators(3, range(2), STREAM_NOISE))
    mask = torch.from_numpy(np.stack([phys.params(i) for i in range(2)]))[:, None]
    torch.testing.assert_close(y, noise * mask)
    assert (y[(mask == 0).expand_as(y)] == 0).all()
    blur = physics_for("gaussian_blur")
    yb = blur.measure(x, None, torch_generators(3, range(2), STREAM_NOISE))
    torch.testing.assert_close(yb, get_noise("gaussian", sigma=0.05)(blur.A(x), torch_generators(3, range(2),
                                                                                                  STREAM_NOISE)))
    clean = physics_for("noise", noise="clean")
    assert clean.sigma_n == 0.0 and clean.noise_name == "clean"
    torch.testing.assert_close(clean.measure(x), x)


def test_state_dict_round_trip_keeps_the_view():
    a = physics_for("motion_blur")
    b = Physics(get_operator("motion_blur", **SMALL["motion_blur"]), get_noise("gaussian", sigma=0.05))
    b.load_state_dict(a.state_dict())
    x = rand(SHAPE)
    torch.testing.assert_close(b.spectral.V_T(x), a.spectral.V_T(x))
    torch.testing.assert_close(b.A(x), a.A(x))


class _NoView(LinearOperator):
    """A deterministic operator with only forward / adjoint (2x2 average pooling), not registered."""

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 2)

    def adjoint(self, y):
        return torch.nn.functional.interpolate(y, scale_factor=2, mode="nearest") / 4

    def y_shape(self, x_shape):
        n, c, h, w = x_shape
        return n, c, h // 2, w // 2


def test_capabilities_not_names():
    assert physics_for("inpainting").is_pixel_mask and not physics_for("noise").is_pixel_mask
    small = Physics(_NoView(), None)
    small.draw(None, (1, 1, 8, 8))                      # no own view, small: dense SVD fallback
    assert small.spectral is not None and not small.has_exact_cov_solve and small.sigma_n == 0.0
    x = rand((1, 1, 8, 8))
    torch.testing.assert_close(small.A(small.A_pinv(small.A(x))), small.A(x))
    big = Physics(_NoView(), None)
    big.draw(None, (1, 3, 64, 64))                      # 12288 > 4096 values: no view
    assert big.spectral is None
    with pytest.raises(ValueError, match="spectral view"):
        big.A_pinv(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("s,degradation,size", [(4, "gaussian", 16), (2, "avg_pool", 12), (3, "bicubic", 12)])
def test_super_resolution_view_other_factors(s, degradation, size):
    """The polyphase view for other factors and kernels (aliases, self-paired frequencies, odd
    low-res sizes) against the dense SVD."""
    phys = Physics(get_operator("super_resolution", scale_factor=s, degradation=degradation), None)
    shape = (1, 1, size, size)
    phys.draw(None, shape)
    view = phys.spectral
    x = rand(shape)
    z = view.V_T(x)
    torch.testing.assert_close(view.U(view.sing(z) * z), phys.A(x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(view.V(z), x, rtol=1e-9, atol=1e-9)
    d = size * size
    mat = phys.A(torch.eye(d, dtype=torch.float64).reshape(d, 1, size, size)).reshape(d, -1).T.numpy()
    want = np.sort(np.linalg.svd(mat, compute_uv=False))[::-1]
    got = np.sort(view.sing(z).flatten().numpy())[::-1]
    np.testing.assert_allclose(got[: len(want)], want, rtol=1e-7, atol=1e-9)
    assert np.all(got[len(want):] == 0)
