"""TMPD's row-sum variance (solvers/tmpd.py): used as computed by default (the reference's
behaviour, no clamp at σ²), the ``abs_var`` guard never more confident than that, and the
``TMPD-exact`` row is TMPD with ``exact_cov: true``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from guided_diffusion.gmm import GaussianMixture, as_image, as_vectors
from operators import Physics, get_noise, get_operator
from solvers import get_solver

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: A Aᵀ = [[1, -2], [-2, 5]]: row sums (-1, 3), so one diagonal entry of A J Aᵀ is negative.
A = np.array([[1.0, 0.0], [-2.0, 1.0]])
M0, S2, SIGMA = [0.5, -0.3], 2.0, 0.3


def _physics() -> Physics:
    phys = Physics(get_operator("dense", matrix=A, input_shape=(2, 1, 1)), get_noise("gaussian", sigma=SIGMA))
    phys.draw(None, (1, 2, 1, 1))
    return phys


def _guidance(name: str, a: float, **params):
    """(G, x0_hat, c) for the exact denoiser of N(M0, S2 I) at ᾱ = a; J = c I in closed form."""
    prior = GaussianMixture([1.0], [M0], [S2])
    x_t = torch.tensor([[0.7, -1.1], [0.1, 0.4]], dtype=torch.float64)
    xt = as_image(x_t).clone().requires_grad_(True)
    flat = as_vectors(xt)
    x0_hat = (flat - math.sqrt(1 - a) * prior.eps(flat, a)) / math.sqrt(a)
    y = torch.tensor([0.2, -0.5], dtype=torch.float64).reshape(1, 2, 1, 1).expand(2, 2, 1, 1)
    g, _ = get_solver(name, **params).guidance(xt, as_image(x0_hat), y, torch.full((2,), a, dtype=torch.float64),
                                               _physics())
    c = math.sqrt(a) * S2 / (a * S2 + 1 - a)
    return as_vectors(g), x0_hat.detach(), c, y.reshape(2, 2)


@pytest.mark.parametrize("a", [0.05, 0.5, 0.95])
def test_rowsum_variance_is_used_as_computed_and_abs_guard_is_less_confident(a):
    """C_y = σ² + (1−ᾱ)/√ᾱ · c · rowsum(A Aᵀ), negative in its first entry here, is used as it is
    (the reference; the old clamp at σ² would give a different G), and ``abs_var`` divides by
    σ² + |…| >= |C_y|: |v| never larger than the reference's."""
    ratio = (1 - a) / math.sqrt(a)
    g, x0, c, y = _guidance("TMPD", a)
    At = torch.from_numpy(A)
    resid = y - x0 @ At.T
    var = ratio * c * (At @ At.T).sum(1)
    assert var[0] < 0 < var[1]
    v_ref = resid / (SIGMA ** 2 + var)
    torch.testing.assert_close(g, c * v_ref @ At, rtol=1e-10, atol=1e-12)
    v_clamp = resid / (SIGMA ** 2 + var).clamp(min=SIGMA ** 2)
    assert not torch.allclose(g, c * v_clamp @ At, rtol=1e-3, atol=1e-6)
    g_abs, *_ = _guidance("TMPD", a, abs_var=True)
    v_abs = resid / (SIGMA ** 2 + var.abs())
    torch.testing.assert_close(g_abs, c * v_abs @ At, rtol=1e-10, atol=1e-12)
    assert (v_abs.abs() <= v_ref.abs() + 1e-15).all()
    assert (v_abs.abs() < v_clamp.abs()).any()          # the negative entry: less confident than σ² alone


def test_tmpd_exact_row_is_tmpd_with_exact_cov():
    """The registered ``TMPD-exact`` defaults to exact_cov: true and equals TMPD(exact_cov=True),
    here = the exact score (dense A J Aᵀ = c A Aᵀ); it costs m + 1 VJPs (row sum: 2)."""
    a = 0.3
    g_ex, x0, c, y = _guidance("TMPD-exact", a)
    g_tm, *_ = _guidance("TMPD", a, exact_cov=True)
    torch.testing.assert_close(g_ex, g_tm, rtol=0, atol=0)
    At = torch.from_numpy(A)
    cov = SIGMA ** 2 * torch.eye(2, dtype=torch.float64) + (1 - a) / math.sqrt(a) * c * At @ At.T
    v = torch.linalg.solve(cov, (y - x0 @ At.T).T).T
    torch.testing.assert_close(g_ex, c * v @ At, rtol=1e-10, atol=1e-12)
    assert get_solver("TMPD-exact").exact_cov is True and get_solver("TMPD").exact_cov is False
    s = get_solver("TMPD-exact")
    s.guidance(*_args_for_cost())
    assert s.vjps == 3
    s = get_solver("TMPD")
    s.guidance(*_args_for_cost())
    assert s.vjps == 2


def _args_for_cost():
    xt = torch.zeros(1, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    x0 = 0.5 * xt
    return xt, x0, torch.zeros(1, 2, 1, 1, dtype=torch.float64), torch.full((1,), 0.5, dtype=torch.float64), _physics()
