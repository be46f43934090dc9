"""ΠGDM (solvers/pigdm.py) against the authors' code, NVlabs/RED-diff ``algos/pgdm.py`` @ 66482f2,
on identical inputs (tests/ref_parity.py; fixture written by tests/fixtures/make_ref_pigdm.py):
one step per operator family at high / middle / low noise and a whole 10-step DDIM loop, on a
random tiny UNet and on the embedded MNIST prior. Ours runs with ``reference_weight: true`` (the
reference's guidance weight), σ_n = 0 in the method (the reference uses A⁺) and unclipped x0_hat
(the reference does not clip); the default weight is checked to differ by its closed form."""
from __future__ import annotations

import pytest
import torch

import ref_parity as RP
from sampling import sample
from solvers import get_solver

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FIXTURE = torch.load(RP.FIXTURES / "ref_pigdm.pt", weights_only=True)
ZETA = FIXTURE["zeta"]
TOL = 1e-5


nets = RP.nets


def one_step(net, fam, lev, **params):
    c = RP.step_case(net[0], fam, lev, sigma=0.0, eta=FIXTURE["eta"])
    diff, phys, y, t, x_t, z = c.diff, c.phys, c.y, c.t, c.x_t, c.z
    step = RP.our_step(diff, net[1], x_t, t, z, needs_grad=True)
    method = get_solver("PiGDM", scale=ZETA, **params)
    return method.step(step, y, phys), RP.checksum(x_t, y, z), step


@pytest.mark.parametrize("net_name,fam,lev", RP.family_cases())
def test_one_step_matches_reference(nets, net_name, fam, lev):
    ref = FIXTURE["steps"][f"{net_name}|{fam}|{lev}"]
    out, inputs, _ = one_step((net_name, nets[net_name]), fam, lev, reference_weight=True)
    assert torch.allclose(inputs, ref["inputs"], rtol=1e-6), "tests/ref_parity.py no longer builds the fixture's inputs"
    assert RP.rel_err(out, ref["x_prev"]) < TOL


@pytest.mark.parametrize("net_name,fam", [(n, f) for n in RP.SHAPES for f in RP.FAMILIES])
def test_loop_matches_reference(nets, net_name, fam):
    ref = FIXTURE["loops"][f"{net_name}|{fam}"]
    shape = RP.SHAPES[net_name]
    diff = RP.diffusion(RP.LOOP_GRID, eta=FIXTURE["eta"])
    phys = RP.physics(fam, shape, sigma=0.0)
    y = RP.measurement(phys, RP.ground_truth(shape))
    gens = RP.generators(shape[0])
    x_T = RP.randn(shape[1:], gens)
    hats = []
    res = sample(nets[net_name], diff, x_T, y, get_solver("PiGDM", scale=ZETA, reference_weight=True), phys, gens,
                 callback=lambda i, t, x0_hat, r: hats.append(x0_hat), progress=False)
    tol = RP.loop_tolerance(ref["sensitivity"], TOL)
    assert RP.rel_err(res.x0, ref["x0"]) < tol
    assert RP.rel_err(hats[-1], ref["x0_hat_last"]) < 4 * tol


def test_default_weight_is_the_sampler_weight_and_differs_from_the_reference(nets):
    """Without ``reference_weight`` the same direction is taken with w_t / (√ᾱ_{t-1} √ᾱ_t r_t²)
    times the reference's weight (the guided-score form): the difference to the reference step is
    exactly that rescaling of its guidance term."""
    net = ("tiny", nets["tiny"])
    ref_out, _, step = one_step(net, "blur", "mid", reference_weight=True)
    out, _, _ = one_step(net, "blur", "mid")
    a, a_prev, w = step.alpha_bar[0], step.alpha_bar_prev[0], step.weight[0]
    ratio = w / (a_prev.sqrt() * a.sqrt() * (1 - a))
    assert abs(float(ratio) - 1) > 0.05
    assert RP.rel_err(out - step.proposal, ratio * (ref_out - step.proposal)) < 1e-5
