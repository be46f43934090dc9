"""Data-consistency steps for diffusion posterior sampling, registered by name:
``CoDPS`` (DDPM) and ``CoDPS+`` / ``codps_plus`` (DDIM) from "Gaussian is All You Need",
``DPS`` / ``ps`` (Chung et al. 2023), ``PiGDM`` / ``pgdm`` (Song et al. 2023), ``DDRM`` (Kawar et al. 2022), ``DDNM`` / ``DDNM+``
(Wang et al. 2023), ``DiffPIR`` (Zhu et al. 2023), and ``none`` / ``vanilla`` (unconditional sampling)."""
from solvers.base import Param, Solver, get_solver, list_methods, list_solvers, register_solver
from solvers import codps, ddnm, ddrm, diffpir, dps, pigdm  # noqa: F401  (registers the solvers)

__all__ = ["Param", "Solver", "get_solver", "list_methods", "list_solvers", "register_solver"]
