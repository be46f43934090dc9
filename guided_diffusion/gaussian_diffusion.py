"""The Gaussian diffusion process (Ho et al. 2020) with respaced timesteps, its training loss,
and the DDPM / DDIM reverse steps (the unconditional proposal x'_{t-1}, its noise std and the
likelihood-score weight w_t) that the loop in :mod:`sampling.loop` uses."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .respace import get_named_beta_schedule, respaced_betas, space_timesteps

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
        self.original_betas = np.asarray(betas, dtype=np.float64)   # (T,) β of the unrespaced process
        self.timestep_map = space_timesteps(len(betas), timestep_respacing, betas)
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

    def alpha_bar_prev(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ_{t-1} of the respaced process for indices t (N,) (1 at t = 0), float32 (N,)."""
        return torch.from_numpy(self.alphas_cumprod_prev).to(t.device)[t].float()

    def proposal_std(self, out: dict, t: torch.Tensor) -> torch.Tensor:
        """The std σ_t of the noise in :meth:`proposal`, broadcastable to x ((N, 1, 1, 1), or
        (N, C, H, W) for learned variances). Implemented by the DDPM and DDIM samplers."""
        raise NotImplementedError

    def score_weights(self) -> np.ndarray:
        """(num_timesteps,) float64 w_t: adding w_t · G to the proposal x' of step t is the same as
        giving the proposal the score ∇ log p_t(x_t) + G (ε̂ → ε̂ − √(1 − ᾱ_t) G). Implemented
        by the DDPM and DDIM samplers; derivation in :mod:`solvers.codps`."""
        raise NotImplementedError

    def score_weight(self, t: torch.Tensor) -> torch.Tensor:
        """w_t of :meth:`score_weights` for respaced indices t (N,), float32 (N,); passed to
        methods as ``Step.weight`` (``scale: auto``, ΠGDM)."""
        if getattr(self, "_score_weights", None) is None:
            self._score_weights = torch.from_numpy(self.score_weights()).float()
        return self._score_weights.to(t.device)[t]


class DDPMSampler(GaussianDiffusion):
    """Ancestral sampling: x' = μ_θ(x_t, t) + σ_t z, z ~ N(0, I), no noise at t = 0 (Ho et al. 2020, Alg. 2)."""

    #: DDPM's ancestral step reported as DDIM's η (exact for ``fixedsmall``; see ``proposal_std``).
    eta = 1.0

    def proposal(self, out, x, t, noise):  # noqa: D102
        return out["mean"] + torch.exp(0.5 * out["log_variance"]) * noise

    def proposal_std(self, out, t):  # noqa: D102
        return torch.exp(0.5 * out["log_variance"])

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

    def proposal_std(self, out, t):  # noqa: D102
        nd = out["pred_xstart"].dim()
        a = _extract(self.alphas_cumprod, t, nd)
        a_prev = _extract(self.alphas_cumprod_prev, t, nd)
        return self.eta * torch.sqrt((1 - a_prev) / (1 - a)) * torch.sqrt(1 - a / a_prev)

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
    ``timestep_respacing``: "1000", "250", "ddim100", the low-noise grid "sigma100max2" or section
    counts "10,20,30" ("" = all); see :func:`respace.space_timesteps`.
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
