"""Test helpers: call a method's ``step`` with the seven arguments of the pre-framework solver
call, ``(x_t, x_prev, x0_hat, y, t, alpha_bar, score_weight=None) -> (x_next, residual)``, so
that the closed-form tests of the steps keep their assertions unchanged; and check samples
against a Gaussian posterior's mean and covariance within Monte-Carlo error."""
from __future__ import annotations

from typing import Any

import torch

from operators import Physics
from sampling import make_step
from solvers import get_solver


class LegacySolver:
    """``get_solver(name, **params)`` bound to ``Physics(operator, noiser)`` (None for no
    operator), checked at construction like the old constructors; attributes of the method are
    readable through it (``needs_grad``, ``scale``, ``scale_at`` ...)."""

    def __init__(self, name: str, operator: Any, noiser: Any, **params: Any) -> None:
        self.method = get_solver(name, **params)
        self.physics = None if operator is None else Physics(operator, noiser)
        if self.physics is not None and noiser is not None:
            self.physics.noiser = noiser          # keep test doubles (SimpleNamespace) as they are
        self.method.check(self.physics)

    def __getattr__(self, item: str) -> Any:
        return getattr(self.method, item)

    def __call__(self, x_t: torch.Tensor, x_prev: torch.Tensor, x0_hat: torch.Tensor, y: Any, t: Any,
                 alpha_bar: Any, score_weight: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        step = make_step(x_t, x0_hat, x_prev, t, alpha_bar, weight=score_weight)
        x_next = self.method.step(step, y, self.physics)
        if step.residual is not None:
            residual = step.residual
        elif self.physics is not None and y is not None:
            residual = self.physics.residual(y, x0_hat)
        else:
            residual = torch.zeros(x_prev.shape[0], dtype=torch.float64 if x_prev.dtype == torch.float64
                                   else torch.float32)
        return x_next, residual


def legacy_solver(name: str, operator: Any = None, noiser: Any = None, **params: Any) -> LegacySolver:
    """A :class:`LegacySolver`."""
    return LegacySolver(name, operator, noiser, **params)


def assert_gaussian_moments(x: torch.Tensor, pm: torch.Tensor, pc: torch.Tensor, z: float = 4.5,
                            cov_slack: float = 0.02) -> None:
    """Assert that samples ``x`` (n, d), float64, match a Gaussian with mean ``pm`` (d,) and
    covariance ``pc`` (d, d) within ``z`` Monte-Carlo standard errors: the mean's SE is
    sqrt(diag(pc) / n), the sample covariance's sqrt((pc_ii pc_jj + pc_ij²) / n) (Gaussian data),
    plus ``cov_slack`` for the sampler's discretisation."""
    n = x.shape[0]
    se_mean = (pc.diagonal() / n).sqrt()
    assert ((x.mean(0) - pm).abs() <= z * se_mean).all(), ((x.mean(0) - pm) / se_mean)
    se_cov = ((pc.diagonal()[:, None] * pc.diagonal()[None] + pc ** 2) / n).sqrt()
    assert ((torch.cov(x.T) - pc).abs() <= z * se_cov + cov_slack).all(), ((torch.cov(x.T) - pc) / se_cov)
