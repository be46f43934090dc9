"""TMPD, Tweedie moment projected diffusions (Boys, Girolami, Pidstrigach, Reich, Mosca &
Akyildiz, "Tweedie Moment Projected Diffusions for Inverse Problems", TMLR 2024; reference code
bboys/tmpd, diffusionjax): the likelihood p(y | x_t) of the Gaussian projection of p(x_0 | x_t)
with Tweedie's first and second moments, the covariance taken from the network's Jacobian."""
from __future__ import annotations

from typing import Any

import torch

from solvers.base import Param, compute_dtype, per_sample, register_solver
from solvers.pigdm import PiGDM

#: σ_n is floored at this value so that the covariance stays invertible for noiseless
#: measurements (numerical guard, as CoDPS+'s).
SIGMA_FLOOR = 1e-5
#: ``exact_cov`` builds the m × m measurement covariance with m vector-Jacobian products; it is
#: refused above this many measurements (use the row-sum approximation).
MAX_EXACT_M = 1024
#: ``exact_cov``: columns of A Jᵀ Aᵀ computed per batched backward pass (``is_grads_batched``);
#: a speed / memory trade-off only, the result does not depend on it.
EXACT_CHUNK = 32


@register_solver("TMPD", "tmpd")
class TMPD(PiGDM):
    """TMPD step (Boys et al. 2024, §3, eqs. 9-11 and Algorithm 1), VP form, on the loop's sampler.
    The update x_{t-1} = x' + ζ w_t g is ΠGDM's (:meth:`PiGDM.step`, inherited); only the
    likelihood-score estimate g (:meth:`guidance`) differs.

    Tweedie's moments of p(x_0 | x_t) (their eq. 6-7): the mean x0_hat and

        Cov[x_0 | x_t] = (1−ᾱ_t)/√ᾱ_t · J,     J = ∂x0_hat/∂x_t,

    so the moment-projected likelihood is p(y | x_t) ≈ N(y; A x0_hat, C_y) with
    C_y = σ² I + (1−ᾱ_t)/√ᾱ_t · A J Aᵀ, and its score, with C_y held constant (the paper's eq. 11),

        G = Jᵀ Aᵀ C_y⁻¹ (y − A x0_hat)                        (one vector-Jacobian product)
        x_{t-1} = x' + ζ · w_t · G

    with w_t the sampler's likelihood-score weight (``step.weight``, as ΠGDM and ``scale: auto``;
    ζ = 1 is the paper's posterior score ∇ log p_t(x_t) + G on either sampler).

    C_y two ways:
        ``exact_cov: true``: A J Aᵀ built column by column from m VJPs (A Jᵀ Aᵀ e_k, symmetrised:
            J is symmetric for an exact denoiser) and solved densely per sample — the paper's
            exact TMPD for small problems (the Gaussian-mixture benchmark's dense operator);
            m + 1 VJPs per step, refused for m > 1024.
        ``exact_cov: false`` (default; the paper's image variant): A J Aᵀ ≈ diag(A Jᵀ Aᵀ 1), the
            row sums of A J Aᵀ on the diagonal; C_y = σ² + (1−ᾱ_t)/√ᾱ_t · rowsum is diagonal: two
            VJPs. As in the authors' code and azula's ``TMPDenoiser``, C_y is used as it is, even
            where a row sum is negative (with this prior, on 94–99 % of the entries for 2 of 4 tune
            digits at t = 900, benchmarks/results/jacobian_stats.csv: the network's Jacobian is
            indefinite and far from symmetric at high noise).

    The variance guard (``abs_var``, row-sum variant only): ``false`` (default, the reference's
    behaviour) divides by C_y as computed; ``true`` divides by σ² + |(1−ᾱ_t)/√ᾱ_t · rowsum|, which
    is >= σ² and >= |C_y|, i.e. never more confident than the reference where C_y > 0, and a
    non-positive variance becomes a *larger* one, never σ². (An earlier version clamped C_y at
    σ² from below — in neither reference, it turned every negative row sum into the most
    confident variance possible and made TMPD the worst method on the board; it is gone.)

    Against CoDPS+ ("Gaussian is All You Need"): CoDPS+ takes Cov[x_0 | x_t] = r² I from an
    assumed Gaussian x_0 ~ N(x0_hat, λ⁻¹ I) (r² = 1/(ᾱ/(1−ᾱ) + λ)) and J = ∂E/∂x_t a scalar of
    ᾱ and λ, so it never differentiates the network; TMPD takes both from the network's actual
    Jacobian. For a Gaussian prior N(m, λ⁻¹ I) the two are equal (J = √ᾱ/(λ(1−ᾱ)+ᾱ) I, and
    (1−ᾱ)/√ᾱ · J = r² I), i.e. TMPD with ``exact_cov`` = CoDPS+ ``scale: auto`` there; they
    differ wherever the prior is not one isotropic Gaussian (a mixture: J is large between
    modes and small inside one), where TMPD's covariance follows the local shape of the prior.
    ΠGDM is the same formula with Cov = (1−ᾱ) I.

    Parameters:
        scale (float >= 0, default 1.0): ζ.
        exact_cov (bool, default false): dense A J Aᵀ (small m) or the row-sum diagonal.
        abs_var (bool, default false = the reference): the variance guard above.

    Cost per step: 1 network call and 2 VJPs (row sum), or m + 1 VJPs (``exact_cov``; the
    registered ``TMPD-exact`` is this class with ``exact_cov: true`` by default, its own
    leaderboard row); :attr:`vjps` counts them.

    Reads ``step.x_t`` (requires grad), ``step.x0_hat`` (graph kept: ``needs_grad = True``),
    ``step.alpha_bar``, ``step.weight``, ``step.proposal``; frees the graph; sets ``step.residual``.

    Raises:
        ValueError: (check) a noise model without a real sigma >= 0, or ``exact_cov`` with more
            than 1024 measurements; (step) no graph from x_t to x0_hat.
    """

    needs_grad = True
    needs_linear = False       # a nonlinear A is linearised at x0_hat (physics.linearize), as ΠGDM's
    params = {
        "scale": Param(1.0, "nonneg", "guidance weight ζ (1 = the sampler's exact likelihood-score weight)"),
        "exact_cov": Param(False, "bool", "dense A J Aᵀ from m VJPs (small m) instead of the row-sum diagonal"),
        "abs_var": Param(False, "bool", "row-sum C_y = σ² + |ratio·rowsum| (false: as computed, the reference's)"),
    }
    #: vector-Jacobian products of the last :meth:`guidance` call, per image (cost accounting).
    vjps: int = 0

    def check(self, physics: Any) -> None:
        """Needs σ_n (real >= 0, as ΠGDM); ``exact_cov`` needs at most 1024 measurements."""
        super().check(physics)
        if self.exact_cov and physics.x_shape is not None:
            m = 1
            for s in physics.y_shape((1,) + tuple(physics.x_shape[1:]))[1:]:
                m *= int(s)
            if m > MAX_EXACT_M:
                raise ValueError(f"TMPD exact_cov needs at most {MAX_EXACT_M} measurements, this operator has {m}; "
                                 "use exact_cov: false (the row-sum approximation)")

    def guidance(self, x_t: torch.Tensor, x0_hat: torch.Tensor, y: torch.Tensor, alpha_bar: torch.Tensor,
                 physics: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(G (N, C, H, W), ||y − A x0_hat|| (N,)); frees the graph. Raises ValueError without a
        graph from x_t to x0_hat."""
        vjp = self.network_vjp(x_t, x0_hat)            # checks the graph
        dtype = compute_dtype(x_t)
        n = x_t.shape[0]

        with torch.no_grad():
            x0 = x0_hat.detach().to(dtype)
            resid = y.detach().to(dtype) - physics.A(x0).to(dtype)
            ratio = (1.0 - alpha_bar.to(device=x0.device, dtype=dtype)) / alpha_bar.to(device=x0.device,
                                                                                       dtype=dtype).sqrt()
            sigma2 = max(physics.sigma_n, SIGMA_FLOOR) ** 2
            lin = physics.linearize(x0)     # itself for a linear A; else A linearised at x0_hat (J_A by JVP / VJP)
        if self.exact_cov:
            m = resid[0].numel()
            cols = []
            for start in range(0, m, EXACT_CHUNK):              # EXACT_CHUNK VJPs batched per backward
                ks = range(start, min(start + EXACT_CHUNK, m))
                us = []
                for k in ks:
                    e = torch.zeros(n, m, dtype=dtype, device=x0.device)
                    e[:, k] = 1.0
                    us.append(lin.A_T(e.reshape(resid.shape)).to(x0_hat.dtype))
                (gs,) = torch.autograd.grad(x0_hat, x_t, grad_outputs=torch.stack(us), retain_graph=True,
                                            is_grads_batched=True)
                with torch.no_grad():
                    cols += [lin.A(gs[j].to(dtype)).to(dtype).reshape(n, m) for j in range(len(us))]
            with torch.no_grad():
                ajat = torch.stack(cols, dim=2)                       # (N, m, m): column k = A Jᵀ Aᵀ e_k
                ajat = 0.5 * (ajat + ajat.transpose(1, 2))
                cov = sigma2 * torch.eye(m, dtype=dtype, device=x0.device) + ratio.reshape(n, 1, 1) * ajat
                v = torch.linalg.solve(cov, resid.reshape(n, m, 1)).reshape(resid.shape)
        else:
            u = lin.A_T(torch.ones_like(resid)).to(dtype)
            with torch.no_grad():
                rowsum = lin.A(vjp(u, True)).to(dtype)              # A Jᵀ Aᵀ 1, measurement shaped
                var_ax = per_sample(ratio, rowsum) * rowsum
                cy = sigma2 + (var_ax.abs() if self.abs_var else var_ax)
                v = resid / cy
        g = vjp(lin.A_T(v).to(dtype), False)
        self.vjps = (resid[0].numel() if self.exact_cov else 1) + 1
        return g, resid.flatten(1).norm(dim=1)



@register_solver("TMPD-exact", "tmpd_exact")
class TMPDExact(TMPD):
    """TMPD with the exact measurement covariance by default (``exact_cov: true``: A J Aᵀ from m
    VJPs per step, solved densely; m <= 1024) — registered under its own name so that the
    leaderboard and the tuner treat it as a method of its own, with its own cost (m + 1 VJPs per
    step against the row-sum variant's 2). Everything else is :class:`TMPD`'s."""

    params = {**TMPD.params,
              "exact_cov": Param(True, "bool", "dense A J Aᵀ from m VJPs (this row's default) or the row-sum diagonal")}
