"""The Gaussian diffusion process (Ho et al. 2020) with respaced timesteps, its training loss,
and the DDPM / DDIM sampling loops in which a data-consistency solver maps the unconditional
proposal to x_{t-1} (Gaussian is All You Need, Alg. 1 / Alg. 2)."""
from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from util.seeding import randn
from .respace import get_named_beta_schedule, respaced_betas, space_timesteps

log = logging.getLogger(__name__)

MEAN_TYPES = ("epsilon",)
VAR_TYPES = ("learned_range", "fixedlarge", "fixedsmall")
SAMPLERS = ("ddpm", "ddim")


def _extract(arr: np.ndarray, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """arr[t] as a float32 (N, 1, ..., 1) tensor broadcasting over an ``ndim``-D batch."""
    out = torch.from_numpy(arr).to(device=t.device)[t].float()
    return out.reshape(-1, *([1] * (ndim - 1)))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) element-wise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log-likelihood of 8-bit images x in [-1, 1] under a Gaussian discretised to bins of
    width 2/255 (Ho et al. 2020, eq. 13), element-wise, in nats."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))


@dataclass
class SampleResult:
    """Output of a sampling loop.

    x0: (N, C, H, W) final samples (diverged samples are zeros); diverged_at: per sample, None
    or the 0-based step count at which it became NaN / inf; nfe: network evaluations per image."""
    x0: torch.Tensor
    diverged_at: list = field(default_factory=list)
    nfe: int = 0


class GaussianDiffusion:
    """A (respaced) Gaussian diffusion process.

    Args:
        betas: (T_orig,) β of the original process (float64).
        model_mean_type: "epsilon" (the network predicts ε).
        model_var_type: "learned_range" (network outputs v, log σ² = ((v+1)/2) log β_t +
            (1 − (v+1)/2) log β̃_t; Nichol & Dhariwal 2021, eq. 15), "fixedlarge" (σ² = β_t),
            "fixedsmall" (σ² = β̃_t, the posterior variance).
        timestep_respacing: see :func:`respace.space_timesteps`.
        rescale_timesteps: feed t · 1000 / T_orig to the network.
        clip_denoised: clip x0_hat to [-1, 1].
        dynamic_threshold: Imagen's dynamic thresholding of x0_hat (99.5% quantile).

    Index ``t`` below is always the respaced index 0..num_timesteps-1; the network sees
    ``timestep_map[t]``. Raises ValueError for an unknown type name.
    """

    def __init__(self, betas: np.ndarray, model_mean_type: str = "epsilon", model_var_type: str = "fixedlarge",
                 timestep_respacing="", rescale_timesteps: bool = False, clip_denoised: bool = True,
                 dynamic_threshold: bool = False):
        if model_mean_type not in MEAN_TYPES:
            raise ValueError(f"diffusion config: model_mean_type {model_mean_type!r} is not supported; valid: {MEAN_TYPES}")
        if model_var_type not in VAR_TYPES:
            raise ValueError(f"diffusion config: unknown model_var_type {model_var_type!r}; valid: {VAR_TYPES}")
        self.original_num_steps = len(betas)
        self.timestep_map = space_timesteps(len(betas), timestep_respacing)
        betas = respaced_betas(np.asarray(betas, dtype=np.float64), self.timestep_map)
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.rescale_timesteps = rescale_timesteps
        self.clip_denoised = clip_denoised
        self.dynamic_threshold = dynamic_threshold
        self.betas = betas
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:]) if self.num_timesteps > 1
            else np.array([max(self.posterior_variance[0], 1e-20)]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    # ----- forward process -------------------------------------------------------------
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Ho et al. 2020, eq. 4); x_start, noise (N, ...), t (N,)."""
        nd = x_start.dim()
        return _extract(self.sqrt_alphas_cumprod, t, nd) * x_start + \
            _extract(self.sqrt_one_minus_alphas_cumprod, t, nd) * noise

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 7)."""
        nd = x_t.dim()
        mean = _extract(self.posterior_mean_coef1, t, nd) * x_start + _extract(self.posterior_mean_coef2, t, nd) * x_t
        return mean, _extract(self.posterior_variance, t, nd), _extract(self.posterior_log_variance_clipped, t, nd)

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Network timesteps for respaced indices t (N,): timestep_map[t], rescaled to [0, 1000) if asked."""
        mapped = torch.tensor(self.timestep_map, device=t.device, dtype=torch.long)[t]
        if self.rescale_timesteps:
            return mapped.float() * (1000.0 / self.original_num_steps)
        return mapped

    def _process_x0(self, x0: torch.Tensor) -> torch.Tensor:
        if self.dynamic_threshold:
            s = torch.quantile(x0.detach().abs().reshape(x0.shape[0], -1).float(), 0.995, dim=1)
            s = s.clamp(min=1.0).reshape(-1, *([1] * (x0.dim() - 1)))
            return torch.maximum(torch.minimum(x0, s), -s) / s
        return x0.clamp(-1, 1) if self.clip_denoised else x0

    def p_mean_variance(self, model: Callable, x: torch.Tensor, t: torch.Tensor) -> dict:
        """One network call: the reverse-step Gaussian p(x_{t-1} | x_t) and the Tweedie estimate.

        x: (N, C, H, W) x_t; t: (N,) respaced indices. Returns a dict with ``mean``,
        ``variance``, ``log_variance`` (broadcastable to x), ``pred_xstart`` (x0_hat =
        (x_t − √(1−ᾱ) ε̂) / √ᾱ, clipped / thresholded as configured) and ``eps`` (ε̂ recomputed
        from the processed x0_hat, as guided-diffusion does for DDIM)."""
        out = model(x, self.model_timesteps(t))
        c = x.shape[1]
        nd = x.dim()
        if self.model_var_type == "learned_range":
            if out.shape[1] != 2 * c:
                raise ValueError(f"model_var_type learned_range needs a model with learn_sigma (2×{c} output "
                                 f"channels), got {out.shape[1]}")
            eps, v = out[:, :c], out[:, c:]
            min_log = _extract(self.posterior_log_variance_clipped, t, nd)
            max_log = _extract(np.log(self.betas), t, nd)
            frac = (v.float() + 1) / 2
            log_var = frac * max_log + (1 - frac) * min_log
            var = torch.exp(log_var)
        else:
            eps = out[:, :c]
            if self.model_var_type == "fixedlarge":
                variances = np.append(self.posterior_variance[1], self.betas[1:]) if self.num_timesteps > 1 \
                    else self.betas
                var = _extract(variances, t, nd)
                log_var = torch.log(var)
            else:
                var = _extract(self.posterior_variance, t, nd)
                log_var = _extract(self.posterior_log_variance_clipped, t, nd)
        eps = eps.float()
        x0 = _extract(self.sqrt_recip_alphas_cumprod, t, nd) * x - _extract(self.sqrt_recipm1_alphas_cumprod, t, nd) * eps
        x0 = self._process_x0(x0)
        mean, _, _ = self.q_posterior_mean_variance(x0, x, t)
        eps_proc = (_extract(self.sqrt_recip_alphas_cumprod, t, nd) * x - x0) / _extract(self.sqrt_recipm1_alphas_cumprod, t, nd)
        return {"mean": mean, "variance": var, "log_variance": log_var, "pred_xstart": x0, "eps": eps_proc}

    # ----- training --------------------------------------------------------------------
    def training_losses(self, model: Callable, x_start: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor) -> dict:
        """Per-sample training loss at respaced indices t (N,) for clean x_start (N, C, H, W) in [-1, 1].

        ``mse``: mean ‖ε − ε̂‖² (Ho et al. 2020, eq. 14). With learned_range, plus ``vb``: the
        variational bound term L_{t-1} (KL of q(x_{t-1}|x_t,x_0) to p with ε̂ held fixed, or the
        decoder NLL at t = 0), in bits per dim, scaled by T/1000 (Nichol & Dhariwal 2021, eq. 16,
        λ = 0.001). ``loss`` = mse + vb."""
        x_t = self.q_sample(x_start, t, noise)
        out = model(x_t, self.model_timesteps(t))
        c = x_start.shape[1]
        dims = list(range(1, x_start.dim()))
        terms = {"mse": ((noise - out[:, :c].float()) ** 2).mean(dim=dims)}
        if self.model_var_type == "learned_range":
            frozen = torch.cat([out[:, :c].detach(), out[:, c:]], dim=1)
            pm = self.p_mean_variance(lambda *_: frozen, x_t, t)
            true_mean, _, true_logvar = self.q_posterior_mean_variance(x_start, x_t, t)
            kl = normal_kl(true_mean, true_logvar, pm["mean"], pm["log_variance"]).mean(dim=dims) / math.log(2.0)
            nll = -discretized_gaussian_log_likelihood(x_start, pm["mean"], 0.5 * pm["log_variance"])
            nll = nll.mean(dim=dims) / math.log(2.0)
            terms["vb"] = torch.where(t == 0, nll, kl) * (self.num_timesteps / 1000.0)
            terms["loss"] = terms["mse"] + terms["vb"]
        else:
            terms["loss"] = terms["mse"]
        return terms

    # ----- sampling --------------------------------------------------------------------
    def proposal(self, out: dict, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The unconditional x' = x_{t-1} before correction, from ``p_mean_variance``'s output.
        Implemented by the DDPM and DDIM samplers."""
        raise NotImplementedError

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ_t of the respaced process for indices t (N,), float32 (N,)."""
        return torch.from_numpy(self.alphas_cumprod).to(t.device)[t].float()

    def score_weights(self) -> np.ndarray:
        """(num_timesteps,) float64 w_t: adding w_t · G to the proposal x' of step t is the same as
        giving the proposal the score ∇ log p_t(x_t) + G (ε̂ → ε̂ − √(1 − ᾱ_t) G). Implemented
        by the DDPM and DDIM samplers; derivation in :mod:`solvers.codps`."""
        raise NotImplementedError

    def score_weight(self, t: torch.Tensor) -> torch.Tensor:
        """w_t of :meth:`score_weights` for respaced indices t (N,), float32 (N,); passed to
        solvers with ``uses_score_weight`` (``scale: auto``, ΠGDM)."""
        if getattr(self, "_score_weights", None) is None:
            self._score_weights = torch.from_numpy(self.score_weights()).float()
        return self._score_weights.to(t.device)[t]

    def sample(self, model: Callable, x_T: torch.Tensor, y: Optional[torch.Tensor], solver,
               generators: Sequence[torch.Generator], callback: Optional[Callable] = None,
               progress: bool = True, desc: str = "") -> SampleResult:
        """Posterior sampling loop (Gaussian is All You Need, Alg. 1 (DDPM) / Alg. 2 (DDIM)).

        Per respaced step t = T−1..0: one network call gives x0_hat and the unconditional
        proposal x' (:meth:`proposal`); ``solver(x_t, x', x0_hat, y, t, alpha_bar)`` returns
        (x_{t-1}, residual (N,)). Solvers with ``needs_grad`` (DPS, ΠGDM) get x_t with a graph
        through the network; the others run under ``torch.inference_mode()``. Solvers with
        ``uses_score_weight`` also get the keyword ``score_weight=`` :meth:`score_weight` (N,).

        Args:
            model: ε-network ``model(x (N,C,H,W), timesteps (N,))``.
            x_T: (N, C, H, W) initial noise.
            y: measurement (shape of the operator's output) or None for the ``none`` solver.
            solver: a ``solvers.Solver``.
            generators: N CPU torch.Generator, sample n's per-step noise drawn from generators[n].
            callback: called as ``callback(i, t, x0_hat, residual)`` after every step.
            progress: show a tqdm bar with the step and the mean data-fit residual.
        Returns: :class:`SampleResult`; a sample that becomes NaN / inf is frozen at zeros and
        its step count recorded. Raises ValueError when len(generators) != N.
        """
        n = x_T.shape[0]
        if len(generators) != n:
            raise ValueError(f"need one generator per sample: {len(generators)} for a batch of {n}")
        needs_grad = bool(getattr(solver, "needs_grad", False))
        uses_weight = bool(getattr(solver, "uses_score_weight", False))
        diverged: list = [None] * n
        alive = torch.ones(n, dtype=torch.bool, device=x_T.device)
        x = x_T.detach().float()
        steps = list(range(self.num_timesteps))[::-1]
        bar = tqdm(steps, desc=desc or "sampling", disable=not progress, leave=False, dynamic_ncols=True)
        ctx = nullcontext() if needs_grad else torch.inference_mode()
        with ctx:
            for i, t in enumerate(bar):
                t_batch = torch.full((n,), t, device=x.device, dtype=torch.long)
                noise = randn(x.shape[1:], generators, device=x.device) if t > 0 else torch.zeros_like(x)
                kw = {"score_weight": self.score_weight(t_batch)} if uses_weight else {}
                if needs_grad:
                    x_in = x.detach().requires_grad_(True)
                    out = self.p_mean_variance(model, x_in, t_batch)
                    x_prop = self.proposal({k: v.detach() for k, v in out.items()}, x_in.detach(), t_batch, noise)
                    x_next, residual = solver(x_in, x_prop, out["pred_xstart"], y, t, self.alpha_bar(t_batch), **kw)
                    x0_hat = out["pred_xstart"].detach()
                else:
                    out = self.p_mean_variance(model, x, t_batch)
                    x_prop = self.proposal(out, x, t_batch, noise)
                    x_next, residual = solver(x, x_prop, out["pred_xstart"], y, t, self.alpha_bar(t_batch), **kw)
                    x0_hat = out["pred_xstart"]
                x = x_next.detach()
                finite = torch.isfinite(x.reshape(n, -1)).all(dim=1)
                newly = alive & ~finite
                for k in torch.nonzero(newly).flatten().tolist():
                    diverged[k] = i
                    log.warning("sample %d of the batch diverged (NaN/inf) at step %d (t=%d); it is stopped", k, i, t)
                alive &= finite
                if not bool(alive.all()):
                    x = torch.where(alive.reshape(-1, *([1] * (x.dim() - 1))), x, torch.zeros_like(x))
                residual = residual.detach()
                if progress:
                    live = residual[alive]
                    bar.set_postfix(t=t, residual=f"{live.mean().item():.4g}" if live.numel() else "nan")
                if callback is not None:
                    callback(i, t, x0_hat.detach(), residual)
        bar.close()
        return SampleResult(x0=x, diverged_at=diverged, nfe=self.num_timesteps)


class DDPMSampler(GaussianDiffusion):
    """Ancestral sampling: x' = μ_θ(x_t, t) + σ_t z, z ~ N(0, I), no noise at t = 0 (Ho et al. 2020, Alg. 2)."""

    def proposal(self, out, x, t, noise):  # noqa: D102
        return out["mean"] + torch.exp(0.5 * out["log_variance"]) * noise

    def score_weights(self) -> np.ndarray:
        """w_t = β_t / √α_t (α_t = 1 − β_t of the respaced process): the posterior-mean
        coefficient of x0_hat, β_t √ᾱ_{t-1} / (1 − ᾱ_t), times (1 − ᾱ_t) / √ᾱ_t."""
        return self.betas / np.sqrt(1.0 - self.betas)


class DDIMSampler(GaussianDiffusion):
    """DDIM update (Song et al. 2021, eq. 12) with σ_t = η √((1−ᾱ_{t-1})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t-1}):
    x' = √ᾱ_{t-1} x0_hat + √(1 − ᾱ_{t-1} − σ_t²) ε̂ + σ_t z (no noise at t = 0).

    Args: as :class:`GaussianDiffusion`, plus ``eta`` ≥ 0 (1.0 by default, as in the paper's code)."""

    def __init__(self, *args, eta: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(eta, (int, float)) or eta < 0:
            raise ValueError(f"diffusion config: eta must be a number >= 0, got {eta!r}")
        self.eta = float(eta)

    def score_weights(self) -> np.ndarray:
        """w_t = √ᾱ_{t-1} (1 − ᾱ_t) / √ᾱ_t − √((1 − ᾱ_{t-1} − σ_t²)(1 − ᾱ_t)), σ_t as in
        :meth:`proposal` (= β_t / √α_t for η = 1)."""
        a, a_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        sigma2 = self.eta ** 2 * (1 - a_prev) / (1 - a) * (1 - a / a_prev)
        return np.sqrt(a_prev) * (1 - a) / np.sqrt(a) - np.sqrt(np.clip(1 - a_prev - sigma2, 0, None) * (1 - a))

    def proposal(self, out, x, t, noise):  # noqa: D102
        nd = x.dim()
        a = _extract(self.alphas_cumprod, t, nd)
        a_prev = _extract(self.alphas_cumprod_prev, t, nd)
        sigma = self.eta * torch.sqrt((1 - a_prev) / (1 - a)) * torch.sqrt(1 - a / a_prev)
        mean = out["pred_xstart"] * torch.sqrt(a_prev) + torch.sqrt((1 - a_prev - sigma ** 2).clamp(min=0)) * out["eps"]
        return mean + sigma * noise


def create_sampler(sampler: str = "ddpm", steps: int = 1000, noise_schedule: str = "linear",
                   model_mean_type: str = "epsilon", model_var_type: str = "learned_range",
                   dynamic_threshold: bool = False, clip_denoised: bool = True, rescale_timesteps: bool = False,
                   timestep_respacing="", eta: float = 1.0, **unused) -> GaussianDiffusion:
    """Build a DDPM or DDIM sampler from diffusion-config keys (the DPS / CoDPS config layout).

    ``steps``: length of the original process (1000 for the official checkpoints);
    ``timestep_respacing``: "1000", "250", "ddim100" or section counts "10,20,30" ("" = all).
    The number of network evaluations per image is ``num_timesteps`` of the result.
    Raises ValueError for unknown keys (listing the valid ones) or values."""
    if unused:
        valid = ["sampler", "steps", "noise_schedule", "model_mean_type", "model_var_type", "dynamic_threshold",
                 "clip_denoised", "rescale_timesteps", "timestep_respacing", "eta"]
        raise ValueError(f"diffusion config: unknown key(s) {sorted(unused)}; valid keys: {valid}")
    if sampler not in SAMPLERS:
        raise ValueError(f"diffusion config: unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    betas = get_named_beta_schedule(noise_schedule, steps)
    kwargs = dict(model_mean_type=model_mean_type, model_var_type=model_var_type,
                  timestep_respacing=timestep_respacing, rescale_timesteps=rescale_timesteps,
                  clip_denoised=clip_denoised, dynamic_threshold=dynamic_threshold)
    if sampler == "ddim":
        return DDIMSampler(betas, eta=eta, **kwargs)
    return DDPMSampler(betas, **kwargs)
