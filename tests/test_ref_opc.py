"""OPC (solvers/opc.py) against the authors' code (xypeng9903/k-diffusion-inverse-problems @
d5ae606) on identical inputs: tests/fixtures/ref_opc.pt, made by tests/fixtures/make_ref_opc.py
(its docstring lists the settings of the reference made for the comparison).

Checked to 1e-5 relative (‖ours − ref‖ / ‖ref‖): the conditional mean E[x_0 | x_t, y] and one
step to t − 1 (η = 0: the reference's Euler step) for cov analytic / convert × guidance II / I ×
Gaussian blur / inpainting at t = 20, 50 (maximum-likelihood Σ) and 300, 700 (ΠGDM's Σ), with a
small random learned-variance UNet; and a 10-step loop (ddim10 timesteps, η = 0) with the
embedded prior. The reference computes in float32, so the tolerance is relative to float32
round-off accumulated through the network and, for diagonal Σ through the blur, a CG solve."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.environ.get("REF_OPC_FIXTURE", os.path.join(ROOT, "tests", "fixtures", "ref_opc.pt"))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))

import make_ref_opc  # noqa: E402  (the fixture script's input builders)
from builder import build_physics  # noqa: E402
from guided_diffusion.gaussian_diffusion import create_sampler  # noqa: E402
from sampling import make_step, sample  # noqa: E402
from solvers import get_solver  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def table(ref, tmp_path_factory):
    """The fixture's r² table written as an analytic-variance file."""
    full = create_sampler("ddim", timestep_respacing="", eta=0.0)
    path = str(tmp_path_factory.mktemp("opc") / "table.pt")
    torch.save({"alpha_bar": torch.from_numpy(full.alphas_cumprod), "r2": ref["r2"].double()}, path)
    return path


@pytest.fixture(scope="module")
def small_unet(ref):
    net = make_ref_opc.small_unet()
    assert sum(float(p.detach().double().sum()) for p in net.parameters()) == pytest.approx(ref["small_unet_checksum"], rel=1e-12)
    return net


def physics_for(name, ref):
    """Our physics with the fixture's kernel / mask (rebuilt as the script did; checked)."""
    cfg = {"gaussian_blur": {"name": "gaussian_blur", "kernel_size": 13, "intensity": 2.0},
           "inpainting": {"name": "inpainting", "mask_type": "random", "mask_prob_range": (0.7, 0.8)}}[name]
    phys = build_physics({"operator": cfg, "noise": {"name": "gaussian", "sigma": ref["sigma_n"]}})
    phys.draw([np.random.default_rng(3)], (1, 1, 32, 32))
    if name == "inpainting":
        assert torch.equal(phys.A(torch.ones(1, 1, 32, 32)), ref["meas"][name]["mask"])
    else:
        assert torch.allclose(torch.from_numpy(phys.params(0)).float(), ref["meas"][name]["kernel"])
    return phys


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def one_step(net, phys, y, x_t, t, solver):
    """Our x̂ and x_{t-1} at step t of the unrespaced DDIM(η = 0) process (a fresh Step, and
    network call, for each: Type I's VJP consumes the graph)."""
    full = create_sampler("ddim", timestep_respacing="", eta=0.0)
    tb = torch.tensor([t])

    def fresh():
        x = x_t.clone().requires_grad_(solver.needs_grad)
        out = full.p_mean_variance(net, x, tb)
        plain = {k: v.detach() for k, v in out.items()}
        step = make_step(x, out["pred_xstart"], full.proposal(plain, x.detach(), tb, torch.zeros_like(x_t)), t,
                         full.alpha_bar(tb), full.alpha_bar_prev(tb), eps=out["eps"], eta=0.0, sigma_t=0.0,
                         diffusion=full)
        step.model = net
        return step

    with torch.set_grad_enabled(solver.needs_grad):
        x_hat = solver.conditional_x0(fresh(), y, phys)
        x_prev = solver.step(fresh(), y, phys)
    return x_hat.detach(), x_prev.detach()


STEP_KEYS = [f"small|{n}|{c}|{g}|{t}" for t in make_ref_opc.STEP_TS for n in ("gaussian_blur", "inpainting")
             for c in ("analytic", "convert") for g in ("II", "I")]


@pytest.mark.parametrize("key", STEP_KEYS)
def test_one_step_matches_reference(key, ref, table, small_unet):
    _, name, cov, guidance, t = key.split("|")
    case = ref["steps"][key]
    phys = physics_for(name, ref)
    solver = get_solver("OPC", cov=cov, guidance=guidance, var_table=table, cg_tol=1e-10, cg_max_iter=2000)
    x_hat, x_prev = one_step(small_unet, phys, ref["meas"][name]["y"], case["x_t"], int(t), solver)
    assert rel(x_hat, case["x_hat"]) < TOL
    assert rel(x_prev, case["x_prev"]) < TOL


@pytest.mark.parametrize("key", ["prior|gaussian_blur|analytic|II", "prior|gaussian_blur|convert|I"])
def test_loop_matches_reference(key, ref, table):
    _, name, cov, guidance = key.split("|")
    case = ref["loops"][key]
    phys = physics_for(name, ref)
    net = make_ref_opc.embedded_prior()
    sampler = create_sampler("ddim", timestep_respacing=make_ref_opc.LOOP_STEPS, eta=0.0)
    assert list(reversed(sampler.timestep_map)) == list(case["timesteps"])
    solver = get_solver("OPC", cov=cov, guidance=guidance, var_table=table, cg_tol=1e-10, cg_max_iter=2000)
    gens = [torch.Generator().manual_seed(0)]
    res = sample(net, sampler, case["x_T"], ref["meas"][name]["y"], solver, phys, gens, progress=False)
    assert rel(res.x0, case["x0"]) < TOL
    # convert makes one extra network call on each step below σ = 0.2 (t < 59 of 1000: t = 0 here)
    assert res.nfe == 10 + (cov == "convert")
