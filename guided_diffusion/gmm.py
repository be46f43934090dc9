"""Gaussian-mixture priors with everything in closed form: the mixture diffused by a DDPM
schedule, its exact ε(x_t, t) exposed with the UNet's call signature (so the samplers and solvers
run on it unchanged), and the exact posterior p(x_0 | y) for y = A x_0 + σ_y n. A test bed on
which every posterior sampler can be scored against the true posterior.

Conventions: a vector batch is (N, d) float64; the ε-model takes images (N, C, H, W) with
C·H·W = d (e.g. (N, d, 1, 1), see :func:`as_image`). The data scale is arbitrary (the grid
mixture of :func:`grid_mixture` reaches ±16), so samplers must run with ``clip_denoised=False``.

Example:
    >>> import torch
    >>> from guided_diffusion.gmm import GaussianMixture, GMMEpsilon
    >>> prior = GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 1.0]], [1.0, 0.5])
    >>> model = GMMEpsilon.from_schedule(prior, "linear", 1000)
    >>> model(torch.zeros(3, 2, 1, 1), torch.tensor([999, 500, 0])).shape
    torch.Size([3, 2, 1, 1])
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .respace import get_named_beta_schedule

log = logging.getLogger(__name__)

_LOG_2PI = math.log(2.0 * math.pi)


def _as_float64(value: Any, name: str) -> torch.Tensor:
    """``value`` (array-like or tensor) as a CPU float64 tensor; ValueError if not finite."""
    t = torch.as_tensor(np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value,
                                   dtype=np.float64))
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite")
    return t


def as_image(x: torch.Tensor) -> torch.Tensor:
    """View a vector batch (N, d) as images (N, d, 1, 1) for the samplers and operators."""
    if x.dim() != 2:
        raise ValueError(f"expected a (N, d) vector batch, got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], x.shape[1], 1, 1)


def as_vectors(x: torch.Tensor) -> torch.Tensor:
    """Flatten images (N, C, H, W) (or any (N, ...)) to vectors (N, C·H·W)."""
    return x.reshape(x.shape[0], -1)


def gaussian_log_evidence(residual: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """log N(r; 0, S) for residuals r (..., m) and SPD covariances S (..., m, m) (broadcast),
    via a Cholesky factorisation. Returns (...,). Raises torch.linalg.LinAlgError when S is not
    positive definite."""
    chol = torch.linalg.cholesky(cov)
    z = torch.linalg.solve_triangular(chol, residual.unsqueeze(-1), upper=False).squeeze(-1)
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    m = residual.shape[-1]
    return -0.5 * ((z ** 2).sum(-1) + logdet + m * _LOG_2PI)


class GaussianMixture:
    """p(x) = Σ_k w_k N(x; m_k, Σ_k) in R^d, and its diffused marginals

        p_t(x) = Σ_k w_k N(x; √ᾱ m_k, ᾱ Σ_k + (1 − ᾱ) I)        (q(x_t | x_0) of Ho et al. 2020, eq. 4)

    with their scores in closed form. Everything is computed in float64 on the CPU.

    Args:
        weights: (K,) non-negative, not all zero; normalised to sum to 1.
        means: (K, d).
        covariances: per component, either (K,) variances s_k² (Σ_k = s_k² I), (K, d)
            diagonals, or (K, d, d) symmetric positive-definite matrices; a scalar is one
            isotropic variance for all components. K = 1 is a single Gaussian.

    Raises:
        ValueError: shapes that do not match, negative or non-finite weights, non-positive
            variances, or a non-symmetric / non-positive-definite covariance.

    Attributes:
        weights (K,), log_weights (K,), means (K, d), eigvals (K, d) (eigenvalues of Σ_k),
        eigvecs (K, d, d) or None when every Σ_k is diagonal (then eigvals is the diagonal).
    """

    def __init__(self, weights: Any, means: Any, covariances: Any) -> None:
        w = _as_float64(weights, "weights")
        mu = _as_float64(means, "means")
        if w.dim() != 1 or w.numel() == 0:
            raise ValueError(f"weights must be a non-empty (K,) vector, got shape {tuple(w.shape)}")
        if mu.dim() != 2 or mu.shape[0] != w.shape[0]:
            raise ValueError(f"means must be (K, d) = ({w.shape[0]}, d), got shape {tuple(mu.shape)}")
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be >= 0 and not all zero")
        k, d = mu.shape
        cov = _as_float64(covariances, "covariances")
        self.eigvecs: Optional[torch.Tensor] = None
        if cov.dim() == 0:
            cov = cov.expand(k)
        if cov.dim() == 1 and cov.shape == (k,):
            eig = cov[:, None].expand(k, d).clone()
        elif cov.dim() == 2 and cov.shape == (k, d):
            eig = cov.clone()
        elif cov.dim() == 3 and cov.shape == (k, d, d):
            if not torch.allclose(cov, cov.transpose(1, 2), rtol=1e-10, atol=1e-12):
                raise ValueError("full covariances must be symmetric")
            eig, vecs = torch.linalg.eigh(0.5 * (cov + cov.transpose(1, 2)))
            self.eigvecs = vecs
        else:
            raise ValueError(f"covariances must be (K,)=({k},), (K, d)=({k}, {d}) or (K, d, d), "
                             f"got shape {tuple(cov.shape)}")
        if (eig <= 0).any():
            raise ValueError("covariances must be positive definite (all variances / eigenvalues > 0)")
        self.weights = w / w.sum()
        self.log_weights = torch.log(self.weights)                           # -inf for zero weights
        self.means = mu
        self.eigvals = eig

    # ---- basic properties --------------------------------------------------------------------
    @property
    def num_components(self) -> int:
        """K."""
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        """d."""
        return self.means.shape[1]

    def component_covariances(self) -> torch.Tensor:
        """The Σ_k as dense (K, d, d) float64 matrices."""
        if self.eigvecs is None:
            return torch.diag_embed(self.eigvals)
        return self.eigvecs @ torch.diag_embed(self.eigvals) @ self.eigvecs.transpose(1, 2)

    def cov_matmul(self, mat: torch.Tensor) -> torch.Tensor:
        """Σ_k M for every component: M (d, p) -> (K, d, p)."""
        if self.eigvecs is None:
            return self.eigvals[:, :, None] * mat[None]
        u = self.eigvecs
        return u @ (self.eigvals[:, :, None] * (u.transpose(1, 2) @ mat))

    def mean(self) -> torch.Tensor:
        """E[x] = Σ_k w_k m_k, (d,)."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Cov[x] = Σ_k w_k (Σ_k + m_k m_kᵀ) − E[x] E[x]ᵀ, (d, d)."""
        m = self.mean()
        second = (self.weights[:, None, None] * (self.component_covariances()
                                                 + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return second - torch.outer(m, m)

    # ---- densities and scores of the diffused mixture -----------------------------------------
    def _diffused(self, alpha_bar: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(√ᾱ m_k (K, d), eigenvalues ᾱ λ_ki + 1 − ᾱ (K, d)) of p_t's components."""
        a = float(alpha_bar)
        if not 0.0 < a <= 1.0:
            raise ValueError(f"alpha_bar must lie in (0, 1], got {alpha_bar!r}")
        return math.sqrt(a) * self.means, a * self.eigvals + (1.0 - a)

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected a (N, {self.dim}) batch, got shape {tuple(x.shape)}")
        return x.to(torch.float64)

    def _whitened(self, x: torch.Tensor, alpha_bar: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per component, the residual in the eigenbasis and the diffused eigenvalues.

        Returns (maha (N, K) = (x − μ_k)ᵀ C_k⁻¹ (x − μ_k), logdet C_k (K,), and for the full case
        z (N, K, d) = U_kᵀ (x − μ_k), else None)."""
        mu, c = self._diffused(alpha_bar)
        logdet = torch.log(c).sum(1)
        if self.eigvecs is None:
            inv = 1.0 / c                                                    # (K, d)
            maha = (x * x) @ inv.T - 2.0 * x @ (mu * inv).T + (mu * mu * inv).sum(1)
            return maha.clamp(min=0.0), logdet, None
        z = torch.einsum("nkd,kde->nke", x[:, None, :] - mu[None], self.eigvecs)
        maha = (z * z / c[None]).sum(-1)
        return maha, logdet, z

    def component_log_prob(self, x: torch.Tensor, alpha_bar: float = 1.0) -> torch.Tensor:
        """log N(x; √ᾱ m_k, ᾱ Σ_k + (1 − ᾱ) I) for every component: x (N, d) -> (N, K).
        alpha_bar: ᾱ in (0, 1] (1 = the mixture itself). Differentiable in x."""
        x = self._check_x(x)
        maha, logdet, _ = self._whitened(x, alpha_bar)
        return -0.5 * (maha + logdet[None] + self.dim * _LOG_2PI)

    def log_prob(self, x: torch.Tensor, alpha_bar: float = 1.0) -> torch.Tensor:
        """log p_t(x) by log-sum-exp over components: x (N, d) -> (N,)."""
        return torch.logsumexp(self.log_weights[None] + self.component_log_prob(x, alpha_bar), dim=1)

    def responsibilities(self, x: torch.Tensor, alpha_bar: float = 1.0) -> torch.Tensor:
        """p(k | x_t = x), (N, K), rows sum to 1 (softmax of log w_k + log N_k)."""
        return torch.softmax(self.log_weights[None] + self.component_log_prob(x, alpha_bar), dim=1)

    def score(self, x: torch.Tensor, alpha_bar: float = 1.0) -> torch.Tensor:
        """∇_x log p_t(x) = −Σ_k γ_k(x) C_k⁻¹ (x − √ᾱ m_k) with γ = :meth:`responsibilities`
        (computed with log-sum-exp, stable far from every mean). x (N, d) -> (N, d) float64;
        differentiable in x."""
        x = self._check_x(x)
        mu, c = self._diffused(alpha_bar)
        maha, logdet, z = self._whitened(x, alpha_bar)
        gamma = torch.softmax(self.log_weights[None] - 0.5 * (maha + logdet[None]), dim=1)   # (N, K)
        inv = 1.0 / c
        if z is None:
            return -(x * (gamma @ inv) - gamma @ (mu * inv))
        return -torch.einsum("nk,nke,kde->nd", gamma, z * inv[None], self.eigvecs)

    def eps(self, x: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """The exact noise prediction ε(x_t) = −√(1 − ᾱ) ∇ log p_t(x_t) (so that Tweedie's
        x0_hat = (x_t − √(1 − ᾱ) ε) / √ᾱ = E[x_0 | x_t]); x (N, d) -> (N, d) float64."""
        return -math.sqrt(1.0 - float(alpha_bar)) * self.score(x, alpha_bar)

    def measurement_log_likelihood(self, x: torch.Tensor, alpha_bar: float, A: Any, y: Any,
                                   sigma: float) -> torch.Tensor:
        """The exact log p(y | x_t = x) for y = A x_0 + σ n, x (N, d) -> (N,), differentiable in x
        (its gradient is the exact likelihood score that posterior samplers approximate).

        Given component k, x_0 | x_t is Gaussian (Bishop 2006, eq. 2.116) with
            μ_k = m_k + √ᾱ Σ_k C_k⁻¹ (x_t − √ᾱ m_k),   R_k = Σ_k − ᾱ Σ_k C_k⁻¹ Σ_k,
        C_k = ᾱ Σ_k + (1 − ᾱ) I, so p(y | x_t) = Σ_k γ_k(x_t) N(y; A μ_k, σ² I + A R_k Aᵀ) with
        γ = :meth:`responsibilities` at ᾱ. Cost O(N K m d) for diagonal Σ_k.

        Args: A (m, d); y (m,); sigma ≥ 0 (σ = 0 needs every A R_k Aᵀ invertible).
        """
        x = self._check_x(x)
        a_mat = _as_float64(A, "A")
        yy = _as_float64(y, "y").reshape(-1)
        mu, c = self._diffused(alpha_bar)
        a = float(alpha_bar)
        gain = self.eigvals / c                                              # eig of Σ C⁻¹, (K, d)
        post_var = self.eigvals * (1.0 - a) / c                              # eig of R_k, (K, d)
        if self.eigvecs is None:
            b = a_mat[None] * gain[:, None, :]                               # A Σ_k C_k⁻¹, (K, m, d)
            s = (a_mat[None] * post_var[:, None, :]) @ a_mat.T[None]         # A R_k Aᵀ, (K, m, m)
        else:
            au = a_mat[None] @ self.eigvecs                                  # A U_k, (K, m, d)
            b = (au * gain[:, None, :]) @ self.eigvecs.transpose(1, 2)
            s = (au * post_var[:, None, :]) @ au.transpose(1, 2)
        s = s + float(sigma) ** 2 * torch.eye(a_mat.shape[0], dtype=torch.float64)
        am = self.means @ a_mat.T                                            # A m_k, (K, m)
        bm = torch.einsum("kmd,kd->km", b, mu)                               # A Σ C⁻¹ √ᾱ m_k
        a_mu = am[None] + math.sqrt(a) * (torch.einsum("kmd,nd->nkm", b, x) - bm[None])   # (N, K, m)
        log_lik = gaussian_log_evidence(yy[None, None] - a_mu, s[None])      # (N, K)
        log_gamma = torch.log_softmax(self.log_weights[None] + self.component_log_prob(x, a), dim=1)
        return torch.logsumexp(log_gamma + log_lik, dim=1)

    # ---- sampling ----------------------------------------------------------------------------
    def sample_components(self, labels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """x ~ N(m_k, Σ_k) for given component labels (n,) long -> (n, d) float64."""
        z = torch.randn(labels.shape[0], self.dim, generator=generator, dtype=torch.float64)
        z = z * self.eigvals[labels].sqrt()
        if self.eigvecs is not None:
            z = torch.einsum("nde,ne->nd", self.eigvecs[labels], z)
        return self.means[labels] + z

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws: (x (n, d) float64, component labels (n,) long)."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.sample_components(labels, generator), labels

    # ---- the exact posterior -----------------------------------------------------------------
    def posterior(self, A: Any, y: Any, sigma: float) -> "GMMPosterior":
        """The exact p(x | y) for y = A x + σ n, n ~ N(0, I_m): see :class:`GMMPosterior`."""
        return GMMPosterior(self, A, y, sigma)


class GMMPosterior:
    """The exact posterior p(x_0 | y) of a :class:`GaussianMixture` prior under the linear
    Gaussian measurement y = A x_0 + σ n, n ~ N(0, I_m) (Bishop 2006, eqs. 2.113-2.117, per
    component; the mixture weights by Bayes' rule). It is again a mixture:

        S_k  = A Σ_k Aᵀ + σ² I,     G_k = Σ_k Aᵀ S_k⁻¹                      (Kalman gain)
        m'_k = m_k + G_k (y − A m_k),   Σ'_k = Σ_k − G_k A Σ_k
        w'_k ∝ w_k N(y; A m_k, S_k)

    Sampling uses Matheron's rule (x ~ N(m_k, Σ_k), then x + G_k (y − A x − σ n)), so no
    d × d factorisation is needed: O(d m) per draw for diagonal Σ_k.

    Args:
        prior: the mixture.
        A: (m, d) matrix.
        y: (m,) measurement.
        sigma: σ ≥ 0 (σ = 0 needs every A Σ_k Aᵀ invertible).

    Raises:
        ValueError: shapes, negative σ. torch.linalg.LinAlgError: a singular S_k.

    Attributes:
        prior, A (m, d), y (m,), sigma, gains (K, d, m), weights (K,), log_weights (K,),
        means (K, d), log_evidence: log p(y) (float).
    """

    def __init__(self, prior: GaussianMixture, A: Any, y: Any, sigma: float) -> None:
        a = _as_float64(A, "A")
        yy = _as_float64(y, "y").reshape(-1)
        if a.dim() != 2 or a.shape[1] != prior.dim:
            raise ValueError(f"A must be (m, {prior.dim}), got shape {tuple(a.shape)}")
        if yy.shape[0] != a.shape[0]:
            raise ValueError(f"y must have m = {a.shape[0]} entries, got {yy.shape[0]}")
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
        self.prior, self.A, self.y, self.sigma = prior, a, yy, float(sigma)
        m = a.shape[0]
        cov_at = prior.cov_matmul(a.T)                                       # (K, d, m) Σ_k Aᵀ
        s = a[None] @ cov_at + self.sigma ** 2 * torch.eye(m, dtype=torch.float64)   # (K, m, m)
        s = 0.5 * (s + s.transpose(1, 2))
        resid = yy[None] - prior.means @ a.T                                 # (K, m)
        self.gains = torch.linalg.solve(s, cov_at.transpose(1, 2)).transpose(1, 2)   # Σ Aᵀ S⁻¹ (S symmetric)
        self.means = prior.means + (self.gains @ resid[:, :, None]).squeeze(-1)
        log_ev = prior.log_weights + gaussian_log_evidence(resid, s)
        self.log_evidence = float(torch.logsumexp(log_ev, 0))
        self.log_weights = log_ev - self.log_evidence
        self.weights = torch.exp(self.log_weights)
        self._cov_at = cov_at

    @property
    def dim(self) -> int:
        """d."""
        return self.prior.dim

    def component_covariances(self) -> torch.Tensor:
        """Σ'_k = Σ_k − G_k A Σ_k as dense (K, d, d) float64 (memory K d²: small d only)."""
        cov = self.prior.component_covariances() - self.gains @ self._cov_at.transpose(1, 2)
        return 0.5 * (cov + cov.transpose(1, 2))

    def mean(self) -> torch.Tensor:
        """E[x_0 | y] = Σ_k w'_k m'_k, (d,)."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Cov[x_0 | y], (d, d) (dense; small d only)."""
        return self.as_mixture().covariance()

    def as_mixture(self) -> GaussianMixture:
        """The posterior as a :class:`GaussianMixture` with full covariances (small d only)."""
        return GaussianMixture(self.weights, self.means, self.component_covariances())

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n exact posterior draws by Matheron's rule: (x (n, d) float64, labels (n,) long)."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        x = self.prior.sample_components(labels, generator)
        noise = torch.randn(n, self.A.shape[0], generator=generator, dtype=torch.float64)
        innov = self.y[None] - x @ self.A.T - self.sigma * noise             # (n, m)
        return x + torch.einsum("ndm,nm->nd", self.gains[labels], innov), labels

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x | y) = log p(x) + log N(y; A x, σ² I) − log p(y), x (N, d) -> (N,);
        needs σ > 0 (ValueError otherwise: the posterior then lives on a subspace)."""
        if self.sigma <= 0:
            raise ValueError("log_prob needs sigma > 0")
        x = self.prior._check_x(x)
        r = self.y[None] - x @ self.A.T
        m = self.A.shape[0]
        loglik = -0.5 * ((r ** 2).sum(1) / self.sigma ** 2 + m * (_LOG_2PI + 2 * math.log(self.sigma)))
        return self.prior.log_prob(x) + loglik - self.log_evidence

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """p(k | x_0 = x, y), (N, K). By Bayes, w'_k N(x; m'_k, Σ'_k) = w_k N(x; m_k, Σ_k)
        N(y; A x, σ² I) / p(y), and the middle factor does not depend on k, so these are the
        prior responsibilities p(k | x) (cheap in any d)."""
        return self.prior.responsibilities(x)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """The most likely component of each sample under the exact posterior, (N,) long."""
        return torch.argmax(self.prior.log_weights[None] + self.prior.component_log_prob(x), dim=1)


class GMMEpsilon:
    """The exact ε-"network" of a diffused :class:`GaussianMixture`, with the UNet's call
    signature ``model(x, timesteps)``: for each sample, ε(x_t) = −√(1 − ᾱ_t) ∇ log p_t(x_t)
    with ᾱ_t = ``alphas_cumprod[timesteps]`` of the ORIGINAL process (the samplers pass
    ``timestep_map[t]``). Differentiable in x (DPS / ΠGDM backpropagate through it).

    Args:
        mixture: the prior.
        alphas_cumprod: (T,) ᾱ of the original process (e.g. of the linear schedule).

    Call:
        x: (N, C, H, W) (or (N, d)) with C·H·W = d, any float dtype; timesteps: (N,) integer
        original-process indices in [0, T). Returns ε with x's shape and dtype, computed in
        float64 (one evaluation per distinct timestep in the batch).

    Raises:
        ValueError: wrong size, float (rescaled) timesteps, or timesteps out of range.
    """

    def __init__(self, mixture: GaussianMixture, alphas_cumprod: Sequence[float]) -> None:
        self.mixture = mixture
        self.alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
        if self.alphas_cumprod.ndim != 1 or not ((self.alphas_cumprod > 0) & (self.alphas_cumprod <= 1)).all():
            raise ValueError("alphas_cumprod must be a (T,) vector in (0, 1]")

    @classmethod
    def from_schedule(cls, mixture: GaussianMixture, noise_schedule: str = "linear", steps: int = 1000) -> "GMMEpsilon":
        """The model for a named schedule of ``steps`` original steps (see
        :func:`respace.get_named_beta_schedule`)."""
        betas = get_named_beta_schedule(noise_schedule, steps)
        return cls(mixture, np.cumprod(1.0 - betas))

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        flat = x.reshape(n, -1)
        if flat.shape[1] != self.mixture.dim:
            raise ValueError(f"GMMEpsilon: input has {flat.shape[1]} values per sample, the mixture d = "
                             f"{self.mixture.dim}")
        ts = torch.as_tensor(timesteps)
        if ts.is_floating_point():
            raise ValueError("GMMEpsilon needs integer original-process timesteps (rescale_timesteps: false)")
        ts = ts.reshape(-1).expand(n) if ts.numel() == 1 else ts.reshape(-1)
        if ts.shape[0] != n:
            raise ValueError(f"GMMEpsilon: {ts.shape[0]} timesteps for a batch of {n}")
        steps = ts.cpu()
        if steps.min() < 0 or steps.max() >= len(self.alphas_cumprod):
            raise ValueError(f"GMMEpsilon: timesteps must lie in [0, {len(self.alphas_cumprod)})")
        x64 = flat.to(torch.float64)
        unique = torch.unique(steps)
        if unique.numel() == 1:
            out = self.mixture.eps(x64, float(self.alphas_cumprod[int(unique[0])]))
        else:
            out = torch.zeros_like(x64)
            for s in unique.tolist():
                rows = torch.nonzero(steps == s).flatten().to(x.device)
                out = out.index_put((rows,), self.mixture.eps(x64[rows], float(self.alphas_cumprod[s])))
        return out.to(x.dtype).reshape(x.shape)


def grid_mixture(dim: int, seed: int = 0, spacing: float = 8.0) -> GaussianMixture:
    """The 25-component benchmark mixture of the diffusion posterior-sampling literature (MCGdiff,
    Cardoso et al. 2024; TMPD, Boys et al. 2024): unit covariances, means
    (s i, s j, s i, s j, …) ∈ R^dim for i, j ∈ {−2, …, 2} (s = ``spacing`` = 8), weights
    drawn U(0, 1) from ``numpy.random.default_rng(seed)`` and normalised.

    Raises ValueError for dim < 2."""
    if dim < 2:
        raise ValueError(f"grid_mixture needs dim >= 2, got {dim}")
    grid = [(i, j) for i in range(-2, 3) for j in range(-2, 3)]
    means = np.array([[spacing * (i if c % 2 == 0 else j) for c in range(dim)] for i, j in grid])
    weights = np.random.default_rng(seed).uniform(0.0, 1.0, len(grid))
    return GaussianMixture(weights, means, np.ones(len(grid)))
