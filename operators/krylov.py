"""Batched Krylov solvers for linear systems given only as a matrix-vector product (each product
can cost a vector-Jacobian product through the network, so the iteration count is the cost).

:func:`gmres` solves M v = b for a general square M (non-symmetric, indefinite allowed), one
independent system per sample of the batch; MMPS (solvers/mmps.py) uses it on
σ_n² I + (1−ᾱ)/√ᾱ · A Jᵀ Aᵀ, whose Jacobian part is neither symmetric nor definite at high noise.
"""
from __future__ import annotations

from typing import Callable

import torch


def gmres(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iterations: int,
          dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """k = ``iterations`` steps of GMRES from v_0 = 0 (Saad & Schultz 1986; Saad, "Iterative
    Methods for Sparse Linear Systems", 2nd ed., Algorithm 6.9): the v in the Krylov space
    K_k(M, b) = span{b, M b, …, M^{k−1} b} minimising ||b − M v||, per sample.

    Arnoldi with modified Gram-Schmidt builds an orthonormal basis Q_k of K_k and the
    (k+1) × k Hessenberg H_k with M Q_k = Q_{k+1} H_k; Givens rotations reduce H_k to an upper
    triangular R_k and β e_1 (β = ||b||) to g, and v = Q_k R_k⁻¹ g. Unlike conjugate gradients it
    needs neither symmetry nor definiteness of M: the residual norm never increases with k and
    is 0 after at most dim(b) steps (exact arithmetic) for any invertible M.

    Exactly k products are made (no early stop: the cost is fixed and there is no host-device
    synchronisation). A breakdown (the Krylov space is exhausted, ||M q_j − …|| = 0: v is then
    already exact) is survived: the next basis vector is 0 and R_k gets ε on its diagonal
    (ε = the working dtype's machine epsilon), so the extra coefficients are 0.

    Args:
        matvec: v (N, *S) in ``b``'s dtype -> M v (N, *S); row n of the batch is sample n's
            system (M may differ per sample but must not mix samples).
        b: (N, *S) right-hand sides, any trailing shape (an image (N, C, H, W) or a vector).
        iterations: k >= 1, the number of matvec calls.
        dtype: working dtype of the basis, the Hessenberg matrix and the rotations (float64
            default, whatever b's dtype).

    Returns:
        v: (N, *S) in ``b``'s dtype.

    Raises:
        ValueError: ``iterations`` not an integer >= 1, or b without a batch dimension.
    """
    if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 1:
        raise ValueError(f"gmres: iterations must be an integer >= 1, got {iterations!r}")
    if b.dim() < 1:
        raise ValueError("gmres: b needs a batch dimension (N, ...)")
    k = int(iterations)
    n, shape = b.shape[0], b.shape
    eps = torch.finfo(dtype).eps
    r = b.reshape(n, -1).to(dtype)
    beta = r.norm(dim=1)                                                  # (N,)
    q = [r / beta.clamp(min=eps)[:, None]]
    h = torch.zeros(n, k + 1, k, dtype=dtype, device=b.device)           # Hessenberg, then R in its top k rows
    cs = torch.zeros(n, k, dtype=dtype, device=b.device)
    sn = torch.zeros(n, k, dtype=dtype, device=b.device)
    g = torch.zeros(n, k + 1, dtype=dtype, device=b.device)
    g[:, 0] = beta
    for j in range(k):
        w = matvec(q[j].reshape(shape).to(b.dtype)).reshape(n, -1).to(dtype)
        for i in range(j + 1):                                           # modified Gram-Schmidt
            h[:, i, j] = (w * q[i]).sum(1)
            w = w - h[:, i, j, None] * q[i]
        h[:, j + 1, j] = w.norm(dim=1)
        q.append(w / h[:, j + 1, j].clamp(min=eps)[:, None])
        for i in range(j):                                               # previous rotations on column j
            a, c = h[:, i, j].clone(), h[:, i + 1, j].clone()
            h[:, i, j] = cs[:, i] * a + sn[:, i] * c
            h[:, i + 1, j] = -sn[:, i] * a + cs[:, i] * c
        a, c = h[:, j, j].clone(), h[:, j + 1, j].clone()
        rho = torch.sqrt(a * a + c * c).clamp(min=eps)
        cs[:, j], sn[:, j] = a / rho, c / rho
        h[:, j, j], h[:, j + 1, j] = cs[:, j] * a + sn[:, j] * c, 0.0
        g[:, j + 1] = -sn[:, j] * g[:, j]
        g[:, j] = cs[:, j] * g[:, j]
    rk = h[:, :k, :k] + eps * torch.eye(k, dtype=dtype, device=b.device)
    coef = torch.linalg.solve_triangular(rk, g[:, :k, None], upper=True)[..., 0]     # (N, k)
    v = torch.einsum("nk,knd->nd", coef, torch.stack(q[:k]))
    return v.reshape(shape).to(b.dtype)
