"""RED-diff (solvers/reddiff.py) against the authors' code, NVlabs/RED-diff ``algos/reddiff.py`` @
66482f2, on identical inputs (tests/ref_parity.py; fixture by tests/fixtures/make_ref_reddiff.py):
one Adam step per operator family at high / middle / low noise and a whole 10-step loop, on a
random tiny UNet and on the embedded MNIST prior, σ_n = 0 in the method (the reference starts
from A⁺y) and unclipped x0_hat (the reference uses the raw ε̂). The loop checks both outputs:
μ after the last Adam step (ours, default) and before it (``reference_output: true``, the output
the reference's main.py saves)."""
from __future__ import annotations

import pytest
import torch

import ref_parity as RP
from sampling import sample
from solvers import get_solver

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FIXTURE = torch.load(RP.FIXTURES / "ref_reddiff.pt", weights_only=True)
PARAMS = dict(grad_term_weight=FIXTURE["lam"], lr=FIXTURE["lr"], obs_weight=1.0, snr_power=1.0)
TOL = 1e-5


nets = RP.nets


@pytest.mark.parametrize("net_name,fam,lev", RP.family_cases())
def test_one_step_matches_reference(nets, net_name, fam, lev):
    ref = FIXTURE["steps"][f"{net_name}|{fam}|{lev}"]
    c = RP.step_case(net_name, fam, lev, sigma=0.0)
    shape, diff, phys, y, t, x_t = c.shape, c.diff, c.phys, c.y, c.t, c.x_t
    assert torch.allclose(RP.checksum(x_t, y), ref["inputs"], rtol=1e-6), "tests/ref_parity.py changed the inputs"
    gens = RP.generators(shape[0], seed=13)
    step = RP.our_step(diff, nets[net_name], x_t, t, RP.step_noise(shape), needs_grad=False, gens=gens)
    method = get_solver("RED-diff", **PARAMS)
    x_prev = method.step(step, y, phys)
    mu1 = method._state["mu"]
    tol = RP.loop_tolerance(ref["sensitivity"], TOL)     # Adam's first step: g / (|g| + 1e-8) per entry
    assert RP.rel_err(mu1, ref["mu1"]) < tol
    eps_new = RP.randn(shape[1:], RP.generators(shape[0], seed=13))
    a_prev = float(diff.alphas_cumprod_prev[t])
    assert RP.rel_err(x_prev, a_prev ** 0.5 * ref["mu1"] + (1 - a_prev) ** 0.5 * eps_new) < tol


@pytest.mark.parametrize("reference_output", [False, True])
@pytest.mark.parametrize("net_name,fam", [(n, f) for n in RP.SHAPES for f in RP.FAMILIES])
def test_loop_matches_reference(nets, net_name, fam, reference_output):
    ref = FIXTURE["loops"][f"{net_name}|{fam}"]
    shape = RP.SHAPES[net_name]
    phys = RP.physics(fam, shape, sigma=0.0)
    y = RP.measurement(phys, RP.ground_truth(shape))
    gens = RP.generators(shape[0])
    x_T = RP.randn(shape[1:], gens)
    assert torch.allclose(RP.checksum(x_T, y), ref["inputs"], rtol=1e-6), "tests/ref_parity.py changed the inputs"
    method = get_solver("RED-diff", reference_output=reference_output, **PARAMS)
    res = sample(nets[net_name], RP.diffusion(RP.LOOP_GRID), x_T, y, method, phys, gens, progress=False)
    want = ref["x0_pred"] if reference_output else ref["mu"]
    assert RP.rel_err(res.x0, want) < RP.loop_tolerance(ref["sensitivity"], TOL)


def test_outputs_differ_by_the_last_adam_step():
    """The two outputs are not the same tensor (the option is not vacuous)."""
    ref = FIXTURE["loops"]["mnist|blur"]
    assert RP.rel_err(ref["x0_pred"], ref["mu"]) > 1e-3


def test_regularised_init_is_the_reference_pseudo_inverse_at_zero_noise():
    """regularised_init: false gives A⁺y for σ_n > 0; the default Aᵀ(σ_n² I + AAᵀ)⁻¹y differs."""
    shape = RP.SHAPES["tiny"]
    phys = RP.physics("blur", shape, sigma=0.2)
    y = RP.measurement(phys, RP.ground_truth(shape))
    ref = get_solver("RED-diff", regularised_init=False).init_mu(y, phys, torch.float32)
    ours = get_solver("RED-diff").init_mu(y, phys, torch.float32)
    assert RP.rel_err(ref, phys.A_pinv(y)) < 1e-5
    assert RP.rel_err(ours, ref) > 1e-2
