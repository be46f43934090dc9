"""DDNM+ (solvers/ddnm.py) against the authors' code, wyhuai/DDNM
``functions/svd_ddnm.py::ddnm_plus_diffusion`` with its ``Inpainting`` operator @ 00b58ea, on
identical inputs (tests/ref_parity.py; fixture by tests/fixtures/make_ref_ddnm.py): one step at
high / middle / low noise and a whole 10-step loop, random inpainting, on a random tiny UNet and
on the embedded MNIST prior, η = 0.85, σ_n = 0.05, ``sv_zero: 0``, unclipped x0_hat (the reference
does not clip). Inpainting only: see the script's docstring for why its SR and blur operators are
not comparable."""
from __future__ import annotations

import pytest
import torch

import ref_parity as RP
from sampling import sample
from solvers import get_solver

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FIXTURE = torch.load(RP.FIXTURES / "ref_ddnm.pt", weights_only=True)
PARAMS = dict(eta=FIXTURE["eta"], sv_zero=0.0)
SIGMA, FAM = FIXTURE["sigma"], FIXTURE["family"]
TOL = 1e-5


nets = RP.nets


@pytest.mark.parametrize("net_name,lev", [(n, lev) for n in RP.SHAPES for lev in RP.LEVELS])
def test_one_step_matches_reference(nets, net_name, lev):
    ref = FIXTURE["steps"][f"{net_name}|{FAM}|{lev}"]
    c = RP.step_case(net_name, FAM, lev, sigma=SIGMA, sigma_y=SIGMA)
    diff, phys, y, t, x_t, z = c.diff, c.phys, c.y, c.t, c.x_t, c.z
    assert torch.allclose(RP.checksum(x_t, y, z), ref["inputs"], rtol=1e-6), "tests/ref_parity.py changed the inputs"
    step = RP.our_step(diff, nets[net_name], x_t, t, z, needs_grad=False)
    assert RP.rel_err(get_solver("DDNM+", **PARAMS).step(step, y, phys), ref["x_prev"]) < TOL


@pytest.mark.parametrize("net_name", list(RP.SHAPES))
def test_loop_matches_reference(nets, net_name):
    ref = FIXTURE["loops"][f"{net_name}|{FAM}"]
    shape = RP.SHAPES[net_name]
    phys = RP.physics(FAM, shape, sigma=SIGMA)
    y = RP.measurement(phys, RP.ground_truth(shape), sigma_y=SIGMA)
    gens = RP.generators(shape[0])
    x_T = RP.randn(shape[1:], gens)
    assert torch.allclose(RP.checksum(x_T, y), ref["inputs"], rtol=1e-6), "tests/ref_parity.py changed the inputs"
    res = sample(nets[net_name], RP.diffusion(RP.LOOP_GRID), x_T, y, get_solver("DDNM+", **PARAMS), phys, gens,
                 progress=False)
    assert RP.rel_err(res.x0, ref["x0"]) < RP.loop_tolerance(ref["sensitivity"], TOL)
