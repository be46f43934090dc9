"""DAPS (solvers/daps.py) against the authors' code, zhangbingliang2019/DAPS @ 098df6b
(``sampler.DAPS`` with its Langevin ``MCMCSampler``), on identical inputs (tests/ref_parity.py;
fixture by tests/fixtures/make_ref_daps.py): one annealing level per operator family at high /
middle / low noise and a whole 10-level loop, on a random tiny UNet and on the embedded MNIST
prior; ``ode_steps: 1`` (the reference's PF-ODE run as one Euler step to σ = 0), K = 5 Langevin
steps, unclipped x0_hat (the reference does not clip). The reference's data term is the gradient
of ||A x − y||²/τ² (no ½), so its τ is √2 times ours: ``reference_tau: true`` reads τ so."""
from __future__ import annotations

import math

import pytest
import torch

import ref_parity as RP
from sampling import sample
from solvers import get_solver

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FIXTURE = torch.load(RP.FIXTURES / "ref_daps.pt", weights_only=True)
PARAMS = dict(ode_steps=1, langevin=True, langevin_steps=FIXTURE["K"], lr=FIXTURE["lr"], lr_min_ratio=0.01,
              tau=FIXTURE["tau_ref"], reference_tau=True)
TOL = 1e-5


nets = RP.nets


@pytest.mark.parametrize("net_name,fam,lev", RP.family_cases())
def test_one_level_matches_reference(nets, net_name, fam, lev):
    ref = FIXTURE["steps"][f"{net_name}|{fam}|{lev}"]
    c = RP.step_case(net_name, fam, lev, sigma=0.05)
    shape, diff, phys, y, t, x_t, z = c.shape, c.diff, c.phys, c.y, c.t, c.x_t, c.z
    assert torch.allclose(RP.checksum(x_t, y, z), ref["inputs"], rtol=1e-6), "tests/ref_parity.py changed the inputs"
    step = RP.our_step(diff, nets[net_name], x_t, t, z, needs_grad=False, gens=RP.generators(shape[0], seed=13))
    x_prev = get_solver("DAPS", **PARAMS).step(step, y, phys)
    xbar = x_prev / math.sqrt(float(diff.alphas_cumprod_prev[t]))
    assert RP.rel_err(xbar, ref["xbar_prev"]) < TOL


@pytest.mark.parametrize("net_name,fam", [(n, f) for n in RP.SHAPES for f in RP.FAMILIES])
def test_loop_matches_reference(nets, net_name, fam):
    ref = FIXTURE["loops"][f"{net_name}|{fam}"]
    shape = RP.SHAPES[net_name]
    phys = RP.physics(fam, shape, sigma=0.05)
    y = RP.measurement(phys, RP.ground_truth(shape))
    gens = RP.generators(shape[0])
    x_T = RP.randn(shape[1:], gens)
    assert torch.allclose(RP.checksum(x_T, y), ref["inputs"], rtol=1e-6), "tests/ref_parity.py changed the inputs"
    res = sample(nets[net_name], RP.diffusion(RP.LOOP_GRID), x_T, y, get_solver("DAPS", **PARAMS), phys, gens,
                 progress=False)
    assert RP.rel_err(res.x0, ref["x0"]) < RP.loop_tolerance(ref["sensitivity"], TOL)


def test_reference_tau_is_ours_over_sqrt2():
    """reference_tau: true with τ is ours with τ/√2 (auto, σ_n, unaffected)."""
    phys = RP.physics("blur", RP.SHAPES["tiny"], sigma=0.05)
    assert get_solver("DAPS", tau=0.05, reference_tau=True).tau_value(phys) == pytest.approx(0.05 / math.sqrt(2))
    assert get_solver("DAPS", tau=0.05).tau_value(phys) == 0.05
    assert get_solver("DAPS", reference_tau=True).tau_value(phys) == 0.05


def test_lr_decay_is_the_reference_ratio():
    """η at step i of T levels is lr (1 + i/(T+1) (r − 1)) (the reference's step / num_steps with
    num_steps = T + 1), not i/T."""
    from types import SimpleNamespace
    m = get_solver("DAPS", lr=1.0, lr_min_ratio=0.01)
    step = SimpleNamespace(i=9, diffusion=SimpleNamespace(num_timesteps=10))
    eta = m.step_size(step, torch.ones(2), 1.0, None)
    assert torch.allclose(eta, torch.full((2,), 1 + 9 / 11 * (0.01 - 1)))
