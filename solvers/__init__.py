"""Posterior-sampling methods, one file each, registered by name (``get_solver(name, **params)``):
``CoDPS`` (DDPM) and ``CoDPS+`` / ``codps_plus`` (DDIM) from "Gaussian is All You Need",
``DPS`` / ``ps`` (Chung et al. 2023), ``PiGDM`` / ``pgdm`` (Song et al. 2023), ``DDRM`` (Kawar et
al. 2022), ``DDNM`` / ``DDNM+`` (Wang et al. 2023), ``DiffPIR`` (Zhu et al. 2023), ``RED-diff`` /
``reddiff`` (Mardani et al. 2024), ``DAPS`` / ``daps`` (Zhang et al. 2025), ``TMPD`` / ``tmpd``
and ``TMPD-exact`` (Boys et al. 2024), ``MMPS`` / ``mmps`` (Rozet et al. 2024), ``OPC`` (Peng et al. 2024), and ``none`` / ``vanilla`` (unconditional sampling). docs/methods.md has each
method's equations, parameters and sources; docs/framework.md how to add one."""
from solvers.base import Param, Solver, get_solver, list_methods, list_solvers, register_solver
from solvers import codps, daps, ddnm, ddrm, diffpir, dps, mmps, opc, pigdm, reddiff, tmpd  # noqa: F401  (registers the solvers)

__all__ = ["Param", "Solver", "get_solver", "list_methods", "list_solvers", "register_solver"]
