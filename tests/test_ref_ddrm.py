"""DDRM (solvers/ddrm.py) against the authors' code, bahjat-kawar/ddrm
``functions/denoising.py::efficient_generalized_steps`` @ 32b6b3c, on identical inputs
(tests/ref_parity.py; fixture by tests/fixtures/make_ref_ddrm.py): one step per operator family
at high / middle / low noise and a whole 10-step loop, on a random tiny UNet and on the embedded
MNIST prior, η = 0.85, η_b = 1, σ_n = 0.05, ``sv_zero: 0`` (our spectral view's null space is the
reference's), unclipped x0_hat (the reference does not clip). Both start from the reference's
own x_T (its y-based start), which ours does not build (ours keeps the sampler's x_T)."""
from __future__ import annotations

import pytest
import torch

import ref_parity as RP
from sampling import sample
from solvers import get_solver

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FIXTURE = torch.load(RP.FIXTURES / "ref_ddrm.pt", weights_only=True)
PARAMS = dict(eta=FIXTURE["eta"], eta_b=FIXTURE["eta_b"], sv_zero=0.0)
SIGMA = FIXTURE["sigma"]
TOL = 1e-5


nets = RP.nets


@pytest.mark.parametrize("net_name,fam,lev", RP.family_cases())
def test_one_step_matches_reference(nets, net_name, fam, lev):
    ref = FIXTURE["steps"][f"{net_name}|{fam}|{lev}"]
    shape = RP.SHAPES[net_name]
    diff = RP.diffusion(RP.STEP_GRID)
    phys = RP.physics(fam, shape, sigma=SIGMA)
    y = RP.measurement(phys, RP.ground_truth(shape), sigma_y=SIGMA)
    xn, z = RP.step_noise(shape, k=1), RP.step_noise(shape)
    assert torch.allclose(RP.checksum(y, xn, z), ref["inputs"], rtol=1e-6), "tests/ref_parity.py changed the inputs"
    step = RP.our_step(diff, nets[net_name], ref["x_t"], RP.LEVELS[lev], z, needs_grad=False)
    x_prev = get_solver("DDRM", **PARAMS).step(step, y, phys)
    assert RP.rel_err(x_prev, ref["x_prev"]) < TOL


@pytest.mark.parametrize("net_name,fam", [(n, f) for n in RP.SHAPES for f in RP.FAMILIES])
def test_loop_matches_reference(nets, net_name, fam):
    ref = FIXTURE["loops"][f"{net_name}|{fam}"]
    shape = RP.SHAPES[net_name]
    phys = RP.physics(fam, shape, sigma=SIGMA)
    y = RP.measurement(phys, RP.ground_truth(shape), sigma_y=SIGMA)
    gens = RP.generators(shape[0])
    xn = RP.randn(shape[1:], gens)
    assert torch.allclose(RP.checksum(y, xn), ref["inputs"], rtol=1e-6), "tests/ref_parity.py changed the inputs"
    res = sample(nets[net_name], RP.diffusion(RP.LOOP_GRID), ref["x_T"], y, get_solver("DDRM", **PARAMS), phys, gens,
                 progress=False)
    assert RP.rel_err(res.x0, ref["x0"]) < RP.loop_tolerance(ref["sensitivity"], TOL)
