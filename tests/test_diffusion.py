"""Schedules, respacing and the DDPM / DDIM loops against closed forms; 5-step end-to-end runs
of CoDPS+, CoDPS and DPS on a tiny UNet for every operator."""
import math

import numpy as np
import pytest
import torch

from guided_diffusion.gaussian_diffusion import create_sampler
from guided_diffusion.respace import get_named_beta_schedule, space_timesteps
from guided_diffusion.unet import create_model
from operators import Physics, get_noise, get_operator
from sampling import sample
from solvers import Solver, get_solver
from util.seeding import STREAM_NOISE, STREAM_OPERATOR, STREAM_SAMPLER, numpy_rngs, randn, torch_generators


def test_schedules_closed_form():
    lin = get_named_beta_schedule("linear", 1000)
    assert lin[0] == pytest.approx(1e-4) and lin[-1] == pytest.approx(0.02) and len(lin) == 1000
    assert get_named_beta_schedule("linear", 250)[0] == pytest.approx(4e-4)
    cos = get_named_beta_schedule("cosine", 1000)
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    assert np.cumprod(1 - cos)[499] == pytest.approx(f(0.5) / f(0.0), rel=1e-9)
    with pytest.raises(ValueError, match="noise_schedule"):
        get_named_beta_schedule("quadratic", 10)


def test_space_timesteps():
    assert space_timesteps(1000, "ddim100") == list(range(0, 1000, 10))
    assert space_timesteps(1000, "1000") == list(range(1000))
    assert space_timesteps(1000, "") == list(range(1000))
    steps = space_timesteps(300, "10,15,20")   # guided-diffusion's documented example
    assert len(steps) == 45
    assert sum(s < 100 for s in steps) == 10 and sum(100 <= s < 200 for s in steps) == 15
    assert steps[0] == 0 and steps[-1] == 299
    assert len(space_timesteps(1000, "250")) == 250
    with pytest.raises(ValueError, match="ddim"):
        space_timesteps(1000, "ddim7000")


def test_respaced_alpha_bar_equals_original_at_kept_steps():
    full = create_sampler(sampler="ddpm", timestep_respacing="1000", model_var_type="fixedlarge")
    sp = create_sampler(sampler="ddim", timestep_respacing="ddim50", model_var_type="fixedlarge")
    assert sp.num_timesteps == 50
    np.testing.assert_allclose(sp.alphas_cumprod, full.alphas_cumprod[sp.timestep_map], rtol=1e-12)
    assert torch.equal(sp.model_timesteps(torch.tensor([0, 49])), torch.tensor([0, 980]))


class Oracle(torch.nn.Module):
    """An ε-network that knows x_0: ε = (x_t − √ᾱ x_0) / √(1 − ᾱ) for the process ``diff``."""

    def __init__(self, diff, x0, learn_sigma=False, v=0.0):
        super().__init__()
        self.diff, self.x0, self.learn_sigma, self.v = diff, x0, learn_sigma, v
        self.calls = 0

    def forward(self, x, timesteps):
        self.calls += 1
        idx = torch.tensor([self.diff.timestep_map.index(int(s)) for s in timesteps])
        ab = torch.from_numpy(self.diff.alphas_cumprod)[idx].float().reshape(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * self.x0) / (1 - ab).sqrt()
        return torch.cat([eps, torch.full_like(eps, self.v)], 1) if self.learn_sigma else eps


class NoOp(Solver):
    def check(self, physics):
        pass

    def step(self, step, y, physics):
        return step.proposal


@pytest.mark.parametrize("sampler,resp,var", [("ddim", "ddim20", "fixedlarge"), ("ddpm", "20", "learned_range"),
                                              ("ddpm", "5,5", "fixedsmall"), ("ddim", "ddim10", "learned_range")])
def test_oracle_network_recovers_x0(sampler, resp, var):
    """With the exact ε of a point mass at x_0 every sampler ends exactly at x_0 (DDIM: x' =
    √ᾱ_prev x_0 + ... ; DDPM: the posterior mean at t = 0 is x_0) and calls the net once per step."""
    diff = create_sampler(sampler=sampler, timestep_respacing=resp, model_var_type=var, eta=1.0)
    x0 = torch.rand(2, 1, 4, 4) * 1.6 - 0.8
    net = Oracle(diff, x0, learn_sigma=var == "learned_range")
    gens = torch_generators(0, [0, 1], STREAM_SAMPLER)
    res = sample(net, diff, randn((1, 4, 4), gens), None, NoOp(), None, gens, progress=False)
    assert torch.allclose(res.x0, x0, atol=1e-4)
    assert net.calls == diff.num_timesteps == res.nfe
    assert res.diverged_at == [None, None]


def test_learned_range_variance_interpolates():
    diff = create_sampler(sampler="ddpm", timestep_respacing="100", model_var_type="learned_range")
    x0 = torch.zeros(1, 1, 2, 2)
    t = torch.tensor([50])
    for v, ref in ((1.0, diff.betas[50]), (-1.0, diff.posterior_variance[50])):
        out = diff.p_mean_variance(Oracle(diff, x0, True, v), torch.randn(1, 1, 2, 2), t)
        assert out["variance"].flatten()[0].item() == pytest.approx(ref, rel=1e-5)


def test_ddim_eta0_step_closed_form():
    diff = create_sampler(sampler="ddim", timestep_respacing="ddim10", model_var_type="fixedlarge", eta=0.0)
    x0 = torch.rand(1, 1, 2, 2)
    x = torch.randn(1, 1, 2, 2)
    t = torch.tensor([5])
    out = diff.p_mean_variance(Oracle(diff, x0), x, t)
    a, ap = diff.alphas_cumprod[5], diff.alphas_cumprod[4]
    eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
    ref = math.sqrt(ap) * x0 + math.sqrt(1 - ap) * eps
    assert torch.allclose(diff.proposal(out, x, t, torch.randn_like(x)), ref, atol=1e-5)


def test_training_loss_mse_closed_form():
    diff = create_sampler(sampler="ddpm", timestep_respacing="", model_var_type="fixedlarge")
    x0 = torch.rand(3, 1, 4, 4)
    noise = torch.randn_like(x0)
    zero = lambda x, t: torch.zeros_like(x)
    terms = diff.training_losses(zero, x0, torch.tensor([0, 10, 999]), noise)
    assert torch.allclose(terms["mse"], (noise ** 2).mean(dim=(1, 2, 3)))
    diff = create_sampler(sampler="ddpm", timestep_respacing="", model_var_type="learned_range")
    two = lambda x, t: torch.cat([torch.zeros_like(x), torch.zeros_like(x)], 1)
    terms = diff.training_losses(two, x0, torch.tensor([0, 10, 999]), noise)
    assert (terms["vb"] > 0).all() and torch.allclose(terms["loss"], terms["mse"] + terms["vb"])


TINY = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", learn_sigma=True,
            attention_resolutions="16", num_head_channels=32, use_scale_shift_norm=True, resblock_updown=True)

OPERATORS = [
    ("gaussian_blur", dict(kernel_size=9, intensity=2.0)),
    ("motion_blur", dict(kernel_size=9, intensity=0.5)),
    ("super_resolution", dict(scale_factor=4, degradation="gaussian")),
    ("super_resolution", dict(scale_factor=2, degradation="bicubic")),
    ("inpainting", dict(mask_type="random", mask_prob_range=(0.7, 0.8))),
    ("inpainting", dict(mask_type="box", mask_len_range=(8, 16))),
    ("noise", {}),
]
METHODS = [("CoDPS+", "ddim", "ddim5", dict(scale=0.05, t_div=2, div_ratio=5, inv_var=1.0)),
           ("CoDPS", "ddpm", "5", dict(scale=0.01, t_div=2, div_ratio=10, inv_var=0.1)),
           ("DPS", "ddpm", "5", dict(scale=0.3))]


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    model = create_model(**TINY)
    for p in model.parameters():  # random, non-zero output layers
        p.data.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("method,sampler,resp,params", METHODS, ids=[m[0] for m in METHODS])
@pytest.mark.parametrize("op_name,op_kw", OPERATORS, ids=[f"{o[0]}-{i}" for i, o in enumerate(OPERATORS)])
def test_five_steps_end_to_end(tiny_unet, method, sampler, resp, params, op_name, op_kw):
    op = get_operator(op_name, **op_kw)
    noiser = get_noise("gaussian", sigma=0.05)
    shape = (2, 3, 32, 32)
    op.draw(numpy_rngs(22, [0, 1], STREAM_OPERATOR), shape)
    x = torch.rand(shape) * 2 - 1
    physics = Physics(op, noiser)
    y = physics.measure(x, None, torch_generators(22, [0, 1], STREAM_NOISE))
    solver = get_solver(method, **params)
    diff = create_sampler(sampler=sampler, timestep_respacing=resp, model_var_type="learned_range")
    gens = torch_generators(22, [0, 1], STREAM_SAMPLER)
    seen = []
    res = sample(tiny_unet, diff, randn(shape[1:], gens), y, solver, physics, gens,
                 callback=lambda i, t, x0_hat, r: seen.append((i, t, tuple(r.shape))), progress=False)
    assert res.x0.shape == shape and torch.isfinite(res.x0).all()
    assert res.diverged_at == [None, None] and res.nfe == 5
    assert seen == [(i, 4 - i, (2,)) for i in range(5)]


def test_divergence_is_recorded_per_sample(tiny_unet):
    class Explode(NoOp):
        def step(self, step, y, physics):
            out = step.proposal.clone()
            if step.t == 2:
                out[1] = float("nan")
            return out

    diff = create_sampler(sampler="ddim", timestep_respacing="ddim5", model_var_type="learned_range")
    gens = torch_generators(0, [0, 1], STREAM_SAMPLER)
    res = sample(tiny_unet, diff, randn((3, 32, 32), gens), None, Explode(), None, gens, progress=False)
    assert res.diverged_at == [None, 2]
    assert torch.isfinite(res.x0[0]).all() and torch.equal(res.x0[1], torch.zeros(3, 32, 32))


def test_batch_composition_does_not_change_samples(tiny_unet):
    """Image i's result depends only on (seed, i): a batch of 2 equals two batches of 1."""
    diff = create_sampler(sampler="ddpm", timestep_respacing="4", model_var_type="learned_range")

    def run(indices):
        gens = torch_generators(7, indices, STREAM_SAMPLER)
        return sample(tiny_unet, diff, randn((3, 32, 32), gens), None, NoOp(), None, gens, progress=False).x0

    both = run([0, 1])
    assert torch.allclose(both[1:], run([1]), atol=1e-5) and torch.allclose(both[:1], run([0]), atol=1e-5)
