"""The method framework: parity of the ported methods with the pre-framework loop (a frozen
fixture), the sampling loop's contract (Step fields, NFE, extra network calls, grad mode), and a
toy method registered in this file and run end to end (a new method is one file)."""
import math

import pytest
import torch

from guided_diffusion.gaussian_diffusion import create_sampler
from operators import Physics, get_noise, get_operator
from sampling import make_step, sample
from solvers import Param, Solver, get_solver, list_solvers, register_solver
from solvers.base import _REGISTRY
from util.seeding import STREAM_NOISE, STREAM_OPERATOR, STREAM_SAMPLER, numpy_rngs, randn, torch_generators

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURE = "tests/fixtures/parity_v1.pt"
SHAPE = (2, 1, 8, 8)
# The cases of tests/fixtures/make_parity.py (which ran the old loop at commit 23ac6ca).
OPERATORS = {
    "gaussian_blur": dict(kernel_size=5, intensity=1.0),
    "motion_blur": dict(kernel_size=5, intensity=0.5),
    "super_resolution": dict(scale_factor=2, degradation="bicubic"),
    "inpainting": dict(mask_type="random", mask_prob_range=(0.5, 0.6)),
    "noise": {},
    "dense": dict(rows=20, seed=3),
}
METHODS = {
    "codps": ("CoDPS", dict(scale=0.3, t_div=2, div_ratio=3, inv_var=0.5)),
    "codps_diag": ("CoDPS", dict(scale=0.3, inv_var=0.5, use_A_AT=False)),
    "codps_auto": ("CoDPS", dict(scale="auto", inv_var=1.0)),
    "codps+": ("CoDPS+", dict(scale=0.2, t_div=2, div_ratio=4, inv_var=1.0)),
    "codps+_diag": ("CoDPS+", dict(scale=0.2, use_A_AT=False)),
    "codps+_auto": ("CoDPS+", dict(scale="auto", inv_var=0.0)),
    "dps": ("DPS", dict(scale=0.4)),
    "pigdm": ("PiGDM", dict(scale=0.7)),
    "none": ("none", {}),
}
SAMPLERS = {"ddpm": dict(sampler="ddpm", timestep_respacing="4", model_var_type="fixedlarge"),
            "ddim": dict(sampler="ddim", timestep_respacing="ddim4", model_var_type="fixedlarge", eta=0.7)}


class Net(torch.nn.Module):
    """The tiny fixed ε-network of the fixture (a non-trivial Jacobian)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(4, 1, 3, 3, generator=g) * 0.3)
        self.w2 = torch.nn.Parameter(torch.randn(1, 4, 3, 3, generator=g) * 0.3)
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        h = torch.tanh(torch.nn.functional.conv2d(x, self.w1, padding=1) + t.float().reshape(-1, 1, 1, 1) / 1000)
        return 0.5 * x + torch.nn.functional.conv2d(h, self.w2, padding=1)


def make_physics(op_name):
    phys = Physics(get_operator(op_name, **OPERATORS[op_name]), get_noise("gaussian", sigma=0.05))
    phys.draw(numpy_rngs(5, [0, 1], STREAM_OPERATOR), SHAPE)
    return phys


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("op_name", OPERATORS)
@pytest.mark.parametrize("key", METHODS)
def test_parity_with_the_old_loop(fixture, key, op_name, sampler):
    """Every shipped method, operator and sampler: the same x0 and per-step residuals (to 1e-6)
    as the old ``GaussianDiffusion.sample`` + ``solver(x_t, x_prev, x0_hat, y, t, alpha_bar)``,
    given the old measurement y."""
    ref = fixture[f"{key}|{op_name}|{sampler}"]
    name, params = METHODS[key]
    phys = make_physics(op_name)
    gens = torch_generators(9, [0, 1], STREAM_SAMPLER)
    res = []
    out = sample(Net(), create_sampler(**SAMPLERS[sampler]), randn(SHAPE[1:], gens), ref["y"],
                 get_solver(name, **params), phys, gens, progress=False,
                 callback=lambda i, t, x0, r: res.append(r.clone()))
    torch.testing.assert_close(out.x0, ref["x0"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.stack(res), ref["residual"], rtol=1e-5, atol=1e-6)
    assert out.nfe == 4 and out.diverged_at == [None, None]
