"""ΠGDM, pseudoinverse-guided diffusion (Song, Vahdat, Mardani & Kautz, "Pseudoinverse-Guided
Diffusion Models for Inverse Problems", ICLR 2023), VP form: the likelihood score of a Gaussian
x_0 | x_t ~ N(x0_hat, r_t² I) with r_t² = 1 − ᾱ_t, pulled back through the network by one
vector-Jacobian product."""
from __future__ import annotations

from typing import Any, Callable

import torch

from solvers.base import Param, Solver, check_sigma, compute_dtype, per_sample, register_solver


@register_solver("PiGDM", "pgdm")
class PiGDM(Solver):
    """ΠGDM step (Song et al. 2023, §3: the pseudoinverse guidance), VP form:

        r_t² = 1 − ᾱ_t,     v = (r_t² A Aᵀ + σ_y² I)⁻¹ (y − A x0_hat)          (``physics.cov_solve``)
        g    = (vᵀ A ∂x0_hat/∂x_t)ᵀ                                          (one VJP through the network)
        x_{t-1} = x' + ζ · w_t · g

    g approximates ∇_{x_t} log p(y | x_t) (ΠGDM's p(y | x_t) ≈ N(A x0_hat, r_t² A Aᵀ + σ_y² I),
    with the covariance held constant), and w_t is the sampler's weight that turns a likelihood
    score into the conditional-score proposal (``step.weight``: β_t/√α_t for DDPM, the DDIM
    weight for DDIM; derivation in :mod:`solvers.codps`): ζ = 1 is the same as replacing the
    network's ε̂ by ε̂ − √(1 − ᾱ_t) g, ΠGDM's guided score, on either sampler.

    The authors' public implementation (NVlabs/RED-diff ``algos/pgdm.py`` @ 66482f2, noiseless:
    it uses A⁺ and ignores σ_y) weights the guidance differently. With its default ``awd: true``
    it adds ``grad_term_weight`` · √ᾱ_{t-1} √ᾱ_t · Jᵀ A⁺(y − A x0_hat) to the DDIM proposal;
    ``reference_weight: true`` does that (ζ = ``grad_term_weight``), with the noisy ΠGDM solve
    in place of A⁺ (at σ_y = 0 the two are equal: r_t² Aᵀ(r_t² A Aᵀ)⁻¹ = A⁺):

        x_{t-1} = x' + ζ · √ᾱ_{t-1} √ᾱ_t · r_t² · g                      (``reference_weight``)

    Its ``awd: false`` branch is this class's default form times ᾱ_t at σ_y = 0 (ζ = ᾱ_t here).
    Checked against that code on identical inputs (tests/test_ref_pigdm.py, 1e-5): the reference
    does not clip x0_hat (our diffusion configs' ``clip_denoised: true`` does; the test sets it
    false) and starts from √ᾱ_T A⁺y + √(1−ᾱ_T) z, where ours starts from z (ᾱ_T ≈ 4e-5).

    Parameters:
        scale (float >= 0, default 1.0): the guidance weight ζ.
        reference_weight (bool, default false): the reference code's weight √ᾱ_{t-1} √ᾱ_t r_t²
            in place of w_t (above); false is ΠGDM's guided score with the sampler's weight.

    Reads ``step.x_t`` (requires grad), ``step.x0_hat`` (with the graph: ``needs_grad = True``),
    ``step.alpha_bar``, ``step.weight`` and ``step.proposal``; works on images (any operator,
    exact or CG ``cov_solve``) as on vectors (the ``dense`` operator). The graph is freed; sets
    ``step.residual``.

    Raises:
        ValueError: (check) a noise model without a real ``sigma >= 0``; (step) no graph from
            x_t to x0_hat.
    """

    needs_grad = True
    needs_linear = False       # a nonlinear A is linearised at x0_hat (physics.linearize)
    params = {"scale": Param(1.0, "nonneg", "guidance weight ζ (1 = the sampler's exact likelihood-score weight)"),
              "reference_weight": Param(False, "bool", "weight √ᾱ_{t-1}√ᾱ_t r_t² of NVlabs/RED-diff algos/pgdm.py "
                                        "(awd) in place of the sampler's w_t", neutral=True)}

    def check(self, physics: Any) -> None:
        """Needs a physics whose noise model has a real σ_y >= 0."""
        super().check(physics)
        check_sigma(physics, self.name)

    def network_vjp(self, x_t: torch.Tensor, x0_hat: torch.Tensor) -> Callable[[torch.Tensor, bool], torch.Tensor]:
        """``vjp(v, keep)`` = (∂x0_hat/∂x_t)ᵀ v, (N, C, H, W) in x_t's computation dtype, one
        backward pass through the network (``keep``: retain the graph for another). Shared by
        ΠGDM, TMPD and MMPS. Raises ValueError without a graph from x_t to x0_hat."""
        if not x_t.requires_grad or not x0_hat.requires_grad:
            raise ValueError(f"{self.name} needs x_t with requires_grad=True and x0_hat computed from it with "
                             "the autograd graph kept (solver.needs_grad is True)")
        dtype = compute_dtype(x_t)

        def vjp(v: torch.Tensor, keep: bool) -> torch.Tensor:
            (g,) = torch.autograd.grad(x0_hat, x_t, grad_outputs=v.to(x0_hat.dtype), retain_graph=keep)
            return g.to(dtype)
        return vjp

    def guidance(self, x_t: torch.Tensor, x0_hat: torch.Tensor, y: torch.Tensor, alpha_bar: torch.Tensor,
                 physics: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(g (N, C, H, W), residual (N,)) — the ΠGDM likelihood-score estimate and ||y − A x0_hat||;
        frees the graph. Raises ValueError without a graph from x_t to x0_hat."""
        self.network_vjp(x_t, x0_hat)                  # checks the graph
        dtype = compute_dtype(x_t)
        with torch.no_grad():
            x0 = x0_hat.detach().to(dtype)
            diff = y.detach().to(dtype) - physics.A(x0)
            r2 = 1.0 - alpha_bar.to(device=x0.device, dtype=dtype)
            lin = physics.linearize(x0)          # itself for a linear A; else J_A(x0_hat), CG solves
            v = lin.cov_solve(diff, r2, physics.sigma_n ** 2)
            direction = lin.A_T(v).to(x0_hat.dtype)
        (g,) = torch.autograd.grad(x0_hat, x_t, grad_outputs=direction)
        return g.to(dtype), diff.flatten(1).norm(dim=1)

    def step(self, step: Any, y: torch.Tensor, physics: Any) -> torch.Tensor:
        """One ΠGDM step: x_{t-1} (N, C, H, W), detached."""
        x_prev = step.proposal
        dtype = compute_dtype(x_prev)
        xp = x_prev.detach().to(dtype)
        if getattr(self, "reference_weight", False):     # subclasses (TMPD) without the parameter: False
            a, a_prev = (step.alpha_bar.to(device=xp.device, dtype=dtype),
                         step.alpha_bar_prev.to(device=xp.device, dtype=dtype))
            w = per_sample(a_prev.sqrt() * a.sqrt() * (1.0 - a), xp)
        else:
            w = per_sample(step.weight.to(device=xp.device, dtype=dtype), xp)
        g, residual = self.guidance(step.x_t, step.x0_hat, y, step.alpha_bar, physics)
        step.residual = residual.detach()
        x_next = xp + self.scale * w * g.to(dtype)
        return x_next.to(x_prev.dtype)
