"""RED-diff (Mardani, Song, Kautz & Vahdat, "A Variational Perspective on Solving Inverse Problems
with Diffusion Models", ICLR 2024; reference code NVlabs/RED-diff ``algos/reddiff.py``): the
posterior is approximated by a point mass at μ, optimised with Adam over the reverse time steps
on the data term plus a denoising-score regulariser weighted by the inverse SNR, with no
backpropagation through the network."""
from __future__ import annotations

import math
from typing import Any

import torch

from solvers.base import Param, Solver, compute_dtype, per_sample, register_solver

#: Adam's β of the reference code (``betas=(0.9, 0.99)``, weight decay 0).
ADAM_BETAS = (0.9, 0.99)


@register_solver("RED-diff", "reddiff")
class REDDiff(Solver):
    """RED-diff (Mardani et al. 2024, Algorithm 1; eqs. 8-10): variational sampling with
    q(x_0 | y) = N(μ, σ_x0² I), σ_x0 → 0 (the reference code's default, and the only case here).

    Objective at step t (eq. 9, in the reference code's normalisation: means over the entries of
    y and of x instead of sums, so that the weights do not depend on the image size):

        ℓ_t(μ) = v/(2 m) ||y − A μ||²  +  λ_t/d · sg(ε̂(x_t, t) − ε)ᵀ μ,
        x_t = √ᾱ_t μ + √(1−ᾱ_t) ε,   ε ~ N(0, I),   λ_t = λ · ((1−ᾱ_t)/ᾱ_t)^(p/2)

    (m, d the sizes of y and x; sg = stop-gradient: the regulariser's gradient is
    λ_t (ε̂ − ε)/d, eq. 10, the network is never differentiated; p = ``snr_power``: 1 is the
    paper's "linear" inverse-SNR weight √(1−ᾱ)/√ᾱ, 0.5 "sqrt", 2 "square", 0 "const").
    One Adam step (``lr``, β = (0.9, 0.99)) on μ per reverse step, t = T−1 … 0; the output is μ.

    How it runs in the loop: the method keeps μ, Adam's moments and the ε of the current x_t as
    state across the steps of one run (reset at step ``i == 0``; one state per batch, and since
    the loss is a sum of per-sample losses and Adam acts per entry, samples do not interact).
    The loop's network call at step i is ε̂(x_t) for x_t = √ᾱ_t μ + √(1−ᾱ_t) ε, because the method
    returned exactly that x_t at step i−1 (with fresh ε from ``step.randn``, so seeded per image):
    one NFE per step, no extra calls. At i = 0 the loop's x_T is used as is, with μ_0 =
    Aᵀ(σ_n² I + A Aᵀ)⁻¹ y (A⁺ y for σ_n = 0, the reference code's ``H_pinv(y)``; the σ_n² term
    regularises the pseudo-inverse of ill-conditioned blurs) and ε := (x_T − √ᾱ_T μ_0)/√(1−ᾱ_T).
    The last step returns μ (ᾱ_{-1} = 1).

    Checked against the reference code (NVlabs/RED-diff ``algos/reddiff.py`` @ 66482f2, run on
    identical inputs: tests/test_ref_reddiff.py, 1e-5). Deliberate
    differences, each with the reference's value available:
    - the output: the reference's ``main.py`` saves ``x0_pred``, i.e. μ *before* the last Adam
      step; ours returns μ after it (Algorithm 1 returns the optimised μ).
      ``reference_output: true`` returns the reference's.
    - the start: μ_0 = Aᵀ(σ_n² I + A Aᵀ)⁻¹ y here, A⁺ y there (``regularised_init: false``; the
      same at σ_n = 0).
    - the loss: the reference averages over the whole batch (so its Adam step, through Adam's
      ε = 1e-8, depends slightly on the batch size); ours averages per image (results do not depend
      on the batch). The test runs the reference one image at a time.
    - ε̂: ours is the loop's ``step.eps``, recomputed from the clipped x0_hat when the diffusion
      config clips (``clip_denoised: true``, our MNIST configs); the reference uses the network's
      raw ε̂ (the test runs unclipped).
    - x_T: ours is the loop's N(0, I) draw with ε defined from it (above); the reference draws
      ε ~ N(0, I) for x_T = √ᾱ_T μ_0 + √(1−ᾱ_T) ε (ᾱ_T ≈ 4e-5: the two differ by 0.006 μ_0).

    RED-diff is an optimiser, not a sampler: on a multi-modal posterior μ settles in one mode
    (chosen by the noise) and the spread around it is lost.

    Parameters (reference code names):
        lr (float > 0, default 0.1): Adam's learning rate (``lr``).
        grad_term_weight (float >= 0, default 0.25): λ (``grad_term_weight``).
        obs_weight (float >= 0, default 1.0): v (``obs_weight``).
        snr_power (float >= 0, default 1.0): p of the weight ((1−ᾱ)/ᾱ)^(p/2)
            (``denoise_term_weight``: linear = 1).
        reference_output (bool, default false): return μ before the last Adam step (the
            reference code's saved output) instead of after it.
        regularised_init (bool, default true): μ_0 = Aᵀ(σ_n² I + A Aᵀ)⁻¹ y; false: A⁺ y (the
            reference's ``H_pinv(y)``; computed as Aᵀ(A Aᵀ)⁻¹ y).

    Reads ``step.i``, ``step.x_t`` (i = 0), ``step.eps``, ``step.alpha_bar``,
    ``step.alpha_bar_prev``; draws ``step.randn()``; sets ``step.residual`` (||y − A μ||).

    Raises:
        ValueError: (step) a step with i > 0 but no state of this run, or a batch of another
            shape than the state's (a run interleaved with another).
    """

    needs_grad = False
    needs_linear = False       # the data term's gradient is A's VJP; μ_0 the physics' rough inverse
    params = {
        "lr": Param(0.1, "positive", "Adam learning rate on μ"),
        "grad_term_weight": Param(0.25, "nonneg", "λ, weight of the denoising regulariser"),
        "obs_weight": Param(1.0, "nonneg", "v, weight of the data term"),
        "snr_power": Param(1.0, "nonneg", "p: regulariser weight λ·((1−ᾱ)/ᾱ)^(p/2) (1 = the paper's linear 1/SNR)"),
        "reference_output": Param(False, "bool", "return μ before the last Adam step (NVlabs/RED-diff's saved output)", neutral=True),
        "regularised_init": Param(True, "bool", "μ_0 = Aᵀ(σ_n² I + AAᵀ)⁻¹ y (false: A⁺ y, the reference's)", neutral=True),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._state: dict[str, Any] | None = None

    def reset(self) -> None:
        """Forget μ, Adam's moments and ε (done automatically at step i = 0)."""
        self._state = None

    def init_mu(self, y: torch.Tensor, physics: Any, dtype: torch.dtype) -> torch.Tensor:
        """μ_0 = Aᵀ (σ_n² I + A Aᵀ)⁻¹ y for a linear A (σ_n² → 0 with ``regularised_init: false``),
        else the operator's rough inverse (the reference code's ``H_pinv``: ``physics.pinv_init``),
        (N, C, H, W)."""
        y = y.detach().to(dtype)
        if not getattr(physics, "is_linear", True):
            return physics.pinv_init(y).to(dtype)
        sigma2 = physics.sigma_n ** 2 if self.regularised_init else 0.0
        return physics.A_T(physics.cov_solve(y, 1.0, sigma2)).to(dtype)

    def weight(self, alpha_bar: torch.Tensor) -> torch.Tensor:
        """λ_t = λ ((1−ᾱ)/ᾱ)^(p/2), same shape as ``alpha_bar``."""
        return self.grad_term_weight * ((1.0 - alpha_bar) / alpha_bar) ** (self.snr_power / 2)

    def gradient(self, mu: torch.Tensor, eps_hat: torch.Tensor, eps: torch.Tensor, y: torch.Tensor,
                 alpha_bar: torch.Tensor, physics: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(∂ℓ_t/∂μ (N, C, H, W), ||y − A μ|| (N,)) of the class docstring's ℓ_t (per sample):
        −v/m J_A(μ)ᵀ(y − A(μ)) + λ_t/d (ε̂ − ε) (J_A = A for a linear A). ``alpha_bar``: (N,)."""
        resid = y.to(mu.dtype) - physics.A(mu).to(mu.dtype)
        m, d = resid[0].numel(), mu[0].numel()
        lam = per_sample(self.weight(alpha_bar.to(mu.dtype)), mu)
        grad = -(self.obs_weight / m) * physics.A_vjp(mu, resid).to(mu.dtype) + lam / d * (eps_hat.to(mu.dtype) - eps)
        return grad, resid.flatten(1).norm(dim=1)

    def step(self, step: Any, y: torch.Tensor, physics: Any) -> torch.Tensor:
        """One Adam step on μ, then x_{t-1} = √ᾱ_{t-1} μ + √(1−ᾱ_{t-1}) ε' (= μ at the end)."""
        dtype = compute_dtype(step.proposal)
        with torch.inference_mode(False), torch.no_grad():
            x_t = step.x_t.detach().to(dtype).clone()
            a = per_sample(step.alpha_bar.detach().to(dtype).clone(), x_t)
            if step.i == 0:
                mu = self.init_mu(y.detach().clone(), physics, dtype).clone()
                eps = (x_t - a.sqrt() * mu) / (1.0 - a).sqrt()
                opt = torch.optim.Adam([mu], lr=self.lr, betas=ADAM_BETAS, weight_decay=0.0)
                self._state = dict(mu=mu, eps=eps, opt=opt)
            state = self._state
            if state is None or state["mu"].shape != x_t.shape:
                raise ValueError(f"RED-diff: step {step.i} of a run whose step 0 this method did not see (its state "
                                 "holds μ between steps; run one sampling at a time per method instance)")
            mu, opt = state["mu"], state["opt"]
            grad, residual = self.gradient(mu, step.eps.detach().to(dtype).clone(), state["eps"],
                                           y.detach().clone(), step.alpha_bar.detach().clone(), physics)
            mu.grad = grad
            mu_before = mu.detach().clone() if (self.reference_output and step.t_prev < 0) else None
            opt.step()
            mu.grad = None
            step.residual = residual
            a_prev = per_sample(step.alpha_bar_prev.detach().to(dtype).clone(), mu)
            eps_new = step.randn().to(dtype).clone() if step.t_prev >= 0 else torch.zeros_like(mu)
            state["eps"] = eps_new
            x_prev = a_prev.sqrt() * mu + (1.0 - a_prev).clamp(min=0).sqrt() * eps_new
            if mu_before is not None:
                x_prev = mu_before
            if step.t_prev < 0:
                self._state = None
            out = x_prev.to(step.proposal.dtype)
        return out

    @staticmethod
    def fixed_point(prior_mean: torch.Tensor, prior_var: float, A: torch.Tensor, y: torch.Tensor, alpha_bar: float,
                    lam: float, v: float = 1.0, snr_power: float = 1.0) -> torch.Tensor:
        """For a Gaussian prior N(m, s² I) (d-vectors) and a dense A (k, d): the μ at which the
        expected gradient E_ε[∂ℓ_t/∂μ] vanishes at a fixed t. With the exact ε̂ of the diffused
        prior, E_ε[ε̂ − ε] = √ᾱ √(1−ᾱ) (μ − m)/(ᾱ s² + 1 − ᾱ), so
        μ* = (v/k AᵀA + c I)⁻¹ (v/k Aᵀ y + c m),  c = λ_t √ᾱ √(1−ᾱ)/(d (ᾱ s² + 1 − ᾱ)).
        Float64 (d,) from m (d,), A (k, d), y (k,)."""
        k, d = A.shape
        lam_t = lam * ((1 - alpha_bar) / alpha_bar) ** (snr_power / 2)
        c = lam_t * math.sqrt(alpha_bar * (1 - alpha_bar)) / (d * (alpha_bar * prior_var + 1 - alpha_bar))
        lhs = v / k * A.T @ A + c * torch.eye(d, dtype=torch.float64)
        return torch.linalg.solve(lhs, v / k * A.T @ y + c * prior_mean)
