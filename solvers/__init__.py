"""Data-consistency steps for diffusion posterior sampling, registered by name:
``CoDPS`` (DDPM) and ``CoDPS+`` / ``codps_plus`` (DDIM) from "Gaussian is All You Need",
``DPS`` / ``ps`` (Chung et al. 2023), ``PiGDM`` / ``pgdm`` (Song et al. 2023), ``RED-diff`` / ``reddiff``
(Mardani et al. 2024), ``DAPS`` / ``daps`` (Zhang et al. 2025), ``TMPD`` / ``tmpd`` (Boys et al. 2024), and ``none`` /
``vanilla`` (unconditional sampling)."""
from solvers.base import Param, Solver, get_solver, list_methods, list_solvers, register_solver
from solvers import codps, daps, dps, pigdm, reddiff, tmpd  # noqa: F401  (registers the solvers)

__all__ = ["Param", "Solver", "get_solver", "list_methods", "list_solvers", "register_solver"]
