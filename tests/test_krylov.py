"""Batched GMRES (operators/krylov.py) against dense solves on random non-symmetric, indefinite
systems, its minimal-residual property, breakdown and errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.krylov import gmres

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _systems(n=3, d=12, seed=0):
    """n random (d, d) matrices with eigenvalues of both signs (non-symmetric, indefinite)."""
    rng = np.random.default_rng(seed)
    mats = rng.standard_normal((n, d, d)) + np.diag(np.linspace(-2, 3, d))
    b = rng.standard_normal((n, d))
    return torch.from_numpy(mats), torch.from_numpy(b)


def test_gmres_with_d_iterations_is_the_dense_solve_of_an_indefinite_nonsymmetric_system():
    mats, b = _systems()
    ev = np.linalg.eigvals(mats.numpy())
    assert (ev.real < 0).any() and (ev.real > 0).any()                    # indefinite
    assert (mats - mats.transpose(1, 2)).norm() > 0.5 * mats.norm()        # far from symmetric
    want = torch.from_numpy(np.linalg.solve(mats.numpy(), b.numpy()[..., None])[..., 0])
    got = gmres(lambda v: torch.einsum("nij,nj->ni", mats, v), b, iterations=12)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)


def test_gmres_k_steps_is_the_least_squares_solution_over_the_krylov_space_for_image_shapes():
    """k < d: v = K c with c = argmin ||b − M K c|| (K = [b, Mb, …, M^{k−1} b], dense lstsq),
    b shaped (N, C, H, W); and the residual does not increase with k."""
    mats, b = _systems(n=2, d=16, seed=3)
    mv = lambda v: torch.einsum("nij,nj->ni", mats, v.reshape(2, 16)).reshape(2, 1, 4, 4)
    res_prev = b.norm(dim=1)
    for k in (1, 2, 5, 9):
        got = gmres(mv, b.reshape(2, 1, 4, 4), iterations=k).reshape(2, 16)
        for i in range(2):
            kry = [b[i]]
            for _ in range(k - 1):
                kry.append(mats[i] @ kry[-1])
            K = torch.stack(kry, 1)
            c = np.linalg.lstsq((mats[i] @ K).numpy(), b[i].numpy(), rcond=None)[0]
            torch.testing.assert_close(got[i], K @ torch.from_numpy(c), rtol=1e-6, atol=1e-8)
        res = (b - torch.einsum("nij,nj->ni", mats, got)).norm(dim=1)
        assert (res <= res_prev + 1e-12).all()
        res_prev = res


def test_gmres_survives_breakdown_and_float32_input():
    """M = 2 I: the Krylov space is exhausted after one step; more iterations keep v = b / 2 (no
    NaN); a float32 b gives a float32 v."""
    b = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    v = gmres(lambda x: 2 * x, b, iterations=4)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    torch.testing.assert_close(v, b / 2, rtol=1e-6, atol=1e-7)


def test_gmres_rejects_bad_iterations():
    with pytest.raises(ValueError, match="iterations"):
        gmres(lambda x: x, torch.ones(1, 2), iterations=0)
    with pytest.raises(ValueError, match="iterations"):
        gmres(lambda x: x, torch.ones(1, 2), iterations=1.5)
